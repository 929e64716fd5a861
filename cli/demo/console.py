"""What the demo prints, all to stderr: step titles, notes, the commands it runs and their output."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

import typer

__all__ = ["command", "note", "output", "say"]


def say(text: str) -> None:
    """A step's title, or something the demo does itself (``[demo] ...``)."""
    typer.secho(text, err=True, bold=True)


def note(text: str) -> None:
    typer.echo(f"  {text}", err=True)


def command(argv: Sequence[str], suffix: str = "") -> None:
    """``$ argv`` as a shell would read it, before the demo runs it."""
    typer.secho("$ " + shlex.join(argv) + suffix, err=True, fg=typer.colors.CYAN)


def output(*streams: str) -> None:
    """A command's output, indented under it."""
    for stream in streams:
        for line in stream.rstrip().splitlines():
            typer.echo(f"    {line}", err=True)
