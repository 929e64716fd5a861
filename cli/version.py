"""What ``access --version`` prints: the installed version, and whether the tunnel is compiled.

``access --version`` is answered from here before typer is imported (``access.cli.main``), so
this module imports nothing but the standard library, and imports no part of the tunnel.
"""

from __future__ import annotations

import importlib.util
import os
import sys

__all__ = ["DISTRIBUTION", "installed_version", "tunnel_build", "version_line"]

DISTRIBUTION = "access-jit"
_FOLDER = "access_jit"  # how the metadata folder spells it (PEP 427: lower case, underscores)
_METADATA = {"dist-info": "METADATA", "egg-info": "PKG-INFO"}


def installed_version() -> str:
    """The installed distribution's version, as ``importlib.metadata.version`` reads it.

    importlib.metadata costs more to import (email, zipfile, csv) than the rest of ``access
    --version`` together, so the common case is read here: the first ``.dist-info`` or
    ``.egg-info`` folder of ours on ``sys.path`` (the same search, for one distribution), and the
    ``Version`` header of its metadata. Anything else (an import from a zip file, a metadata
    file without the header) asks importlib.metadata.
    """
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:  # a zip file, or a folder that is gone
            continue
        for name in names:
            stem, _, suffix = name.rpartition(".")
            if suffix in _METADATA and stem.split("-")[0].lower() == _FOLDER:
                found = _version_header(os.path.join(entry or ".", name, _METADATA[suffix]))
                if found is not None:
                    return found
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


def _version_header(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as metadata:
            for line in metadata:
                if line.startswith("Version:"):
                    return line.partition(":")[2].strip() or None
                if not line.strip():  # the headers end at the first empty line
                    return None
    except (OSError, UnicodeDecodeError):
        return None
    return None


def tunnel_build() -> str:
    """``compiled tunnel`` when the tunnel's hot path runs compiled, else ``pure-Python tunnel``.

    setup.py compiles it where it can. ``find_spec`` names the file an import would load (an
    extension module wins over the ``.py`` beside it) without running it: importing the tunnel
    would load asyncio and ssl, several times what the rest of ``--version`` costs.
    """
    spec = importlib.util.find_spec("access.shared.mux")
    origin = spec.origin if spec is not None else None
    return "compiled tunnel" if origin is not None and not origin.endswith(".py") else "pure-Python tunnel"


def version_line() -> str:
    """``access 0.1.0 (pure-Python tunnel)``."""
    return f"access {installed_version()} ({tunnel_build()})"
