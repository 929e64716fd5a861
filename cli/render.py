"""All terminal output: data to stdout (rich tables, or JSON with ``-o json``), messages to stderr.

Colour follows the terminal and ``NO_COLOR`` (https://no-color.org): set to anything
non-empty, it turns colour off. rich is imported on first use, so commands that print
nothing, and ``-o json``, never pay for it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datetime import datetime

    from pydantic import BaseModel
    from rich.console import Console

    from access.cli.errors import CliError

__all__ = ["Output", "console", "error", "json_out", "message", "note", "pairs", "table", "warning", "when"]

# Tables in pipes and files are not cut to 80 columns: ids must stay whole.
_PIPE_WIDTH = 200


class Output(StrEnum):
    text = "text"
    json = "json"


def no_color() -> bool:
    return bool(os.environ.get("NO_COLOR"))


def console(stderr: bool = False) -> Console:
    """A rich console on the current stdout/stderr (looked up each time: tests swap them)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else int(os.environ.get("COLUMNS", _PIPE_WIDTH))
    return Console(file=stream, no_color=no_color(), highlight=False, width=width, soft_wrap=stderr)


def _say(prefix: str, style: str, text: str) -> None:
    # Plain writes when nothing needs styling: messages are frequent and rich costs an import.
    stream = sys.stderr
    if no_color() or not (stream.isatty() or os.environ.get("FORCE_COLOR")):
        stream.write(f"{prefix}{text}\n" if prefix else f"{text}\n")
        stream.flush()
        return
    from rich.markup import escape

    label = f"[{style}]{escape(prefix)}[/]" if prefix else ""
    console(stderr=True).print(f"{label}{escape(text)}")
    stream.flush()


def message(text: str) -> None:
    """A line for the person at the terminal (stderr)."""
    _say("", "", text)


def note(text: str) -> None:
    _say("note: ", "cyan", text)


def warning(text: str) -> None:
    _say("warning: ", "yellow bold", text)


def error(exc: CliError) -> None:
    """``error: what went wrong`` and ``hint: what to do next``, on stderr."""
    _say("error: ", "red bold", exc.message)
    if exc.hint:
        _say("hint: ", "bold", exc.hint)


def _jsonable(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if hasattr(value, "model_dump"):
        model: BaseModel = value
        return model.model_dump(mode="json")
    return value


def json_out(value: Any) -> None:
    """``value`` (a wire model, a list of them, or plain data) as JSON on stdout."""
    sys.stdout.write(json.dumps(_jsonable(value), indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def table(columns: Sequence[str], rows: Sequence[Sequence[str]], *, keep_whole: Sequence[str] = ()) -> None:
    """A table on stdout. Columns named in ``keep_whole`` (ids) are never wrapped or cut."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    grid = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for name in columns:
        whole = name in keep_whole
        grid.add_column(name, no_wrap=whole, overflow="fold", min_width=None)
    for row in rows:
        grid.add_row(*(Text(cell) for cell in row))  # Text: data is never read as markup
    console().print(grid)


def pairs(items: Sequence[tuple[str, str]]) -> None:
    """``key  value`` lines on stdout, for one object (whoami, one grant)."""
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in items:
        grid.add_row(Text(key), Text(value))
    console().print(grid)


def when(moment: datetime) -> str:
    """A broker timestamp in the local time zone: ``2025-06-01 14:03:12 CEST``."""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
