"""Half-open peers: an idle tunnel is pinged, and one that stays silent is closed (1008)."""

from __future__ import annotations

import asyncio
from typing import Any

from access.shared.relay import FramedRelay
from access.shared.wsframe import OP_CLOSE, OP_PING, OP_PONG, FrameParser, encode_frame, parse_close


class FakeTransport(asyncio.Transport):
    """Records what is written; closes when told to."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_protocol(self) -> Any:
        return None


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    return FrameParser(expect_masked=False).feed(data)


def _relay() -> tuple[FramedRelay, FakeTransport, FakeTransport]:
    relay = FramedRelay()  # the broker side: expects masked frames from the CLI
    framed, peer = FakeTransport(), FakeTransport()
    relay.connection_made(framed)
    relay.start_relay(peer)
    return relay, framed, peer


def test_silent_peer_is_pinged_then_closed() -> None:
    relay, framed, peer = _relay()
    relay.heartbeat(ticks_to_timeout=2)
    assert [op for op, _ in _frames(framed.written)] == [OP_PING]
    relay.heartbeat(ticks_to_timeout=2)
    assert not framed.closed  # one tick of grace
    relay.heartbeat(ticks_to_timeout=2)
    frames = _frames(framed.written)
    assert frames[-1][0] == OP_CLOSE
    assert parse_close(frames[-1][1])[0] == 1008
    assert framed.closed and peer.closed
    assert relay.why == "error"


def test_a_pong_keeps_the_tunnel_open() -> None:
    relay, framed, _peer = _relay()
    relay.heartbeat(ticks_to_timeout=2)  # ping
    relay.data_received(encode_frame(OP_PONG, b"", mask=True))
    for _ in range(5):
        relay.heartbeat(ticks_to_timeout=2)
        relay.data_received(encode_frame(OP_PONG, b"", mask=True))
    assert not framed.closed
    assert relay.open
