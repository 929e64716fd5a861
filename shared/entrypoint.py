"""What both console scripts (``access`` and ``access-broker``) do before importing anything else."""

from __future__ import annotations

import sys

__all__ = ["skip_httpx_cli"]


def skip_httpx_cli() -> None:
    """Keep httpx from importing its own command-line tool into this process.

    httpx's package imports ``httpx._main`` whenever click and rich are installed (typer brings
    rich; the broker's uvicorn brings click): click, rich's progress bars and pygments' lexers,
    about a third of an API command's start and 0.1 s of the broker's, for a tool these
    processes never run. None in ``sys.modules`` makes that one import fail at once, and httpx
    then defines its stand-in ``httpx.main``. Only from a console script's entry point: that
    process is ours, a library importing us is not.
    """
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
