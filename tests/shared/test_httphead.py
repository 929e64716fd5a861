"""The sans-I/O HTTP head parser both tunnel ends use: split with a ceiling, then parse."""

from __future__ import annotations

import pytest

from access.shared.errors import SharedError
from access.shared.httphead import HeadError, parse_request_head, parse_response_head, split_head


def test_a_head_is_split_from_what_follows_it() -> None:
    assert split_head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nframes", 100) == (
        b"GET / HTTP/1.1\r\nHost: x",
        b"frames",
    )


@pytest.mark.parametrize("partial", [b"", b"GET / HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n\r"])
def test_an_incomplete_head_waits(partial: bytes) -> None:
    assert split_head(partial, 100) is None


def test_an_incomplete_head_over_the_ceiling_is_refused() -> None:
    assert split_head(b"x" * 100, 100) is None  # at the ceiling: still waiting
    with pytest.raises(HeadError):
        split_head(b"x" * 101, 100)


def test_a_complete_head_over_the_ceiling_is_refused_too() -> None:
    with pytest.raises(HeadError) as err:
        split_head(b"x" * 101 + b"\r\n\r\n", 100)
    assert isinstance(err.value, SharedError) and isinstance(err.value, ValueError)


def test_the_body_after_a_head_does_not_count_against_the_ceiling() -> None:
    assert split_head(b"HTTP/1.1 404 Not Found\r\n\r\n" + b"b" * 500, 100) is not None


def test_a_request_head() -> None:
    head = parse_request_head(
        b"GET /v1/tunnel?grant=g-1 HTTP/1.1\r\nHost: broker\r\nSEC-WebSocket-Key:  abc= \r\n"
        b"no colon here\r\nX-Twice: 1\r\nx-twice: 2"
    )
    assert head.method == "GET"
    assert head.target == "/v1/tunnel?grant=g-1"
    assert head.headers == {"host": "broker", "sec-websocket-key": "abc=", "x-twice": "2"}


def test_a_request_line_without_a_version_has_no_target() -> None:
    assert parse_request_head(b"GET /only").target == ""


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"HTTP/1.1 101 Switching Protocols", 101),
        (b"HTTP/1.1 404", 404),  # no reason phrase
        (b"HTTP/1.1 abc Nope", 0),
        (b"garbage", 0),
    ],
)
def test_a_response_status(line: bytes, status: int) -> None:
    assert parse_response_head(line + b"\r\nContent-Length: 7").status == status


def test_response_headers_are_lower_cased() -> None:
    head = parse_response_head(b"HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: k\r\nUpgrade: websocket")
    assert head.headers == {"sec-websocket-accept": "k", "upgrade": "websocket"}
