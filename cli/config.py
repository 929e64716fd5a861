"""Where the CLI keeps its state: ``$XDG_CONFIG_HOME/access`` (default ``~/.config/access``).

``config.json`` remembers the broker (URL, CA file, insecure-HTTP choice) used at the last
login, so later commands need no ``--broker``, and whether the token-file note was shown.
It holds no secrets; tokens live in the keyring or ``tokens.json`` (see ``tokens.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["config_dir", "load", "update", "write_private"]

CONFIG_FILE = "config.json"


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/access``, or ``~/.config/access`` when it is unset or not absolute."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "access"


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
