"""The tunnel's relay: channels multiplexed over one WebSocket (``shared.muxframe``), as asyncio protocols.

``MuxSession`` is the WebSocket end — the CLI's connection to the broker, or the broker's
connection from the CLI — and each ``Channel`` one plain TCP connection: a local client's (psql)
on the CLI, the target's on the broker. The broker and the CLI subclass the session for their
handshakes and for what opens channels.

Why one WebSocket for many connections: on a two-hop tunnel the per-message work (a system call
per read and write, a TLS record, Python callbacks) limits throughput. With every channel on one
connection, what several clients send in one event-loop turn leaves as one WebSocket frame: one
TLS record and one ``send`` instead of one per client — what ``ssh -L`` does with its channels.
Nothing on the hot path allocates a task, a future or a queue.

Backpressure: a channel's TCP connection is paused when its send window is spent (the other side
has not drained it) or the WebSocket's write buffer is over its high-water mark; credit is only
returned for bytes that have left for the channel's TCP peer (its transport's buffer is checked
when credit is due, once per ``WINDOW_STEP``).

Ceilings: ``buffered`` counts what a session holds for its channels' TCP peers and has not yet
seen leave (DATA written but not credited back, bytes read but held); past ``buffer_limit``, or
while the ``Budget`` shared by every session of a process is past its own limit, the session
stops reading its WebSocket (the other side's sends stall: TCP backpressure) until it is back
under three quarters of both. The hot path only adds and compares; the rest happens at marks
every ``MARK_STEP`` bytes. A WebSocket whose peer stops reading while we still have control
messages to send is closed once its write buffer passes ``WRITE_CAP``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, cast

from mypy_extensions import mypyc_attr

from access.shared.muxframe import (
    CLOSE,
    DATA,
    DRAIN,
    HEADER_SIZE,
    INITIAL_WINDOW,
    MAX_CONTROL,
    OPEN,
    OPEN_OK,
    WINDOW,
    WINDOW_STEP,
    Message,
    MuxParser,
    header,
    unpack_header,
)
from access.shared.wsframe import (
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_PROTOCOL,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    FrameParser,
    ProtocolError,
    close_payload,
    encode_frame,
    frame_header,
    masked_frame,
    parse_close,
)

__all__ = [
    "FLUSH_AT",
    "HIGH_WATER",
    "LOW_WATER",
    "MARK_STEP",
    "NO_LIMIT",
    "WRITE_CAP",
    "Budget",
    "Channel",
    "MuxSession",
    "error_payload",
]

log = logging.getLogger(__name__)

# Write-buffer marks per transport: large enough that a full 256 KiB read does not flip
# pause/resume on every chunk, small enough that 1,000 busy channels stay within memory.
HIGH_WATER = 512 * 1024
LOW_WATER = 128 * 1024
READ_BUFFER = 256 * 1024  # what one read of the WebSocket's connection may return
# Pending messages are sent at the end of the event-loop turn, or at once past this size.
FLUSH_AT = 256 * 1024
# A single read holding more frames or messages than this, averaging under 16 bytes each, is a
# flood: no client of ours sends that, and each costs Python work.
FLOOD_COUNT = 1024
FLOOD_MIN_AVERAGE = 16
# Buffered bytes are reported to the budget and checked against the ceilings every MARK_STEP.
MARK_STEP = 1024 * 1024
NO_LIMIT = 1 << 62
# A stalled session looks again this often (seconds): bytes leave buffers without telling us.
STALL_RECHECK = 0.05
# A WebSocket write buffer this large, with writing paused, means the peer stopped reading.
WRITE_CAP = 8 * HIGH_WATER


@mypyc_attr(allow_interpreted_subclasses=True)
class Budget:
    """The buffered bytes of every session that shares it (one broker process), and their ceiling."""

    def __init__(self, limit: int = NO_LIMIT) -> None:
        self.limit = limit
        self.used = 0  # the sum of the sessions' reported ``buffered``
        self.sessions: set[MuxSession] = set()

    def over(self) -> bool:
        return self.used > self.limit * 3 // 4


# Compiled with mypyc where possible (setup.py); the CLI and the broker subclass these classes.
@mypyc_attr(allow_interpreted_subclasses=True)
class Channel(asyncio.Protocol):
    """One TCP connection carried as a channel of a ``MuxSession``.

    Reading stays paused until ``activate`` (the other side has agreed to the channel). ``why``
    says how it ended, in the audit's vocabulary.
    """

    __slots__ = (
        "ack_mark",
        "active",
        "bytes_in",
        "bytes_out",
        "eof_pending",
        "held",
        "id",
        "recv_allowed",
        "send_window",
        "session",
        "started",
        "transport",
        "unacked",
        "why",
        "write_paused",
    )

    def __init__(self, session: MuxSession, channel_id: int = 0) -> None:
        self.session = session
        self.id = channel_id
        self.transport: asyncio.Transport | None = None
        self.active = False  # relaying; False while opening and once ended
        self.send_window = INITIAL_WINDOW  # bytes we may still send before the peer returns credit
        self.recv_allowed = INITIAL_WINDOW  # bytes the peer may still send us
        self.unacked = 0  # bytes delivered to our TCP peer whose credit is not yet returned
        self.ack_mark = WINDOW_STEP  # try to return credit once ``unacked`` reaches this
        self.held = b""  # read but not yet sent: beyond the window, or before activation
        self.eof_pending = False  # our TCP peer sent EOF while ``held`` still waited for credit
        self.write_paused = False
        self.bytes_in = 0  # from the session to our TCP peer
        self.bytes_out = 0  # from our TCP peer into the session
        self.why: str | None = None
        self.started = time.monotonic()

    # -- asyncio callbacks of the TCP connection -------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        # uvloop starts reading after connection_made whatever it was told, hence ``held``.
        self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if self.active and not self.held:
            n = len(data)
            if n <= self.send_window:  # the hot path
                self.send_window -= n
                self.bytes_out += n
                self.session.send_data(self.id, data)
                return
            self._push(data)
            return
        self.held += data
        self.session.hold_changed(len(data))
        assert self.transport is not None
        self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        if self.held and self.active:
            self.eof_pending = True  # send what is held first, then end the channel
            return True
        return None  # asyncio closes the transport: connection_lost ends the channel

    def connection_lost(self, exc: Exception | None) -> None:
        self.active = False
        self.session.channel_lost(self, exc)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.unacked and self.active:
            self._ack()

    # -- the session's side ----------------------------------------------------------------

    def activate(self) -> None:
        """Start relaying: send what was read early, then read (unless the WebSocket is full)."""
        self.active = True
        if self.held:
            held, self.held = self.held, b""
            self.session.hold_changed(-len(held))
            if not self._push(held):
                return
        if self.transport is not None:
            # uvloop reads a new connection from connection_made on, whatever it was told then:
            # pause it explicitly if the WebSocket's write buffer is over its mark.
            if self.session.writing_paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def _push(self, data: bytes) -> bool:
        """Send as much of ``data`` as the window allows; hold the rest (reading paused)."""
        window = self.send_window
        n = len(data)
        if n <= window:
            self.send_window = window - n
            self.bytes_out += n
            self.session.send_data(self.id, data)
            return True
        if window:
            self.send_window = 0
            self.bytes_out += window
            self.session.send_data(self.id, data[:window])
        self.held = data[window:]
        self.session.hold_changed(n - window)
        assert self.transport is not None
        self.transport.pause_reading()
        return False

    def credit(self, amount: int) -> None:
        """The peer returned ``amount`` bytes of window."""
        self.send_window += amount
        if self.held and self.active:
            held, self.held = self.held, b""
            self.session.hold_changed(-len(held))
            if self._push(held):
                if self.eof_pending:
                    assert self.transport is not None
                    self.transport.close()  # connection_lost sends CLOSE, after the data
                elif not self.session.writing_paused:
                    assert self.transport is not None
                    self.transport.resume_reading()

    def deliver(self, data: bytes) -> None:
        """DATA from the peer: write it to our TCP peer; return credit when it has left."""
        n = len(data)
        allowed = self.recv_allowed - n
        if allowed < 0:
            raise ProtocolError(CLOSE_PROTOCOL, f"channel {self.id}: DATA beyond the window")
        self.recv_allowed = allowed
        self.bytes_in += n
        assert self.transport is not None
        self.transport.write(data)
        self.unacked += n
        session = self.session
        buffered = session.buffered + n
        session.buffered = buffered
        if buffered > session.mark:
            session.over_mark()
        if self.unacked >= self.ack_mark and not self.write_paused:
            self._ack()

    def consume(self, data: bytes) -> None:
        """DATA the channel's owner takes in itself (a login machine, a proxy) instead of writing
        it on: within the window, counted, and its credit due as for bytes that left."""
        n = len(data)
        allowed = self.recv_allowed - n
        if allowed < 0:
            raise ProtocolError(CLOSE_PROTOCOL, f"channel {self.id}: DATA beyond the window")
        self.recv_allowed = allowed
        self.bytes_in += n
        self.unacked += n

    def _ack(self) -> None:
        """Return credit for the bytes that have left for our TCP peer (none still buffered)."""
        assert self.transport is not None
        amount = self.unacked - self.transport.get_write_buffer_size()
        if amount > 0:
            self.unacked -= amount
            self.recv_allowed += amount
            self.session.send(WINDOW, self.id, amount)
            self.session.released(amount)
        self.ack_mark = self.unacked + WINDOW_STEP

    def end(self, why: str, *, flush: bool) -> None:
        """Close the TCP connection: gracefully (``flush``: what is buffered is sent first) or not."""
        if self.why is None:
            self.why = why
        self.active = False
        if self.transport is not None and not self.transport.is_closing():
            if flush:
                self.transport.close()
            else:
                self.transport.abort()


@mypyc_attr(allow_interpreted_subclasses=True)
class MuxSession(asyncio.BufferedProtocol):
    """The WebSocket end of the tunnel: frames <-> channel messages <-> ``Channel`` objects.

    ``client`` is True on the CLI side (its frames are masked, it expects unmasked ones).
    Subclasses do the HTTP handshake (``handshake_received``, until ``start``) and override
    ``on_open``, ``on_open_ok``, ``on_open_fail``, ``channel_finished`` and ``finished``.
    """

    def __init__(self, *, client: bool = False) -> None:
        self.client = client
        # What a channel's ``why`` says when the other side of the tunnel closed it, and when
        # the channel's own TCP peer did.
        self.remote_closed = "broker closed" if client else "client closed"
        self.local_closed = "client closed" if client else "target closed"
        self.transport: asyncio.Transport | None = None
        self.open = False  # relaying frames <-> channels
        self.channels: dict[int, Channel] = {}
        self.frames = FrameParser(expect_masked=not self.client)
        self.mux = MuxParser()
        self.writing_paused = False
        self.why: str | None = None  # how the session ended, once it has
        self.remote_close: tuple[int, str] | None = None  # the close frame the other side sent
        self._out: list[bytes] = [b""]  # [frame header placeholder, message, message, ...]
        self._out_size = 0
        self._flush_handle: asyncio.Handle | None = None
        self._read_view = memoryview(bytearray(READ_BUFFER))
        # Kept: asyncio.get_running_loop() costs a getpid() system call on every call.
        self._loop = asyncio.get_running_loop()
        self._close_sent = False
        self._lost = False
        self._finished = False
        self._max_id = 0  # the highest channel id opened so far
        self._live = 0  # channels whose TCP connection is not yet lost
        self._heard = 0
        self._idle_ticks = 0
        self._ping_outstanding = False
        # What the channels hold (see the module's docstring), and its ceilings.
        self.buffered = 0
        self.buffer_limit = NO_LIMIT
        self.budget: Budget | None = None
        self.mark = MARK_STEP  # ``over_mark`` runs when ``buffered`` passes this
        self.stalled = False  # not reading the WebSocket: over a ceiling
        self._reported = 0  # the part of ``buffered`` the budget has
        self._recheck: asyncio.TimerHandle | None = None

    # -- asyncio callbacks of the WebSocket connection -------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_view

    def buffer_updated(self, nbytes: int) -> None:
        # A buffered protocol so that uvloop's TLS layer decrypts into this buffer: as a plain
        # protocol, every TLS read allocated (and mostly freed) a 256 KiB bytes object.
        if self.open:
            self.feed(bytes(self._read_view[:nbytes]))
        else:
            self.handshake_received(bytes(self._read_view[:nbytes]))

    def data_received(self, data: bytes) -> None:
        if self.open:
            self.feed(data)
        else:
            self.handshake_received(data)

    def eof_received(self) -> bool | None:
        return None  # close our end too: there is no half-close in WebSocket

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.open = False
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        if self.why is None:
            self.why = "closed" if self.remote_close is not None or exc is None else "error"
        # The WebSocket is gone: every channel still on it fails closed.
        why = self.remote_closed if self.why == "closed" else self.why
        for channel in list(self.channels.values()):
            channel.end(why, flush=False)
        self.channels.clear()
        self._maybe_finish()

    def pause_writing(self) -> None:
        self.writing_paused = True
        for channel in self.channels.values():
            if channel.active and channel.transport is not None:
                channel.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if not self.open:
            return
        for channel in self.channels.values():
            if channel.active and not channel.held and channel.transport is not None:
                channel.transport.resume_reading()

    # -- incoming --------------------------------------------------------------------------

    def start(self, early: bytes = b"") -> None:
        """The handshake is done: relay from now on (``early``: bytes read after the handshake)."""
        self.open = True
        self.mark = min(MARK_STEP, self.buffer_limit)
        if self.budget is not None:
            self.budget.sessions.add(self)
        if early:
            self.feed(early)

    def feed(self, data: bytes) -> None:
        try:
            parser = self.frames
            before = parser.frames
            frames = parser.feed(data)
            count = parser.frames - before  # empty data frames are parsed but not returned
            if count > FLOOD_COUNT and len(data) < count * FLOOD_MIN_AVERAGE:
                raise ProtocolError(CLOSE_POLICY, "flood of tiny frames")
            for opcode, payload in frames:
                if opcode == OP_BINARY:
                    self._messages(payload)
                else:
                    self._control(opcode, payload)
                if not self.open:
                    return
        except ProtocolError as exc:
            self.close(exc.code, exc.reason, why="error")

    def _messages(self, data: bytes) -> None:
        mux = self.mux
        if mux.between_messages():
            # The hot path: whole DATA messages to open channels, parsed and delivered in one
            # loop with no intermediate list or tuples. Anything else goes to the parser.
            channels = self.channels
            pos = 0
            count = 0
            end = len(data)
            while end - pos >= HEADER_SIZE:
                kind, channel_id, value = unpack_header(data, pos)
                start = pos + HEADER_SIZE
                if kind != DATA or end - start < value:
                    break
                channel = channels.get(channel_id)
                if channel is None or not channel.active:
                    break
                pos = start + value
                count += 1
                channel.deliver(data[start:pos])
            mux.messages += count
            if count > FLOOD_COUNT and pos < count * FLOOD_MIN_AVERAGE:
                raise ProtocolError(CLOSE_POLICY, "flood of tiny messages")
            if pos == end:
                return
            if pos:
                data = data[pos:]
        messages = mux.feed(data)
        if len(messages) > FLOOD_COUNT and len(data) < len(messages) * FLOOD_MIN_AVERAGE:
            raise ProtocolError(CLOSE_POLICY, "flood of tiny messages")
        self._dispatch(messages)

    def _dispatch(self, messages: list[Message]) -> None:
        channels = self.channels
        for kind, channel_id, value, payload in messages:
            if kind == DATA:
                channel = channels.get(channel_id)
                if channel is None:
                    if channel_id > self._max_id:
                        raise ProtocolError(CLOSE_PROTOCOL, f"DATA on channel {channel_id}, never opened")
                    # else: closed on our side, the bytes were in flight
                else:
                    if not channel.active:
                        if channel.why is not None:
                            continue  # ending
                        raise ProtocolError(CLOSE_PROTOCOL, f"DATA on channel {channel_id} before OPEN_OK")
                    channel.deliver(payload)
            elif kind == WINDOW:
                channel = channels.get(channel_id)
                if channel is not None:
                    channel.credit(value)
            elif kind == CLOSE:
                channel = channels.pop(channel_id, None)
                if channel is not None:
                    channel.end(self.remote_closed, flush=True)
            elif kind == OPEN:
                if self.client:
                    raise ProtocolError(CLOSE_PROTOCOL, "only the CLI opens channels")
                self.on_open(channel_id)
            elif not self.client:
                raise ProtocolError(CLOSE_PROTOCOL, "only the broker accepts or refuses channels")
            elif kind == DRAIN:
                self.on_drain(value)
            elif kind == OPEN_OK:
                channel = channels.get(channel_id)
                if channel is not None:
                    self.on_open_ok(channel)
            else:  # OPEN_FAIL
                channel = channels.pop(channel_id, None)
                if channel is not None:
                    self.on_open_fail(channel, _error_body(payload))

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            # A peer that floods pings without reading our answers gets no more answers: the
            # pongs would otherwise pile up in our write buffer.
            if not self.writing_paused and not self._close_sent:
                self._send_frame(OP_PONG, payload)
        elif opcode == OP_PONG:
            self._ping_outstanding = False
        elif opcode == OP_CLOSE:
            self.remote_close = parse_close(payload)
            code = self.remote_close[0]
            self.close(code if code != 1005 else CLOSE_NORMAL, "", why="closed")

    # -- outgoing --------------------------------------------------------------------------

    def send_data(self, channel_id: int, data: bytes) -> None:
        """Queue DATA for the end of this event-loop turn (the hot path)."""
        out = self._out
        out.append(header(DATA, channel_id, len(data)))
        out.append(data)
        size = self._out_size + HEADER_SIZE + len(data)
        self._out_size = size
        if size >= FLUSH_AT:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self.flush)

    def send(self, kind: int, channel_id: int, value: int = 0, payload: bytes = b"") -> None:
        """Queue a message other than DATA (``value``: WINDOW's credit; else the payload length)."""
        out = self._out
        out.append(header(kind, channel_id, len(payload) if payload else value))
        size = self._out_size + HEADER_SIZE
        if payload:
            out.append(payload)
            size += len(payload)
        self._out_size = size
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send the queued messages as one WebSocket frame."""
        self._flush_handle = None
        size = self._out_size
        if not size or self._lost or self._close_sent:
            return
        out = self._out
        self._out = [b""]
        self._out_size = 0
        transport = self.transport
        assert transport is not None
        if self.client:
            transport.write(masked_frame(b"".join(out)))
        else:
            out[0] = frame_header(OP_BINARY, size)
            transport.write(b"".join(out))
        if self.writing_paused and transport.get_write_buffer_size() > WRITE_CAP:
            # Channels stopped reading at HIGH_WATER: what still piles up is control messages
            # (OPEN_FAIL, CLOSE, WINDOW) to a peer that does not read. Drop it, not buffer it.
            self.close(CLOSE_POLICY, "the other side stopped reading", why="error")
            transport.abort()

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        self.flush()  # keep the order: queued messages first
        assert self.transport is not None
        self.transport.write(encode_frame(opcode, payload, mask=self.client))

    # -- channels --------------------------------------------------------------------------

    def adopt(self, channel: Channel) -> None:
        """``channel`` belongs to this session until ``channel_lost`` or ``channel_failed``."""
        self._live += 1

    def release(self, channel: Channel) -> None:
        """``channel`` (adopted, never added) now belongs to another session."""
        self._live -= 1

    @property
    def live_channels(self) -> int:
        """Channels adopted whose TCP connection is not yet lost."""
        return self._live

    def add_channel(self, channel: Channel) -> None:
        """Route messages for ``channel.id`` to ``channel``."""
        self.channels[channel.id] = channel
        self._max_id = max(self._max_id, channel.id)

    def close_channel(self, channel: Channel, reason: str = "") -> None:
        """Tell the other side we are done with ``channel`` (if it is still open there)."""
        if self.channels.pop(channel.id, None) is not None and self.open:
            self.send(CLOSE, channel.id, payload=reason.encode("utf-8")[:1024])

    def channel_lost(self, channel: Channel, exc: Exception | None) -> None:
        """A channel's TCP connection is gone (called by ``Channel.connection_lost``)."""
        if channel.id in self.channels:  # it ended on our side: tell the other
            if channel.why is None:
                channel.why = self.local_closed if exc is None else "error"
            self.close_channel(channel)
        self.channel_failed(channel)

    def channel_failed(self, channel: Channel) -> None:
        """``channel`` is over (its TCP connection lost, or it never had one)."""
        self.channels.pop(channel.id, None)
        self._live -= 1
        gone = channel.unacked + len(channel.held)
        channel.unacked = 0
        channel.held = b""
        if gone:
            self.released(gone)
        self.channel_finished(channel)
        self._maybe_finish()

    # -- the end ---------------------------------------------------------------------------

    def close(self, code: int, reason: str, *, why: str) -> None:
        """End the session: a close frame with ``code``/``reason``, then the connection.

        ``why`` is the session's and its channels' end in the audit's vocabulary; ``closed``
        means the other side closed the WebSocket cleanly: channels then flush what they hold.
        """
        if self.why is None:
            self.why = why
        self.open = False
        clean = why == "closed"
        for channel in list(self.channels.values()):
            channel.end(self.remote_closed if clean else why, flush=clean)
        self.channels.clear()
        if not self._close_sent and not self._lost and self.transport is not None:
            self._send_frame(OP_CLOSE, close_payload(code, reason))
            self._close_sent = True
            self.transport.close()
        self._maybe_finish()

    def heartbeat(self, ticks_to_timeout: int) -> None:
        """Called periodically: ping a peer that sent nothing since the last tick; close one
        that stays silent for ``ticks_to_timeout`` more ticks (a half-open connection)."""
        if not self.open:
            return
        frames = self.frames.frames
        if frames != self._heard or self.stalled:  # stalled: we stopped reading, not the peer
            self._heard = frames
            self._idle_ticks = 0
            self._ping_outstanding = False
            return
        self._idle_ticks += 1
        if not self._ping_outstanding:
            self._ping_outstanding = True
            self._idle_ticks = 0
            self._send_frame(OP_PING, b"")
        elif self._idle_ticks >= ticks_to_timeout:
            self.close(CLOSE_POLICY, "no answer to ping: closing a half-open connection", why="error")

    def _maybe_finish(self) -> None:
        if self._finished or not self._lost or self._live > 0:
            return
        self._finished = True
        self.buffered = 0
        self.sync()
        if self.budget is not None:
            self.budget.sessions.discard(self)
        self.finished()

    # -- ceilings (cold: at marks, credit and holds, not per message) -----------------------

    def sync(self) -> None:
        """Bring the budget up to date with ``buffered``."""
        budget = self.budget
        if budget is not None:
            budget.used += self.buffered - self._reported
        self._reported = self.buffered

    def released(self, amount: int) -> None:
        """``amount`` buffered bytes have left (credited back, or their channel is gone)."""
        self.buffered -= amount
        self.sync()

    def hold_changed(self, delta: int) -> None:
        """A channel holds ``delta`` more (or fewer) bytes read from its TCP peer."""
        self.buffered += delta
        if delta > 0 and self.buffered > self.mark:
            self.over_mark()
        else:
            self.sync()

    def over(self) -> bool:
        """Over three quarters of this session's ceiling, or of the shared budget's."""
        budget = self.budget
        return self.buffered > self.buffer_limit * 3 // 4 or (budget is not None and budget.over())

    def reconcile(self) -> None:
        """Return credit for what has left the channels' buffers since credit was last due."""
        for channel in list(self.channels.values()):
            if channel.unacked and channel.transport is not None and not channel.write_paused:
                channel._ack()

    def over_mark(self) -> None:
        """``buffered`` passed ``mark``: report it, and stop reading the WebSocket when a ceiling
        is reached and what has left the buffers does not bring it back under three quarters."""
        self.sync()
        if self.stalled or not self.open:
            return
        budget = self.budget
        if self.buffered >= self.buffer_limit or (budget is not None and budget.used >= budget.limit):
            self.reconcile()
            if self.over():
                self.stalled = True
                self.mark = NO_LIMIT
                assert self.transport is not None
                self.transport.pause_reading()
                self._recheck = self._loop.call_later(STALL_RECHECK, self._check_stall)
                return
        self.mark = min(self.buffered + MARK_STEP, self.buffer_limit)

    def _check_stall(self) -> None:
        self._recheck = None
        if not self.open:
            return
        self.reconcile()
        budget = self.budget
        if budget is not None and budget.over():
            for session in list(budget.sessions):
                session.reconcile()
        if self.over():
            self._recheck = self._loop.call_later(STALL_RECHECK, self._check_stall)
            return
        self.stalled = False
        self.mark = min(self.buffered + MARK_STEP, self.buffer_limit)
        assert self.transport is not None
        self.transport.resume_reading()

    # -- for subclasses --------------------------------------------------------------------

    def handshake_received(self, data: bytes) -> None:
        """Bytes read before ``start``: the subclass's HTTP handshake (dropped here)."""

    def on_open(self, channel_id: int) -> None:
        """Broker: the CLI asks for channel ``channel_id``."""

    def on_open_ok(self, channel: Channel) -> None:
        """CLI: the broker accepted ``channel``."""

    def on_open_fail(self, channel: Channel, error: dict[str, Any]) -> None:
        """CLI: the broker refused ``channel`` (``error``: its JSON error)."""

    def on_drain(self, seconds: int) -> None:
        """CLI: the broker is stopping; its open channels go on for at most ``seconds``."""

    def channel_finished(self, channel: Channel) -> None:
        """``channel``'s TCP connection is gone; ``channel.why`` says how it ended."""

    def finished(self) -> None:
        """The WebSocket and every channel are gone; ``why`` says how the session ended."""


def _error_body(payload: bytes) -> dict[str, Any]:
    try:
        error = json.loads(payload)["error"]
        if isinstance(error, dict):
            return error
    except (ValueError, KeyError, TypeError):
        pass
    return {"code": "internal", "message": "the broker refused the connection"}


def error_payload(body: dict[str, Any]) -> bytes:
    """An OPEN_FAIL payload: the broker's JSON error body, its message cut to fit."""
    data = json.dumps(body).encode()
    if len(data) > MAX_CONTROL:
        error = dict(body.get("error", {}))
        error.pop("hint", None)
        error["message"] = str(error.get("message", ""))[:1024]
        data = json.dumps({"error": error}).encode()
    return data
