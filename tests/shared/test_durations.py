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
