"""The ceilings on what the relay buffers (``shared.mux``): per tunnel, per process, and credit
only for bytes that have left. Sans sockets: fake transports whose buffers the test drains.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import uvloop

from access.shared.mux import NO_LIMIT, WRITE_CAP, Budget, Channel, MuxSession
from access.shared.muxframe import CLOSE, DATA, WINDOW, MuxParser, header
from access.shared.wsframe import FrameParser, masked_frame
from tests.shared.test_mux import FakeTransport

MIB = 1024 * 1024
PIECE = b"x" * 65536


def _session(limit: int = NO_LIMIT, budget: Budget | None = None, channels: int = 8) -> MuxSession:
    session = MuxSession()
    session.connection_made(FakeTransport())
    session.buffer_limit = limit
    session.budget = budget
    session.start()
    for channel_id in range(1, channels + 1):
        channel = Channel(session, channel_id)
        session.adopt(channel)
        session.add_channel(channel)
        target = FakeTransport(channel)
        target.holding = True  # a target that reads nothing until the test drains it
        channel.connection_made(target)
        channel.activate()
    return session


def _send(session: MuxSession, channel_id: int, amount: int) -> None:
    """The client sends ``amount`` bytes on ``channel_id`` (within its window), one read at a time
    for as long as the session reads its WebSocket."""
    for _ in range(amount // len(PIECE)):
        if _ws(session).paused:
            return
        session.feed(masked_frame(header(DATA, channel_id, len(PIECE)) + PIECE))


def _target(session: MuxSession, channel_id: int) -> FakeTransport:
    transport = session.channels[channel_id].transport
    assert isinstance(transport, FakeTransport)
    return transport


def _ws(session: MuxSession) -> FakeTransport:
    assert isinstance(session.transport, FakeTransport)
    return session.transport


def _credit(session: MuxSession) -> dict[int, int]:
    """The WINDOW credit the session has sent, by channel."""
    session.flush()
    frames, mux = FrameParser(expect_masked=False), MuxParser()
    credit: dict[int, int] = {}
    for _opcode, payload in frames.feed(bytes(_ws(session).written)):
        for kind, channel_id, value, _ in mux.feed(payload):
            if kind == WINDOW:
                credit[channel_id] = credit.get(channel_id, 0) + value
    return credit


async def _until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + 5
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_credit_is_returned_only_for_bytes_that_have_left() -> None:
    async def main() -> tuple[dict[int, int], dict[int, int]]:
        session = _session(channels=1)
        _send(session, 1, 1 * MIB)  # the target has taken none of it
        before = _credit(session)
        _target(session, 1).drain()
        _send(session, 1, 512 * 1024)
        return before, _credit(session)

    before, after = uvloop.run(main())
    assert before == {}
    assert after == {1: 1 * MIB}  # what had left when credit was next due; the rest is still buffered


def test_a_tunnel_past_its_ceiling_stops_reading_until_its_targets_drain() -> None:
    async def main() -> None:
        session = _session(limit=4 * MIB)
        for channel_id in range(1, 9):  # 8 slow targets, 1 MiB each: twice the ceiling
            _send(session, channel_id, 1 * MIB)
        assert _ws(session).paused, "the WebSocket is still read past the ceiling"
        assert session.stalled
        assert session.buffered <= 4 * MIB + len(PIECE)
        assert session.buffered == sum(c.unacked + len(c.held) for c in session.channels.values())
        for channel_id in list(session.channels):
            _target(session, channel_id).drain()
        await _until(lambda: not _ws(session).paused, "reading to resume")
        assert session.buffered == 0 and not session.stalled

    uvloop.run(main())


def test_the_process_budget_stalls_the_tunnel_that_would_pass_it() -> None:
    async def main() -> None:
        budget = Budget(limit=4 * MIB)
        first, second = _session(budget=budget), _session(budget=budget)
        for channel_id in range(1, 4):
            _send(first, channel_id, 1 * MIB)  # 3 MiB of the 4
        assert not _ws(first).paused
        for channel_id in range(1, 9):
            _send(second, channel_id, 1 * MIB)
        assert _ws(second).paused and second.stalled
        assert budget.used <= 4 * MIB + 2 * MIB  # passed by at most a mark step per tunnel
        for session in (first, second):
            for channel_id in list(session.channels):
                _target(session, channel_id).drain()
        await _until(lambda: not _ws(second).paused, "the second tunnel to read again")
        for session in (first, second):
            channels = list(session.channels.values())
            _send(session, 1, 1 * MIB)  # something still held when the tunnel goes
            session.connection_lost(None)  # the WebSocket goes, then its channels' connections
            for channel in channels:
                channel.connection_lost(None)
        assert (budget.used, budget.sessions) == (0, set())

    uvloop.run(main())


def test_a_peer_that_stops_reading_is_closed_once_control_messages_pile_up() -> None:
    async def main() -> tuple[bool, int]:
        session = _session(channels=1)
        ws = _ws(session)
        ws.holding = True  # the client reads nothing
        session.pause_writing()  # its buffer is over the mark: the channels stop reading
        while session.open and ws.pending <= 2 * WRITE_CAP:
            session.send(CLOSE, 1, payload=b"r" * 1024)  # say, answers to OPENs it keeps sending
            session.flush()
        return session.open, ws.pending

    still_open, pending = uvloop.run(main())
    assert not still_open
    assert pending <= WRITE_CAP + 2048
