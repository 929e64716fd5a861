"""The tunnel's relay (access.shared.mux) with fake transports: flow control, backpressure,
channel ends, heartbeats and floods, on both the CLI's side (masks) and the broker's."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from access.shared.mux import Channel, MuxSession
from access.shared.muxframe import CLOSE, DATA, INITIAL_WINDOW, OPEN, WINDOW, WINDOW_STEP, MuxParser, header
from access.shared.wsframe import (
    CLOSE_POLICY,
    CLOSE_PROTOCOL,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    FrameParser,
    encode_frame,
    masked_frame,
    parse_close,
    unmasked_frame,
)


class FakeTransport(asyncio.Transport):
    """Records what is written and whether reading is paused; closes when told to."""

    def __init__(self, protocol: Any = None) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.paused = False
        self.protocol = protocol
        self.holding = False  # keep what is written as buffered (a peer that does not read)
        self.pending = 0

    def write(self, data: Any) -> None:
        self.written += bytes(data)
        if self.holding:
            self.pending += len(data)

    def get_write_buffer_size(self) -> int:
        return self.pending

    def drain(self) -> None:
        self.pending = 0

    def is_reading(self) -> bool:
        return not self.paused

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_protocol(self) -> Any:
        return self.protocol


class Broker(MuxSession):
    """The broker's side, as the real one minus the handshake: OPEN makes an active channel."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: dict[int, FakeTransport] = {}
        self.finished_channels: list[Channel] = []

    def on_open(self, channel_id: int) -> None:
        channel = Channel(self, channel_id)
        target = FakeTransport(channel)
        channel.connection_made(target)
        self.adopt(channel)
        self.add_channel(channel)
        self.targets[channel_id] = target
        channel.activate()

    def channel_finished(self, channel: Channel) -> None:
        self.finished_channels.append(channel)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def broker() -> tuple[Broker, FakeTransport]:
    session = Broker()
    ws = FakeTransport(session)
    session.connection_made(ws)
    session.start()
    return session, ws


def messages(ws: FakeTransport, *, masked: bool = False) -> list[tuple[int, int, int, bytes]]:
    """Every channel message the session wrote (frames parsed, DATA joined per message)."""
    out = []
    mux = MuxParser()
    for opcode, payload in FrameParser(expect_masked=masked).feed(bytes(ws.written)):
        if opcode == OP_BINARY:
            out.extend(mux.feed(payload))
    return out


def close_code(ws: FakeTransport) -> int | None:
    for opcode, payload in FrameParser(expect_masked=False).feed(bytes(ws.written)):
        if opcode == OP_CLOSE:
            return parse_close(payload)[0]
    return None


def from_cli(*parts: bytes) -> bytes:
    return masked_frame(b"".join(parts))


def test_one_frame_for_everything_sent_in_one_loop_turn() -> None:
    async def main() -> None:
        session, ws = broker()
        session.feed(from_cli(header(OPEN, 1, 0), header(OPEN, 3, 0)))
        session.channels[1].data_received(b"one")
        session.channels[3].data_received(b"three")
        assert ws.written == b""  # queued, not yet sent
        await asyncio.sleep(0)  # the flush runs at the end of this turn
        frames = FrameParser(expect_masked=False).feed(bytes(ws.written))
        assert len(frames) == 1
        assert [(k, c, p) for k, c, _v, p in messages(ws)] == [(DATA, 1, b"one"), (DATA, 3, b"three")]

    run(main)


def test_data_goes_to_its_channel_and_credit_comes_back_in_steps() -> None:
    async def main() -> None:
        session, ws = broker()
        session.feed(from_cli(header(OPEN, 1, 0), header(OPEN, 2, 0)))
        chunk = b"x" * 65536
        for _ in range(WINDOW_STEP // len(chunk) - 1):
            session.feed(from_cli(header(DATA, 1, len(chunk)), chunk))
        session.feed(from_cli(header(DATA, 2, 3), b"two"))
        await asyncio.sleep(0)
        assert len(session.targets[1].written) == WINDOW_STEP - len(chunk)
        assert session.targets[2].written == b"two"
        assert [m for m in messages(ws) if m[0] == WINDOW] == []  # not a full step yet
        session.feed(from_cli(header(DATA, 1, len(chunk)), chunk))
        await asyncio.sleep(0)
        assert [m[:3] for m in messages(ws) if m[0] == WINDOW] == [(WINDOW, 1, WINDOW_STEP)]

    run(main)


def test_a_sender_stops_at_its_window_and_resumes_on_credit() -> None:
    async def main() -> None:
        session, ws = broker()
        session.feed(from_cli(header(OPEN, 1, 0)))
        channel, target = session.channels[1], session.targets[1]
        block = b"y" * 256 * 1024
        for _ in range(INITIAL_WINDOW // len(block)):
            channel.data_received(block)
        assert not target.paused
        channel.data_received(b"z" * 1000)  # over the window: held, reading paused
        assert target.paused
        await asyncio.sleep(0)
        sent = sum(len(p) for k, _c, _v, p in messages(ws) if k == DATA)
        assert sent == INITIAL_WINDOW
        session.feed(from_cli(header(WINDOW, 1, 600)))
        assert target.paused  # 400 bytes still held
        session.feed(from_cli(header(WINDOW, 1, WINDOW_STEP)))
        assert not target.paused
        await asyncio.sleep(0)
        assert sum(len(p) for k, _c, _v, p in messages(ws) if k == DATA) == INITIAL_WINDOW + 1000

    run(main)


def test_no_credit_while_the_target_is_not_draining() -> None:
    async def main() -> None:
        session, ws = broker()
        session.feed(from_cli(header(OPEN, 1, 0)))
        channel = session.channels[1]
        channel.pause_writing()  # the target's write buffer is over its high-water mark
        chunk = b"q" * WINDOW_STEP
        session.feed(from_cli(header(DATA, 1, len(chunk)), chunk))
        await asyncio.sleep(0)
        assert [m for m in messages(ws) if m[0] == WINDOW] == []
        channel.resume_writing()
        await asyncio.sleep(0)
        assert [m[:3] for m in messages(ws) if m[0] == WINDOW] == [(WINDOW, 1, WINDOW_STEP)]

    run(main)


def test_data_beyond_the_window_is_a_protocol_error() -> None:
    async def main() -> None:
        session, ws = broker()
        session.feed(from_cli(header(OPEN, 1, 0)))
        session.channels[1].pause_writing()  # a target that stopped reading: no credit goes back
        chunk = b"w" * (512 * 1024)
        for _ in range(INITIAL_WINDOW // len(chunk)):
            session.feed(from_cli(header(DATA, 1, len(chunk)), chunk))
        assert session.open
        session.feed(from_cli(header(DATA, 1, 1), b"!"))
        assert close_code(ws) == CLOSE_PROTOCOL
        assert session.targets[1].aborted

    run(main)


def test_a_full_websocket_pauses_every_channel() -> None:
    async def main() -> None:
        session, _ws = broker()
        session.feed(from_cli(header(OPEN, 1, 0), header(OPEN, 2, 0)))
        session.pause_writing()
        assert session.targets[1].paused and session.targets[2].paused
        session.resume_writing()
        assert not session.targets[1].paused and not session.targets[2].paused

    run(main)


def test_close_from_the_cli_flushes_the_target_and_is_not_echoed() -> None:
    async def main() -> None:
        session, ws = broker()
        session.feed(from_cli(header(OPEN, 1, 0), header(DATA, 1, 4), b"last", header(CLOSE, 1, 0)))
        target = session.targets[1]
        assert target.written == b"last"
        assert target.closed and not target.aborted  # graceful: buffered bytes still go out
        assert session.channels.get(1) is None
        target.protocol.connection_lost(None)
        await asyncio.sleep(0)
        assert [m for m in messages(ws) if m[0] == CLOSE] == []
        assert [c.why for c in session.finished_channels] == ["client closed"]

    run(main)


def test_target_eof_with_held_bytes_sends_them_before_close() -> None:
    async def main() -> None:
        session, ws = broker()
        session.feed(from_cli(header(OPEN, 1, 0)))
        channel, target = session.channels[1], session.targets[1]
        channel.send_window = 10
        channel.data_received(b"0123456789abcdef")
        assert channel.eof_received() is True  # keep the transport: 6 bytes still held
        assert not target.closed
        session.feed(from_cli(header(WINDOW, 1, 100)))
        assert target.closed  # all sent: now the channel may end
        channel.connection_lost(None)
        await asyncio.sleep(0)
        sent = messages(ws)
        assert b"".join(p for k, _c, _v, p in sent if k == DATA) == b"0123456789abcdef"
        assert sent[-1][:2] == (CLOSE, 1)
        assert session.finished_channels[0].why == "target closed"

    run(main)


def test_a_cut_drops_every_channel_and_says_why() -> None:
    async def main() -> None:
        session, ws = broker()
        session.feed(from_cli(header(OPEN, 1, 0), header(OPEN, 2, 0)))
        session.close(4011, "grant g-1 was revoked", why="revoked")
        assert close_code(ws) == 4011
        assert session.targets[1].aborted and session.targets[2].aborted
        for channel_id in (1, 2):
            session.targets[channel_id].protocol.connection_lost(None)
        session.connection_lost(None)
        assert sorted(c.why or "" for c in session.finished_channels) == ["revoked", "revoked"]

    run(main)


def test_a_lost_websocket_fails_its_channels_closed() -> None:
    async def main() -> None:
        session, _ws = broker()
        session.feed(from_cli(header(OPEN, 1, 0)))
        session.connection_lost(ConnectionResetError())
        assert session.targets[1].aborted
        assert session.channels == {}

    run(main)


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (b"".join(masked_frame(b"") for _ in range(3000)), CLOSE_POLICY),
        (masked_frame(b"".join(header(WINDOW, 1, 1) for _ in range(3000))), CLOSE_POLICY),
        (masked_frame(header(DATA, 5, 1) + b"x"), CLOSE_PROTOCOL),
        (masked_frame(header(OPEN, 2, 0) + header(OPEN, 1, 0)), CLOSE_PROTOCOL),
    ],
    ids=["empty frames", "tiny messages", "data on a channel never opened", "ids going down"],
)
def test_hostile_input_closes_the_session(wire: bytes, code: int) -> None:
    async def main() -> None:
        session, ws = broker()
        session.on_open = _counting_open(session)  # type: ignore[method-assign]
        session.feed(wire)
        assert close_code(ws) == code
        assert not session.open

    run(main)


def _counting_open(session: Broker) -> Callable[[int], None]:
    last = 0
    real = Broker.on_open.__get__(session)

    def on_open(channel_id: int) -> None:
        nonlocal last
        if channel_id <= last:
            from access.shared.wsframe import ProtocolError

            raise ProtocolError(CLOSE_PROTOCOL, "ids only increase")
        last = channel_id
        real(channel_id)

    return on_open


def test_fast_path_and_parser_agree_on_mixed_reads() -> None:
    async def main() -> None:
        session, _ws = broker()
        session.feed(from_cli(header(OPEN, 1, 0), header(OPEN, 2, 0)))
        wire = b"".join(
            [header(DATA, 1, 3), b"abc", header(WINDOW, 2, 5), header(DATA, 2, 70_000), b"B" * 70_000]
        )
        wire += header(DATA, 1, 2) + b"de"
        # One frame whose messages straddle a read boundary at every position near the headers.
        frame = masked_frame(wire)
        session.feed(frame[:20])
        session.feed(frame[20:])
        assert session.targets[1].written == b"abcde"
        assert session.targets[2].written == b"B" * 70_000

    run(main)


def test_silent_peer_is_pinged_then_closed() -> None:
    async def main() -> None:
        session, ws = broker()
        session.feed(from_cli(header(OPEN, 1, 0)))
        session.heartbeat(ticks_to_timeout=2)  # it spoke since the last tick: no ping yet
        assert ws.written == b""
        session.heartbeat(ticks_to_timeout=2)
        assert [op for op, _ in FrameParser(expect_masked=False).feed(bytes(ws.written))] == [OP_PING]
        session.heartbeat(ticks_to_timeout=2)
        assert not ws.closed  # one tick of grace
        session.heartbeat(ticks_to_timeout=2)
        assert close_code(ws) == 1008
        assert ws.closed and session.targets[1].aborted
        assert session.why == "error"

    run(main)


def test_a_pong_keeps_the_tunnel_open() -> None:
    async def main() -> None:
        session, ws = broker()
        for _ in range(5):
            session.heartbeat(ticks_to_timeout=2)
            session.feed(encode_frame(OP_PONG, b"", mask=True))
        assert not ws.closed
        assert session.open

    run(main)


def test_the_cli_side_masks_and_refuses_opens() -> None:
    async def main() -> None:
        session = MuxSession(client=True)
        ws = FakeTransport(session)
        session.connection_made(ws)
        session.start()
        session.send(WINDOW, 1, 10)
        session.flush()
        assert messages(ws, masked=True) == [(WINDOW, 1, 10, b"")]
        session.feed(unmasked_frame(header(OPEN, 1, 0)))
        assert not session.open  # only the CLI opens channels: a broker that tries is closed

    run(main)
