"""``since`` for audit searches: a duration back from now or an ISO-8601 time (CLI and broker alike)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from access.shared.durations import SinceError, parse_since
from access.shared.errors import SharedError

NOW = datetime(2030, 1, 2, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("text", [None, "", "   "])
def test_nothing_is_no_bound(text: str | None) -> None:
    assert parse_since(text, NOW) is None


def test_a_duration_counts_back_from_now() -> None:
    assert parse_since("1h30m", NOW) == NOW - timedelta(hours=1, minutes=30)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2030-01-01T00:00:00Z", datetime(2030, 1, 1, tzinfo=UTC)),
        (" 2030-01-01T09:00 ", datetime(2030, 1, 1, 9, 0, tzinfo=UTC)),  # no zone: now's zone
        ("2030-01-01T09:00+02:00", datetime(2030, 1, 1, 9, 0, tzinfo=timezone(timedelta(hours=2)))),
    ],
)
def test_a_time(text: str, expected: datetime) -> None:
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "1x", "0s", "2030-13-01"])
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(SinceError) as err:
        parse_since(text, NOW)
    assert isinstance(err.value, SharedError) and isinstance(err.value, ValueError)
