"""Sans-I/O framing of the tunnel's channels (``access-tunnel.v2``): messages over one WebSocket.

One ``access connect`` holds one WebSocket to the broker; every local connection made to it is a
*channel* of that WebSocket, and each channel is its own connection to the target on the broker's
side. The WebSocket's binary frames carry a byte stream (frame boundaries mean nothing) of
messages, each a 9-byte header ``!BII`` — type, channel id, value — followed, for the types that
carry one, by ``value`` bytes of payload::

    OPEN       CLI -> broker  open channel ``id`` to the grant's target (ids only ever increase)
    OPEN_OK    broker -> CLI  the target answered: DATA may flow
    OPEN_FAIL  broker -> CLI  payload: the broker's JSON error body; the channel is gone
    DATA       both           payload: bytes for the channel's TCP connection
    WINDOW     both           value: bytes of credit returned to the sender (no payload)
    CLOSE      both           payload: a UTF-8 reason; the sender is done with the channel
    DRAIN      broker -> CLI  channel 0, value: seconds. The broker is stopping: open no more
                              channels here (a new WebSocket lands on another replica); the
                              open ones go on for at most ``value`` seconds

Flow control, per channel and direction, as SSH does it: a sender starts with ``INITIAL_WINDOW``
bytes of credit and sends no more DATA than it holds; the receiver returns credit (``WINDOW``)
once the bytes have left for its TCP peer. One slow client therefore never stalls the other
channels, and what a receiver buffers per channel is bounded by the window.

The parser hands DATA payloads on piece by piece as they arrive (a 256 KiB payload split over
several reads is never reassembled), so only a header that straddles two reads is ever copied.
"""

from __future__ import annotations

import struct

from access.shared.wsframe import CLOSE_PROTOCOL, ProtocolError

__all__ = [
    "CLOSE",
    "DATA",
    "DRAIN",
    "HEADER_SIZE",
    "INITIAL_WINDOW",
    "MAX_CHANNELS",
    "MAX_CONTROL",
    "OPEN",
    "OPEN_FAIL",
    "OPEN_OK",
    "SUBPROTOCOL",
    "WINDOW",
    "WINDOW_STEP",
    "Message",
    "MuxParser",
    "header",
    "unpack_header",
]

SUBPROTOCOL = "access-tunnel.v2"

OPEN = 1
OPEN_OK = 2
OPEN_FAIL = 3
DATA = 4
WINDOW = 5
CLOSE = 6
DRAIN = 7
_NAMES = {
    OPEN: "OPEN",
    OPEN_OK: "OPEN_OK",
    OPEN_FAIL: "OPEN_FAIL",
    DATA: "DATA",
    WINDOW: "WINDOW",
    CLOSE: "CLOSE",
    DRAIN: "DRAIN",
}
_WITH_PAYLOAD = frozenset({OPEN_FAIL, DATA, CLOSE})

HEADER_SIZE = 9
# Credit per channel and direction. A window must cover the bandwidth-delay product of the two
# hops or one stream cannot fill them (256 KiB cost a bulk stream half its speed here); SSH uses
# 2 MiB. Returned in quarter-window steps, so a bulk stream sends one WINDOW per 512 KiB.
INITIAL_WINDOW = 2 * 1024 * 1024
WINDOW_STEP = INITIAL_WINDOW // 4
MAX_CHANNELS = 256  # open at once per WebSocket; more are refused with OPEN_FAIL
MAX_CONTROL = 4096  # OPEN_FAIL and CLOSE payloads
MAX_DATA = 1024 * 1024  # one DATA message (we send at most one read, <= 256 KiB)

_header = struct.Struct("!BII")
header = _header.pack
unpack_header = _header.unpack_from
_unpack = unpack_header

Message = tuple[int, int, int, bytes]


class MuxParser:
    """Incremental message parser: ``feed(bytes)`` returns ``(type, channel, value, payload)``.

    DATA comes out piece by piece (``value`` is the piece's length, several pieces may share a
    channel); OPEN_FAIL and CLOSE payloads whole; other types with ``payload`` empty.

    Raises ``ProtocolError`` (close code 1002) from ``feed`` on an unknown type, a payload on a
    type that has none, or a payload over its limit.
    """

    __slots__ = ("_channel", "_control", "_head", "_kind", "_remaining", "messages")

    def __init__(self) -> None:
        self.messages = 0  # headers parsed so far: the session bounds floods of tiny messages
        self._head = b""  # a partial header carried over from the last feed
        self._kind = 0  # type of the message whose payload is being read; 0: between messages
        self._channel = 0
        self._remaining = 0
        self._control = b""

    def between_messages(self) -> bool:
        """Nothing carried over: the next byte fed starts a message header."""
        return self._kind == 0 and not self._head

    def feed(self, data: bytes) -> list[Message]:
        out: list[Message] = []
        if self._head:
            data = self._head + data
            self._head = b""
        pos = 0
        end = len(data)
        while pos < end:
            if self._kind == 0:
                if end - pos < HEADER_SIZE:
                    self._head = data[pos:]
                    break
                kind, channel, value = _unpack(data, pos)
                pos += HEADER_SIZE
                self.messages += 1
                if kind == DATA:
                    if value > MAX_DATA:
                        raise ProtocolError(
                            CLOSE_PROTOCOL, f"DATA of {value} bytes is over the {MAX_DATA} limit"
                        )
                    if end - pos >= value:  # the common case: the whole payload is in this read
                        out.append((DATA, channel, value, data[pos : pos + value]))
                        pos += value
                        continue
                elif kind in _WITH_PAYLOAD:
                    if value > MAX_CONTROL:
                        raise ProtocolError(
                            CLOSE_PROTOCOL, f"{_NAMES[kind]} payload over {MAX_CONTROL} bytes"
                        )
                    if end - pos >= value:
                        out.append((kind, channel, value, data[pos : pos + value]))
                        pos += value
                        continue
                elif kind in _NAMES:
                    out.append((kind, channel, value, b""))
                    continue
                else:
                    raise ProtocolError(CLOSE_PROTOCOL, f"unknown tunnel message type {kind}")
                self._kind, self._channel, self._remaining = kind, channel, value
            take = min(self._remaining, end - pos)
            piece = data[pos : pos + take] if (pos or take != end) else data
            pos += take
            self._remaining -= take
            if self._kind == DATA:
                out.append((DATA, self._channel, take, piece))
            else:
                self._control += piece
                if self._remaining:
                    continue
                out.append((self._kind, self._channel, len(self._control), self._control))
                self._control = b""
            if self._remaining == 0:
                self._kind = 0
        return out
