"""Where the CLI keeps its state: ``$XDG_CONFIG_HOME/access`` (default ``~/.config/access``).

Files that live only while a command runs (the state file of a running ``access connect``, the
secret files ``access exec`` hands its program) go to :func:`runtime_dir`: ``$XDG_RUNTIME_DIR/access``
where there is one, else ``$XDG_STATE_HOME/access`` (default ``~/.local/state/access``); never the
shared temporary folder. It is mode 0700 and ours, or the CLI refuses to use it.

``config.json`` keeps one profile per broker signed in to (its URL, CA file, insecure-HTTP
choice, and who signed in), which one is current (the last ``access login``: commands without
``--broker`` use it), and whether the token-file note was shown. It holds no secrets; tokens
live in the keyring or ``tokens.json``, keyed by broker URL (see ``tokens.py``). A file written
by an older CLI (one ``broker_url``, ``ca_file``, ``insecure``) reads as that one profile,
current, and is rewritten in the new form at the next change.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from access.cli.errors import UsageError

__all__ = [
    "config_dir",
    "current_broker",
    "forget_profile_user",
    "load",
    "profiles",
    "runtime_dir",
    "save_profile",
    "update",
    "write_private",
]

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


_LEGACY = ("broker_url", "ca_file", "insecure")


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    """The single-broker form of older CLIs as one profile, current; unknown shapes dropped."""
    legacy = data.get("broker_url")
    found = data.get("profiles")
    table: dict[str, Any] = (
        {k: v for k, v in found.items() if isinstance(v, dict)} if isinstance(found, dict) else {}
    )
    if isinstance(legacy, str) and legacy:
        old = table.setdefault(legacy, {})
        if isinstance(data.get("ca_file"), str):
            old.setdefault("ca_file", data["ca_file"])
        if data.get("insecure"):
            old.setdefault("insecure", True)
        data.setdefault("current", legacy)
    for key in _LEGACY:
        data.pop(key, None)
    data["profiles"] = table
    if not isinstance(data.get("current"), str) or data["current"] not in table:
        data.pop("current", None)
    return data


def load() -> dict[str, Any]:
    """The saved settings; an unreadable or corrupt file counts as empty (it holds no secrets)."""
    path = config_dir() / CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    return _migrate(data if isinstance(data, dict) else {})


def profiles() -> dict[str, dict[str, Any]]:
    """Broker URL -> its profile (``ca_file``, ``insecure``, ``name``, ``kind``, ``client_id``)."""
    table: dict[str, dict[str, Any]] = load()["profiles"]
    return table


def current_broker() -> str | None:
    """The current profile's broker URL (the last ``access login``), or None."""
    value = load().get("current")
    return value if isinstance(value, str) else None


def save_profile(url: str, *, make_current: bool = True, **values: Any) -> None:
    """Merge ``values`` into ``url``'s profile (None removes a key); make it current."""
    data = load()
    entry = data["profiles"].setdefault(url, {})
    for key, value in values.items():
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
    if make_current:
        data["current"] = url
    _write(data)


def forget_profile_user(url: str) -> None:
    """After a logout: keep ``url``'s profile (URL and CA, for the next login), drop who it was."""
    data = load()
    entry = data["profiles"].get(url)
    if entry is None:
        return
    for key in ("name", "kind", "client_id"):
        entry.pop(key, None)
    _write(data)


def _write(data: dict[str, Any]) -> None:
    write_private(config_dir() / CONFIG_FILE, json.dumps(data, indent=2, sort_keys=True) + "\n")


def update(**values: Any) -> None:
    """Merge ``values`` into config.json (None removes a key)."""
    data = load()
    for key, value in values.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    _write(data)


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
