"""What the demo prints, all to stderr: step titles, notes, the commands it runs and their output."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

import typer

__all__ = ["command", "note", "output", "quote", "say"]

_DOUBLE_QUOTE_SAFE = re.compile(r'(?:[^"$`\\!]|\\[^$`"\\\n])*')


def say(text: str) -> None:
    """A step's title, or something the demo does itself (``[demo] ...``)."""
    typer.secho(text, err=True, bold=True)


def note(text: str) -> None:
    typer.echo(f"  {text}", err=True)


def quote(arg: str) -> str:
    """``arg`` as a shell reads it back: SQL with quotes in it goes in double quotes where that
    means the same, which reads better than ``shlex.quote``'s ``'"'"'``."""
    if "'" in arg and _DOUBLE_QUOTE_SAFE.fullmatch(arg):
        return f'"{arg}"'
    return shlex.quote(arg)


def command(argv: Sequence[str], suffix: str = "", *, stdin: str | None = None) -> None:
    """``$ argv`` as a shell would read it (``stdin`` as a here-string), before the demo runs it."""
    line = " ".join(quote(arg) for arg in argv)
    if stdin is not None:
        line += " <<< " + quote(stdin)
    typer.secho("$ " + line + suffix, err=True, fg=typer.colors.CYAN)


def output(*streams: str) -> None:
    """A command's output, indented under it."""
    for stream in streams:
        for line in stream.rstrip().splitlines():
            typer.echo(f"    {line}", err=True)
