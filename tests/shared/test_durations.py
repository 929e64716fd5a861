from __future__ import annotations

from datetime import timedelta

import pytest

from access.shared.durations import DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("45s", 45),
        ("30m", 1800),
        ("1h30m", 5400),
        ("2h", 7200),
        ("1d", 86400),
        ("1h0m5s", 3605),
        (" 10M ", 600),
        ("1d2h3m4s", 93784),
    ],
)
def test_parses(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text",
    ["", "0s", "0m0s", "-5m", "30", "m", "1x", "1h 30m", "30m1h", "1m1m", "1.5h", "abc", "5m!", "400d", "٣m"],
)
def test_rejects(text: str) -> None:
    with pytest.raises(DurationError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (-3, "0s"), (45, "45s"), (1800, "30m"), (5400, "1h30m"), (90061, "1d1h1m1s")],
)
def test_formats(seconds: int, text: str) -> None:
    assert format_duration(seconds) == text
    assert format_duration(timedelta(seconds=seconds)) == text


def test_round_trip() -> None:
    for seconds in (1, 59, 61, 3599, 3601, 86399, 86401):
        assert parse_duration(format_duration(seconds)).total_seconds() == seconds


def test_format_instant_is_iso_8601_in_utc_with_z() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    from access.shared.durations import format_instant

    assert format_instant(datetime(2026, 1, 31, 9, 0, tzinfo=UTC)) == "2026-01-31T09:00:00Z"
    plus_one = timezone(timedelta(hours=1))
    assert (
        format_instant(datetime(2026, 1, 31, 10, 0, 0, 5, tzinfo=plus_one)) == "2026-01-31T09:00:00.000005Z"
    )
    assert format_instant(datetime(2026, 1, 31, 9, 0)) == "2026-01-31T09:00:00Z"  # naive: taken as UTC


def test_wire_models_write_every_time_with_z_whatever_they_were_given() -> None:
    from access.shared.models import Grant

    grant = Grant.model_validate(
        {
            "id": "g-1",
            "subject": "alice",
            "service": "svc",
            "kind": "postgres",
            "scope": "read",
            "reason": "",
            "state": "active",
            "created_at": "2026-01-31T10:00:00+01:00",
            "expires_at": "2026-01-31T09:30:00",
            "seconds_left": 60,
        }
    )
    dumped = grant.model_dump(mode="json")
    assert (dumped["created_at"], dumped["expires_at"]) == ("2026-01-31T09:00:00Z", "2026-01-31T09:30:00Z")
    assert grant.expires_at.utcoffset() is not None  # aware: shown in local time correctly
