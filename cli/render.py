"""All terminal output: data to stdout (rich tables, or JSON with ``-o json``), messages to stderr.

Colour follows the terminal and ``NO_COLOR`` (https://no-color.org): set to anything
non-empty, it turns colour off. rich is imported on first use, so commands that print
nothing, and ``-o json``, never pay for it.

Nothing from the broker reaches the terminal as it came: table cells and ``pairs`` values are
identifiers unless their column (key) is named as free text, and are escaped with
:func:`access.shared.terminal.name` (printable ASCII only) or :func:`~access.shared.terminal.text`
(controls, bidi and invisible characters escaped); messages, notes, warnings and errors are
escaped as free text, so a command interpolating an identifier into one wraps it in
:func:`name`. No string is read as rich markup. JSON output is exact. docs/cli.md, "What the
terminal shows", states the rule for users.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from access.shared import terminal

if TYPE_CHECKING:
    from datetime import datetime

    from pydantic import BaseModel
    from rich.console import Console

    from access.cli.errors import CliError

__all__ = [
    "Output",
    "console",
    "error",
    "json_out",
    "message",
    "name",
    "note",
    "pairs",
    "section",
    "table",
    "text",
    "warning",
    "when",
]

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


def name(value: str) -> str:
    """An identifier (service, grant id, user, client id) for a message: printable ASCII only.

    Messages are escaped as free text, which keeps non-ASCII letters; an identifier in one goes
    through here first so that a Cyrillic er shows as ``\\u0440``.
    """
    return terminal.name(value)


def text(value: str) -> str:
    """Free text (a reason) for a line built by hand: controls, bidi and invisible characters escaped."""
    return terminal.text(value)


def _say(prefix: str, style: str, line: str) -> None:
    line = terminal.text(line)  # broker errors and interpolated values may carry client input
    # Plain writes when nothing needs styling: messages are frequent and rich costs an import.
    stream = sys.stderr
    if no_color() or not (stream.isatty() or os.environ.get("FORCE_COLOR")):
        stream.write(f"{prefix}{line}\n" if prefix else f"{line}\n")
        stream.flush()
        return
    from rich.text import Text

    # Text, not a markup string: "[bold]" or ":smile:" in a message print as they are.
    console(stderr=True).print(Text.assemble((prefix, style), line))
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


def table(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    keep_whole: Sequence[str] = (),
    free_text: Sequence[str] = (),
) -> None:
    """A table on stdout. Columns named in ``keep_whole`` (ids) are never wrapped or cut.

    Cells are identifiers, escaped to printable ASCII, except in the columns named in
    ``free_text`` (a reason), where printable letters of any script stay.
    """
    from rich import box
    from rich.table import Table
    from rich.text import Text

    grid = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for column in columns:
        whole = column in keep_whole
        grid.add_column(column, no_wrap=whole, overflow="fold", min_width=None)
    escapes = [terminal.text if column in free_text else terminal.name for column in columns]
    for row in rows:
        # Text: data is never read as markup
        grid.add_row(*(Text(escape(cell)) for escape, cell in zip(escapes, row, strict=True)))
    console().print(grid)


def pairs(items: Sequence[tuple[str, str]], *, free_text: Sequence[str] = ()) -> None:
    """``key  value`` lines on stdout, for one object (whoami, one grant).

    Values are identifiers, escaped to printable ASCII, except for the keys in ``free_text``.
    """
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in items:
        escape = terminal.text if key in free_text else terminal.name
        grid.add_row(Text(terminal.name(key)), Text(escape(value)))
    console().print(grid)


def section(title: str, items: Sequence[tuple[str, str]], *, free_text: Sequence[str] = ()) -> None:
    """A heading line (an identifier) and its ``pairs`` indented below it, then a blank line."""
    sys.stdout.write(terminal.name(title) + "\n")
    sys.stdout.flush()
    pairs([("  " + key, value) for key, value in items], free_text=["  " + key for key in free_text])
    sys.stdout.write("\n")
    sys.stdout.flush()


def when(moment: datetime) -> str:
    """A broker timestamp in the local time zone: ``2025-06-01 14:03:12 CEST``."""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
