"""The ``access`` console script's entry point: it answers ``access --version`` before importing typer.

Everything else goes to the typer app (``access.cli.app``), imported here only when it is
needed: ``access --version`` is what scripts and shell prompts run most often, and typer alone
costs several times what the interpreter takes to start. ``app`` is still importable from this
module, for the tests and the docs' generator.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import typer

    app: typer.Typer

__all__ = ["app", "main"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from access.cli.app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """Console-script entry point."""
    if sys.argv[1:] == ["--version"]:
        from access.cli.version import version_line

        print(version_line())
        return
    from access.shared.entrypoint import skip_httpx_cli

    skip_httpx_cli()
    from access.cli.app import app

    app(prog_name="access")
