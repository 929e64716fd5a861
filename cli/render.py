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
    from access.shared.models import Grant

__all__ = [
    "Output",
    "Spinner",
    "break_glass_notice",
    "break_glass_table",
    "console",
    "error",
    "expiry_warning",
    "grant_details",
    "grant_label",
    "grant_left",
    "grant_usage",
    "json_line",
    "json_out",
    "layout",
    "log_line",
    "message",
    "name",
    "note",
    "pairs",
    "section",
    "table",
    "text",
    "warning",
    "when",
    "width",
]

# Messages (rich, on stderr) in pipes and files are not cut to 80 columns: ids must stay whole.
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
    """``error: what went wrong`` and ``hint: what to do next``, on stderr; then, when the broker
    answered with it, ``request id: ID``: what its operator looks for in the broker's log."""
    _say("error: ", "red bold", exc.message)
    if exc.hint:
        _say("hint: ", "bold", exc.hint)
    if exc.request_id:
        _say("request id: ", "dim", name(exc.request_id))  # from the network: an identifier, escaped


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


def json_line(value: Any) -> None:
    """``value`` as one compact JSON line on stdout, flushed at once (a stream read line by line)."""
    sys.stdout.write(json.dumps(_jsonable(value), separators=(",", ":")) + "\n")
    sys.stdout.flush()


def log_line(cells: Sequence[str], *, free_text: Sequence[int] = ()) -> None:
    """One line of a stream shown as it comes (no table: its widths are not known ahead), its
    cells escaped: as names, or as free text for the indexes in ``free_text``; flushed at once."""
    shown = (text(cell) if i in free_text else name(cell) for i, cell in enumerate(cells))
    sys.stdout.write("  ".join(shown).rstrip() + "\n")
    sys.stdout.flush()


# A column is never squeezed below this (unless its longest word is shorter): no one-letter folds.
MIN_COLUMN = 8
# A last free-text column with less room than this goes under its row instead.
MIN_TEXT_COLUMN = 24
_GAP = "  "
_BELOW_INDENT = "    "


def width() -> int | None:
    """Columns to lay tables out in: ``COLUMNS``, else the terminal's; None (no limit) in a pipe."""
    try:
        return max(20, int(os.environ["COLUMNS"]))
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns if sys.stdout.isatty() else None
    except (OSError, ValueError):
        return None


def _cells(value: str) -> int:
    from rich.cells import cell_len

    return cell_len(value)


def _wrap(value: str, limit: int | None) -> list[str]:
    """``value`` in lines of at most ``limit`` cells: broken at spaces, words longer than that folded."""
    if limit is None or _cells(value) <= limit:
        return [value]
    from rich.cells import chop_cells

    lines: list[str] = []
    line = ""
    for word in value.split(" "):
        candidate = f"{line} {word}" if line else word
        if _cells(candidate) <= limit:
            line = candidate
            continue
        if line:
            lines.append(line)
        pieces = chop_cells(word, limit) if _cells(word) > limit else [word]
        lines.extend(pieces[:-1])
        line = pieces[-1]
    lines.append(line)
    return lines


def _fit(natural: list[int], wrappable: list[bool], total: int | None) -> list[int]:
    """Column widths within ``total`` cells: the widest wrappable column gives way first."""
    widths = list(natural)
    if total is None:
        return widths
    room = total - len(_GAP) * (len(widths) - 1)
    while sum(widths) > room:
        candidates = [i for i, w in enumerate(widths) if wrappable[i] and w > MIN_COLUMN]
        if not candidates:
            break  # too many whole columns for this width: the lines run long rather than fold ids
        widest = max(candidates, key=lambda i: widths[i])
        widths[widest] -= 1
    return widths


def layout(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    total: int | None,
    keep_whole: Sequence[str] = (),
    free_text: Sequence[str] = (),
    rule: bool = False,
) -> list[str]:
    """A table as lines of at most ``total`` cells (None: one line per row, however long).

    The last column, when it is free text (a reason, a description, details), wraps in place
    when it has room for a few words, and otherwise moves to an indented line of its own under
    each row: the other columns keep their room instead of all folding to a few letters. No
    line ends in spaces.
    """
    escapes = [terminal.text if column in free_text else terminal.name for column in columns]
    grid = [[escape(cell) for escape, cell in zip(escapes, row, strict=True)] for row in rows]
    heads = list(columns)

    def natural(index: int) -> int:
        return max(_cells(cell) for cell in [heads[index], *(row[index] for row in grid)])

    count = len(heads)
    below: list[str] | None = None
    if total is not None and count > 1 and heads[-1] in free_text:
        others = sum(natural(i) for i in range(count - 1)) + len(_GAP) * (count - 1)
        if others + natural(count - 1) > total and total - others < MIN_TEXT_COLUMN:
            below = [row[-1] for row in grid]
            heads, grid, count = heads[:-1], [row[:-1] for row in grid], count - 1
    wrappable = [head not in keep_whole for head in heads]
    widths = _fit([natural(i) for i in range(count)], wrappable, total)

    def line(cells: Sequence[str]) -> str:
        return _GAP.join(
            cell + " " * (w - _cells(cell)) for cell, w in zip(cells, widths, strict=True)
        ).rstrip()

    lines = [line(heads)]
    if rule:
        lines.append("─" * (sum(widths) + len(_GAP) * (count - 1)))
    for index, row in enumerate(grid):
        wrapped = [
            _wrap(cell, w) if wrap else [cell] for cell, w, wrap in zip(row, widths, wrappable, strict=True)
        ]
        for n in range(max(len(cell) for cell in wrapped)):
            lines.append(line([cell[n] if n < len(cell) else "" for cell in wrapped]))
        if below is not None and below[index]:
            limit = None if total is None else max(MIN_COLUMN, total - len(_BELOW_INDENT))
            lines.extend((_BELOW_INDENT + part).rstrip() for part in _wrap(below[index], limit))
    return lines


def _styled() -> bool:
    return not no_color() and (sys.stdout.isatty() or bool(os.environ.get("FORCE_COLOR")))


def _write(lines: Sequence[str], *, bold_first: int = 0) -> None:
    """``lines`` on stdout; with colour, the first ``bold_first`` cells of the first line in bold."""
    if lines and bold_first and _styled():
        head = lines[0]
        lines = [f"\x1b[1m{head[:bold_first]}\x1b[0m{head[bold_first:]}", *lines[1:]]
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    sys.stdout.flush()


def table(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    keep_whole: Sequence[str] = (),
    free_text: Sequence[str] = (),
) -> None:
    """A table on stdout, laid out by :func:`layout` for this terminal's width.

    Columns named in ``keep_whole`` (ids) are never wrapped or cut. Cells are identifiers,
    escaped to printable ASCII, except in the columns named in ``free_text`` (a reason), where
    printable letters of any script stay. A terminal gets a rule under the header; a pipe or
    a file gets none, and one line per row unless ``COLUMNS`` asks for a width.
    """
    lines = layout(
        columns, rows, total=width(), keep_whole=keep_whole, free_text=free_text, rule=sys.stdout.isatty()
    )
    _write(lines, bold_first=len(lines[0]) if lines else 0)


def pairs(items: Sequence[tuple[str, str]], *, free_text: Sequence[str] = ()) -> None:
    """``key  value`` lines on stdout, for one object (whoami, one grant).

    Values are identifiers, escaped to printable ASCII, except for the keys in ``free_text``.
    A long value wraps under itself, not under the keys.
    """
    keys = [terminal.name(key) for key, _ in items]
    pad = max((len(key) for key in keys), default=0)
    total = width()
    limit = None if total is None else max(MIN_COLUMN, total - pad - len(_GAP))
    styled = _styled()
    lines: list[str] = []
    for key, (raw, value) in zip(keys, items, strict=True):
        escape = terminal.text if raw in free_text else terminal.name
        shown = f"\x1b[1m{key}\x1b[0m" if styled else key
        for n, part in enumerate(_wrap(escape(value), limit)):
            lead = shown + " " * (pad - len(key)) if n == 0 else " " * pad
            lines.append(f"{lead}{_GAP}{part}".rstrip())
    _write(lines)


def grant_left(grant: Grant) -> str:
    """A grant's LEFT cell: time left, ``in review`` while pending, else why it ended."""
    from access.shared.durations import format_duration

    if grant.state == "active":
        return format_duration(grant.seconds_left)
    if grant.state == "pending":
        return "in review"
    return grant.ended_reason or "-"


def _review_rows(grant: Grant) -> list[tuple[str, str]]:
    """What a grant that needs approval adds: who reviews, who said what, what is still needed."""
    from access.shared.durations import format_duration

    review = grant.review
    if review is None:
        return []
    rows = []
    if grant.subject:
        rows.append(("requester", grant.subject))
    if grant.ttl_seconds:
        rows.append(("ttl", f"{format_duration(grant.ttl_seconds)} (counted from the approval)"))
    rule = " and ".join(f"{c.count} of {', '.join(c.reviewers)}" for c in review.clauses)
    rows.append(("reviewers", rule or f"none: rule {grant.rule} no longer asks for approval"))
    said = [
        f"{a.reviewer} {'approved' if a.decision == 'approve' else 'denied'}"
        + (f' ("{a.comment}")' if a.comment else "")
        for a in review.approvals
    ]
    rows.append(("reviews", "; ".join(said) or "none yet"))
    if grant.state == "pending":
        rows.append(("needs", review.missing or "-"))
        rows.append(("review by", when(review.review_expires_at)))
    if grant.approved_at is not None:
        rows.append(("approved", when(grant.approved_at)))
    return rows


def grant_details(grant: Grant, output: Output) -> None:
    """One grant: JSON, or ``key  value`` lines (with its review, if it needs approval)."""
    if output is Output.json:
        json_out(grant)
        return
    pending = grant.state == "pending"
    pairs(
        [
            ("id", grant.id),
            ("service", f"{grant.service} ({grant.kind})"),
            ("scope", grant.scope),
            ("state", str(grant.state)),
            ("time left", grant_left(grant) if grant.state == "active" else "-"),
            *([] if pending else [("expires", when(grant.expires_at))]),
            ("reason", grant.reason or "-"),
            *([("ended", f"{when(grant.ended_at)} ({grant.ended_reason})")] if grant.ended_at else []),
            *_review_rows(grant),
        ],
        free_text=[
            "expires",
            "reason",
            "ended",
            "ttl",
            "reviewers",
            "reviews",
            "needs",
            "review by",
            "approved",
        ],
    )


def break_glass_notice(grant: Grant) -> None:
    """Said loudly on stderr when a break-glass grant is issued: it is flagged for review."""
    warning(
        f"BREAK-GLASS: grant {name(grant.id)} ({name(grant.scope)} on {name(grant.service)}) was issued "
        "at once and is flagged in the audit ledger and to the webhooks for review after the fact "
        f"(reason: {text(grant.reason)})"
    )


def break_glass_table(items: list[Grant]) -> None:
    """``access grants --break-glass``: who took what through break-glass, when, why, and how it ended."""
    if not items:
        message("No break-glass grants.")
        return
    table(
        ["ID", "SUBJECT", "SERVICE", "SCOPE", "TAKEN", "STATE", "REASON"],
        [[g.id, g.subject, g.service, g.scope, when(g.created_at), str(g.state), g.reason] for g in items],
        keep_whole=["ID", "SUBJECT", "SERVICE"],
        free_text=["REASON"],
    )


def grant_usage(grant: Grant) -> None:
    """How to use an active grant: the hint names this very grant (`connect`/`exec` without
    --grant might pick another one)."""
    from access.shared.durations import format_duration

    service, grant_id = name(grant.service), name(grant.id)
    message(
        f"Granted {name(grant.scope)} on {service} for {format_duration(grant.seconds_left)}. "
        f"Use it with `access connect {service} --grant {grant_id}` "
        f"or `access exec {service} --grant {grant_id} -- CMD`."
    )


def grant_label(grant: Grant) -> str:
    """``g-… (read, 21m left, reason "INC-9")``: a grant in a message, identifiers escaped."""
    from access.shared.durations import format_duration

    reason = f'reason "{grant.reason}"' if grant.reason else "no reason"
    return f"{name(grant.id)} ({name(grant.scope)}, {format_duration(grant.seconds_left)} left, {reason})"


def expiry_warning(grant_id: str, seconds_left: float, *, checked: bool = True) -> None:
    """``warning: grant g-… ends in 1m: …; for more time: `access extend g-… --ttl TTL` …`` on stderr.

    ``checked``: the broker confirmed the expiry just now; else it could not be asked, and the
    warning says that it is the expiry last known.
    """
    from access.shared.durations import format_duration

    gid = name(grant_id)
    known = "" if checked else " (as last known: the broker did not answer)"
    warning(
        f"grant {gid} ends in {format_duration(max(1, round(seconds_left)))}{known}: connections "
        f"through it will be cut then; for more time: `access extend {gid} --ttl TTL` "
        "(TTL counted from now, within the rule's maximum)"
    )


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


class Spinner:
    """One status line on stderr while the CLI waits (for reviewers): redrawn in place with a
    turning bar on a terminal; elsewhere (a pipe, a log) a plain line each time the text changes,
    so logs get no control characters and no repeats. The text is free text, escaped."""

    FRAMES = "|/-\\"

    def __init__(self) -> None:
        self.animated = sys.stderr.isatty()
        self._text: str | None = None
        self._frame = 0
        self._drawn = False

    def show(self, line: str) -> None:
        line = terminal.text(line)
        if not self.animated:
            if line != self._text:
                _say("", "", line)
            self._text = line
            return
        self._text = line
        self._draw()

    def tick(self) -> None:
        """The next frame (terminal only)."""
        if self.animated and self._text is not None:
            self._frame += 1
            self._draw()

    def _draw(self) -> None:
        frame = self.FRAMES[self._frame % len(self.FRAMES)]
        sys.stderr.write(f"\r{frame} {self._text}\x1b[K")
        sys.stderr.flush()
        self._drawn = True

    def close(self) -> None:
        """Clear the line (terminal), so what follows starts on a clean one."""
        if self._drawn:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._drawn = False
