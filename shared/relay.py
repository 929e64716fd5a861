"""The tunnel's relay: a WebSocket connection on one side, a plain TCP connection on the other.

Broker: ``TunnelProtocol`` (a ``FramedRelay``) is the CLI's connection; its ``RawPeer`` is the
target's. CLI: the ``FramedRelay`` is the connection to the broker; its ``RawPeer`` is the local
client's (psql). Both sides are plain asyncio protocols: no tasks, no queues, no per-message
allocation beyond the frame itself, because on a two-hop tunnel the per-message Python work is
what limits throughput (see docs/tunnel.md for the measurements).

Backpressure: when one side's write buffer passes its high-water mark, the other side stops
reading until it drains, so a slow reader never makes the relay buffer without bound.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from access.shared.wsframe import (
    CLOSE_NORMAL,
    CLOSE_POLICY,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    FrameParser,
    ProtocolError,
    close_payload,
    encode_frame,
    masked_frame,
    parse_close,
    unmasked_frame,
)

__all__ = ["HIGH_WATER", "LOW_WATER", "FramedRelay", "RawPeer"]

log = logging.getLogger(__name__)

# Write-buffer marks per transport. Large enough that a full 256 KiB read does not flip
# pause/resume on every chunk; small enough that 1,000 busy tunnels stay within memory.
HIGH_WATER = 512 * 1024
LOW_WATER = 128 * 1024
# A single read holding more frames than this, averaging under 16 bytes a frame (header
# included), is a flood: no client of ours sends that, and each frame costs Python work.
FLOOD_FRAMES = 1024
FLOOD_MIN_AVERAGE = 16


class FramedRelay(asyncio.Protocol):
    """The WebSocket side of one tunnel connection, joined to a ``RawPeer``.

    Subclasses handle the HTTP handshake (``data_received`` before ``open``) and override
    ``finished`` to learn how the connection ended. ``client`` is True on the CLI side: its
    frames are masked, and it expects unmasked frames.
    """

    client = False
    # What ``why`` says when each side ends the connection (the audit's vocabulary).
    framed_closed = "client closed"
    raw_closed = "target closed"

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: asyncio.Transport | None = None
        self.parser = FrameParser(expect_masked=not self.client)
        self.open = False  # relaying frames <-> bytes
        self.bytes_from_framed = 0  # payload bytes that went to the raw peer
        self.bytes_to_framed = 0  # bytes from the raw peer that went out as frames
        self.why: str | None = None  # how it ended, once it has
        self.remote_close: tuple[int, str] | None = None  # the close frame the other side sent
        self._close_sent = False
        self._framed_lost = False
        self._peer_lost = False
        self._finished = False
        self._writing_paused = False
        self._frames_seen = 0
        self._heard_frames = 0
        self._idle_ticks = 0
        self._ping_outstanding = False
        self._encode = masked_frame if self.client else unmasked_frame

    # -- asyncio callbacks of the framed transport -------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)

    def data_received(self, data: bytes) -> None:
        if self.open:
            self.relay_frames(data)

    def eof_received(self) -> bool | None:
        return None  # close our end too: there is no half-close in WebSocket

    def connection_lost(self, exc: Exception | None) -> None:
        self._framed_lost = True
        self.open = False
        if self.why is None:
            self.why = self.framed_closed if self.remote_close or exc is None else "error"
        if self.peer is not None and not self._peer_lost:
            # A clean close from the other side lets the last bytes reach the peer; anything
            # else (a cut, an error) drops them.
            if self.remote_close is not None:
                self.peer.close()
            else:
                self.peer.abort()
        self._maybe_finish()

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self.peer is not None and not self._peer_lost:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.peer is not None and not self._peer_lost and self.open:
            self.peer.resume_reading()

    # -- the relay -------------------------------------------------------------------------

    def start_relay(self, peer: asyncio.Transport) -> None:
        """Begin relaying between the framed transport and ``peer`` (reading resumed on both)."""
        self.peer = peer
        peer.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        self.open = True
        assert self.transport is not None
        raw = peer.get_protocol()
        if isinstance(raw, RawPeer) and raw.early:
            early, raw.early = raw.early, b""
            self.peer_data(early)
        peer.resume_reading()
        self.transport.resume_reading()

    def relay_frames(self, data: bytes) -> None:
        parser = self.parser
        try:
            frames = parser.feed(data)
        except ProtocolError as exc:
            self.close(exc.code, exc.reason, why="error")
            return
        peer = self.peer
        assert peer is not None
        if len(frames) == 1 and frames[0][0] == OP_BINARY:  # the common case: one read, one frame
            payload = frames[0][1]
            self.bytes_from_framed += len(payload)
            peer.write(payload)
        else:
            chunks = []
            for opcode, payload in frames:
                if opcode == OP_BINARY:
                    chunks.append(payload)
                else:
                    if chunks:
                        self._write_peer(chunks)
                        chunks = []
                    self._control(opcode, payload)
                    if not self.open:
                        return
            if chunks:
                self._write_peer(chunks)
            count = parser.frames - self._frames_seen
            if count > FLOOD_FRAMES and len(data) < count * FLOOD_MIN_AVERAGE:
                self.close(CLOSE_POLICY, "flood of tiny frames", why="error")
        self._frames_seen = parser.frames

    def _write_peer(self, chunks: list[bytes]) -> None:
        payload = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.bytes_from_framed += len(payload)
        assert self.peer is not None
        self.peer.write(payload)

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            # A peer that floods pings without reading our answers gets no more answers: the
            # pongs would otherwise pile up in our write buffer.
            if not self._writing_paused and not self._close_sent:
                self._send(OP_PONG, payload)
        elif opcode == OP_PONG:
            self._ping_outstanding = False
        elif opcode == OP_CLOSE:
            try:
                self.remote_close = parse_close(payload)
            except ProtocolError as exc:
                self.close(exc.code, exc.reason, why="error")
                return
            code = self.remote_close[0]
            self.close(code if code != 1005 else CLOSE_NORMAL, "", why=self.framed_closed, flush_peer=True)

    def peer_data(self, data: bytes) -> None:
        """Bytes from the raw peer: one read becomes one frame."""
        if self.open:
            self.bytes_to_framed += len(data)
            assert self.transport is not None
            self.transport.write(self._encode(data))

    def peer_closed(self, exc: Exception | None) -> None:
        """The raw peer closed (EOF or lost): say so with a close frame."""
        self._peer_lost = True
        if self._close_sent or self._framed_lost:
            self._maybe_finish()
            return
        if exc is None:
            self.close(CLOSE_NORMAL, self.peer_closed_message(), why=self.raw_closed)
        else:
            self.close(CLOSE_NORMAL, f"{self.peer_closed_message()} ({exc})", why=self.raw_closed)
        self._maybe_finish()

    def peer_closed_message(self) -> str:
        return (
            "the target closed the connection"
            if not self.client
            else "the local client closed the connection"
        )

    def close(self, code: int, reason: str, *, why: str, flush_peer: bool = False) -> None:
        """End the tunnel: a close frame with ``code``/``reason`` to the framed side, then close.

        The raw peer is closed at once (a cut drops what is buffered for it) unless
        ``flush_peer``, which lets the last bytes out first.
        """
        if self.why is None:
            self.why = why
        self.open = False
        if not self._close_sent and not self._framed_lost and self.transport is not None:
            self._close_sent = True
            self._send(OP_CLOSE, close_payload(code, reason))
            self.transport.close()
        if self.peer is not None and not self._peer_lost:
            if flush_peer:
                self.peer.close()
            else:
                self.peer.abort()
        self._maybe_finish()

    def heartbeat(self, ticks_to_timeout: int) -> None:
        """Called periodically: ping a peer that sent nothing since the last tick; close one
        that stays silent for ``ticks_to_timeout`` more ticks (a half-open connection)."""
        if not self.open:
            return
        frames = self.parser.frames
        if frames != self._heard_frames:
            self._heard_frames = frames
            self._idle_ticks = 0
            self._ping_outstanding = False
            return
        self._idle_ticks += 1
        if not self._ping_outstanding:
            self._ping_outstanding = True
            self._idle_ticks = 0
            self._send(OP_PING, b"")
        elif self._idle_ticks >= ticks_to_timeout:
            self.close(CLOSE_POLICY, "no answer to ping: closing a half-open connection", why="error")

    def _send(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.write(encode_frame(opcode, payload, mask=self.client))

    def _maybe_finish(self) -> None:
        if self._finished or not self._framed_lost:
            return
        if self.peer is not None and not self._peer_lost:
            return
        self._finished = True
        self.finished()

    def finished(self) -> None:
        """Both connections are gone; ``why`` says how it ended. Override to audit or report."""


class RawPeer(asyncio.Protocol):
    """The plain TCP side of a tunnel connection: everything it reads becomes one frame."""

    __slots__ = ("early", "relay", "transport")

    def __init__(self, relay: FramedRelay | None = None) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.early = b""  # read before the relay started; sent first when it does

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        # Nothing should be read until the relay starts (the handshake may still be under way),
        # but uvloop starts reading after connection_made whatever it was told: hence ``early``.
        self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        if relay is not None and relay.open:
            relay.peer_data(data)
            return
        self.early += data
        assert self.transport is not None
        self.transport.pause_reading()  # at most one read is held here

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.relay is not None:
            self.relay.peer_closed(exc)

    def pause_writing(self) -> None:
        relay = self.relay
        if relay is not None and relay.transport is not None and relay.open:
            relay.transport.pause_reading()

    def resume_writing(self) -> None:
        relay = self.relay
        if relay is not None and relay.transport is not None and relay.open:
            relay.transport.resume_reading()
