"""Durations as people write them: ``45s``, ``30m``, ``1h30m``, ``2h``, ``1d``; and ``since`` bounds.

Parsing is strict: every part needs a unit, units go from largest to smallest
and appear once, and the result must be positive. ``format_duration`` is the
inverse, used for messages ("the maximum for read on svc-payments is 1h").
``parse_since`` reads an audit search's ``since`` (a duration back from now, or an ISO-8601
time): the CLI checks ``--since`` with it before asking, the broker applies it.
``format_instant`` writes a moment for scripts: ISO-8601 in UTC with ``Z``, in every ``-o json``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from access.shared.errors import SharedError

__all__ = [
    "DurationError",
    "SinceError",
    "format_duration",
    "format_instant",
    "parse_duration",
    "parse_since",
]

_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"([0-9]{1,9})([dhms])", re.ASCII)
# A generous ceiling keeps arithmetic on datetimes safe; policy maxima are far lower.
_MAX_SECONDS = 366 * 86400


class DurationError(SharedError, ValueError):
    """The text is not a duration such as ``30m`` or ``1h30m``."""


class SinceError(SharedError, ValueError):
    """The text is neither a duration such as ``1h`` nor an ISO-8601 time."""


def parse_duration(text: str) -> timedelta:
    """Parse ``text`` into a positive ``timedelta``.

    Raises:
        DurationError: when the text is empty, has no or an unknown unit, repeats
            or misorders units, or is zero.
    """
    raw = text.strip().lower()
    if not raw:
        raise DurationError("empty duration: write it like 45s, 30m or 1h30m")
    pos = 0
    total = 0
    last_rank = -1
    order = list(_UNITS)
    for match in _PART.finditer(raw):
        if match.start() != pos:
            break
        value, unit = int(match.group(1)), match.group(2)
        rank = order.index(unit)
        if rank <= last_rank:
            raise DurationError(f"bad duration {text!r}: units must go d, h, m, s, each at most once")
        last_rank = rank
        total += value * _UNITS[unit]
        pos = match.end()
    if pos != len(raw) or pos == 0:
        raise DurationError(f"bad duration {text!r}: write it like 45s, 30m or 1h30m")
    if total <= 0:
        raise DurationError(f"bad duration {text!r}: it must be longer than zero")
    if total > _MAX_SECONDS:
        raise DurationError(f"bad duration {text!r}: at most 366d")
    return timedelta(seconds=total)


def format_duration(value: timedelta | float) -> str:
    """Render seconds or a ``timedelta`` compactly: ``1h30m``, ``45s``, ``0s``."""
    seconds = int(value.total_seconds() if isinstance(value, timedelta) else value)
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in _UNITS.items():
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def parse_since(text: str | None, now: datetime) -> datetime | None:
    """``1h`` (that long before ``now``) or an ISO-8601 time; None for no bound (None or blank).

    A time without a zone is taken in ``now``'s zone.

    Raises:
        SinceError: neither a duration nor an ISO-8601 time.
    """
    if text is None or not text.strip():
        return None
    try:
        return now - parse_duration(text)
    except DurationError:
        pass
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise SinceError(f"{text[:40]!r} is neither a duration nor a time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=now.tzinfo)


def format_instant(moment: datetime) -> str:
    """``moment`` as ISO-8601 in UTC with ``Z``: ``2026-01-31T09:00:00Z`` (a naive one is taken as UTC)."""
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return aware.isoformat().replace("+00:00", "Z")
