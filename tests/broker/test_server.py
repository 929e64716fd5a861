"""Request heads on every path the broker listens on: a size ceiling, a read deadline (the body
has one too), and an idle keep-alive bound (``server.BrokerHttpProtocol``, uvicorn's ``timeout_keep_alive``).

A real uvicorn broker (``setup`` from the tunnel tests) with its limits lowered, reached with
raw sockets: what an attacker sends, not what a polite client does.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.broker.tunnel.test_protocol import (
    Setup,
    run,
    setup,  # noqa: F401 (the fixtures, used by name)
    wrap_app,  # noqa: F401
)

MAX_HEAD = 4096
HEAD_TIMEOUT = 0.3
PATHS = ["/healthz", "/v1/tunnel?grant=g-1"]
UPGRADE = b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"


@pytest.fixture
def broker_settings() -> dict[str, Any]:
    return {
        "http_max_head": MAX_HEAD,
        "http_head_timeout": HEAD_TIMEOUT,
        "http_body_timeout": HEAD_TIMEOUT,
        "http_keepalive_timeout": 0.3,
    }


def _port(served: Setup) -> int:
    return int(served.url.rsplit(":", 1)[1])


def _start(path: str) -> bytes:
    extra = UPGRADE if path.startswith("/v1/tunnel") else b""
    return f"GET {path} HTTP/1.1\r\nHost: broker\r\n".encode() + extra


async def _exchange(served: Setup, data: bytes, *, pace: float | None = None) -> bytes:
    """Send ``data`` (one byte every ``pace`` seconds, if given), then read until the broker closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(served))
    try:
        if pace is None:
            writer.write(data)
        else:
            for i in range(len(data)):
                if reader.at_eof() or writer.is_closing():
                    break
                writer.write(data[i : i + 1])
                try:
                    got = await asyncio.wait_for(reader.read(65536), pace)
                except TimeoutError:
                    continue
                return got + await asyncio.wait_for(reader.read(), 5)
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def test_a_head_over_the_limit_is_431_and_closed(setup: Setup) -> None:  # noqa: F811
    for path in PATHS:
        for end in (b"\r\n\r\n", b""):  # a whole head, and one that never ends
            head = _start(path) + b"X-Big: " + b"a" * (4 * MAX_HEAD) + end
            answer = run(_exchange(setup, head))
            assert answer.startswith(b"HTTP/1.1 431 "), (path, end, answer[:80])
            assert b"request head over 4096 bytes" in answer


def test_a_head_that_does_not_arrive_in_time_is_408(setup: Setup) -> None:  # noqa: F811
    for path in PATHS:
        answer = run(_exchange(setup, _start(path)))  # and then nothing
        assert answer.startswith(b"HTTP/1.1 408 "), (path, answer[:80])
    # One byte every 50 ms: each byte is news, but the deadline is per head, not per byte.
    head = _start("/healthz") + b"X-Slow: " + b"a" * 200
    answer = run(_exchange(setup, head, pace=0.05))
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]


def test_a_body_that_does_not_arrive_in_time_is_408(setup: Setup) -> None:  # noqa: F811
    # The head is whole and quick; the body promises 100 bytes, sends 10, then trickles.
    head = b"POST /oauth/token HTTP/1.1\r\nHost: broker\r\nContent-Length: 100\r\n"
    head += b"Content-Type: application/x-www-form-urlencoded\r\n\r\n"
    answer = run(_exchange(setup, head + b"grant_type"))
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
    assert b"request body not received within 0.3 s" in answer

    async def trickle() -> bytes:  # the head at once, then a body byte every 50 ms: news, too slowly
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(setup))
        try:
            writer.write(head)
            for _ in range(60):
                writer.write(b"g")
                try:
                    got = await asyncio.wait_for(reader.read(65536), 0.05)
                except TimeoutError:
                    continue
                return got
            return b""
        finally:
            writer.close()

    answer = run(trickle())
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
    assert b"request body not received" in answer


def test_a_head_under_the_limit_is_served_and_an_idle_connection_closed(setup: Setup) -> None:  # noqa: F811
    async def main() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(setup))
        writer.write(_start("/healthz") + b"X-Fine: " + b"a" * (MAX_HEAD // 2) + b"\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:"))[15:])
        await reader.readexactly(length)
        # Then idle: closed after http_keepalive_timeout (0.3 s), well before uvicorn's default 5 s.
        rest = await asyncio.wait_for(reader.read(), 3)
        writer.close()
        return rest

    assert run(main()) == b""
