"""Where the CLI keeps its state: ``$XDG_CONFIG_HOME/access`` (default ``~/.config/access``).

Files that live only while a command runs (the state file of a running ``access connect``, the
secret files ``access exec`` hands its program) go to :func:`runtime_dir`: ``$XDG_RUNTIME_DIR/access``
where there is one, else ``$XDG_STATE_HOME/access`` (default ``~/.local/state/access``); never the
shared temporary folder. It is mode 0700 and ours, or the CLI refuses to use it.

``config.json`` remembers the broker (URL, CA file, insecure-HTTP choice) used at the last
login, so later commands need no ``--broker``, and whether the token-file note was shown.
It holds no secrets; tokens live in the keyring or ``tokens.json`` (see ``tokens.py``).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from access.cli.errors import UsageError

__all__ = ["config_dir", "load", "runtime_dir", "update", "write_private"]

CONFIG_FILE = "config.json"


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/access``, or ``~/.config/access`` when it is unset or not absolute."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "access"


def _ours(path: str) -> bool:
    try:
        info = os.stat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and (not hasattr(os, "getuid") or info.st_uid == os.getuid())


def runtime_dir() -> Path:
    """The CLI's private folder for files that live while a command runs, created 0700.

    ``$XDG_RUNTIME_DIR/access`` when ``XDG_RUNTIME_DIR`` is an absolute folder of ours (systemd's
    per-user tmpfs, emptied at logout), else ``$XDG_STATE_HOME/access`` (default
    ``~/.local/state/access``).

    Raises:
        UsageError: the folder is not ours, is not a folder, or others can enter it.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and os.path.isabs(runtime) and _ours(runtime):
        path = Path(runtime) / "access"
    else:
        state = os.environ.get("XDG_STATE_HOME", "")
        root = Path(state) if state and os.path.isabs(state) else Path.home() / ".local/state"
        path = root / "access"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
        raise UsageError(f"refusing to use {path}: it is not a folder of yours", f"remove {path}")
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(
            f"refusing to use {path}: other users can enter it (mode {stat.filemode(info.st_mode)})",
            f"run `chmod 700 {path}`",
        )
    return path


def load() -> dict[str, Any]:
    """The saved settings; an unreadable or corrupt file counts as empty (it holds no secrets)."""
    path = config_dir() / CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update(**values: Any) -> None:
    """Merge ``values`` into config.json (None removes a key)."""
    data = load()
    for key, value in values.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    write_private(config_dir() / CONFIG_FILE, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by the owner only (mode 0600).

    The temporary file is created with 0600 from the start (``os.open``), so the content is
    never readable by others, not even for a moment; ``os.replace`` makes the swap atomic.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)  # in case a umask or an old file left other bits
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
