"""``access completion bash|zsh|fish``: the shell completion script (typer's, over click's machinery)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from access.shared.clihelp import Shell, completion_script

__all__ = ["completion"]


def completion(
    ctx: typer.Context,
    shell: Annotated[Shell, typer.Argument(help="bash, zsh or fish", case_sensitive=False)],
) -> None:
    """Print the script that makes SHELL complete access's commands and options."""
    sys.stdout.write(completion_script(ctx.find_root().info_name or "access", shell).rstrip("\n") + "\n")
