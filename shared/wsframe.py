"""Sans-I/O WebSocket (RFC 6455) framing for the tunnel: pure functions and a parser over bytes.

The tunnel speaks real WebSocket binary frames, so it passes through load balancers and
ingresses, but it treats them as a byte stream: message boundaries mean nothing, and a frame's
payload is handed on piece by piece as it arrives (no buffering of payloads, so memory per
connection is bounded by a header and one control frame). Whatever one ``data_received`` gives
becomes one frame on the other hop: the per-message Python work is what limits the tunnel's
speed, so the hot path is a header ``struct.pack`` and one C call to mask or unmask.

Both the broker (``broker/tunnel``) and the CLI (``cli/tunnel.py``) use this module, so it lives
in ``shared`` and imports nothing from either side.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from collections.abc import Callable

__all__ = [
    "CLOSE_EXPIRED",
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL",
    "CLOSE_LOCKED",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_PROTOCOL",
    "CLOSE_REVOKED",
    "CLOSE_SIGNED_OUT",
    "CLOSE_TARGET",
    "CLOSE_TOO_BIG",
    "CLOSE_UNSUPPORTED",
    "GRANT_ENDED_CODES",
    "MAX_CONTROL_PAYLOAD",
    "MAX_FRAME_PAYLOAD",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameParser",
    "ProtocolError",
    "accept_key",
    "apply_mask",
    "close_payload",
    "encode_frame",
    "frame_header",
    "masked_frame",
    "parse_close",
    "unmasked_frame",
]

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # the broker is shutting down
CLOSE_PROTOCOL = 1002
CLOSE_UNSUPPORTED = 1003  # a text frame: the tunnel carries bytes only
CLOSE_POLICY = 1008  # flood of tiny frames, no pong
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TARGET = 4002  # the target closed the connection or failed
# The grant ended: the reason text says how; the CLI stops its listener on these.
CLOSE_EXPIRED = 4010
CLOSE_REVOKED = 4011
CLOSE_LOCKED = 4012
CLOSE_SIGNED_OUT = 4013  # the sign-in session ended (logout, refresh-token reuse, revoke)
GRANT_ENDED_CODES = frozenset({CLOSE_EXPIRED, CLOSE_REVOKED, CLOSE_LOCKED, CLOSE_SIGNED_OUT})

MAX_CONTROL_PAYLOAD = 125
# Frames we send carry whatever one read returned (uvloop reads at most 256 KiB); frames larger
# than this are refused with 1009 before any of their payload is read.
MAX_FRAME_PAYLOAD = 1024 * 1024

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _apply_mask_fallback(data: bytes, mask: bytes) -> bytes:
    n = len(data)
    if n == 0:
        return b""
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


apply_mask: Callable[[bytes, bytes], bytes]
try:  # the C implementation ships with the websockets package
    from websockets.speedups import apply_mask as _c_apply_mask

    apply_mask = _c_apply_mask
except ImportError:  # pragma: no cover - websockets without its C extension
    apply_mask = _apply_mask_fallback

_pack_short = struct.Struct("!BBH").pack
_pack_long = struct.Struct("!BBQ").pack
_unpack_short = struct.Struct("!H").unpack_from
_unpack_long = struct.Struct("!Q").unpack_from


class ProtocolError(Exception):
    """The peer broke the framing rules; close the connection with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value for a client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _WS_GUID).digest()).decode("ascii")  # noqa: S324


def frame_header(opcode: int, length: int, *, fin: bool = True, mask_key: bytes | None = None) -> bytes:
    """The header of one frame carrying ``length`` payload bytes (masked when ``mask_key`` is given)."""
    first = (0x80 if fin else 0) | opcode
    bit = 0x80 if mask_key is not None else 0
    if length < 126:
        head = bytes((first, bit | length))
    elif length < 65536:
        head = _pack_short(first, bit | 126, length)
    else:
        head = _pack_long(first, bit | 127, length)
    return head + mask_key if mask_key is not None else head


def unmasked_frame(payload: bytes) -> bytes:
    """One binary frame as a server sends it (unmasked). The tunnel's hot path, broker side."""
    n = len(payload)
    if n < 126:
        return bytes((0x82, n)) + payload
    if n < 65536:
        return _pack_short(0x82, 126, n) + payload
    return _pack_long(0x82, 127, n) + payload


class _MaskKeys:
    """Masking keys from the OS's CSPRNG, fetched 4 KiB at a time.

    One ``os.urandom(4)`` per frame was one getrandom() system call per message on the hot
    path; a pool keeps the keys just as unpredictable for a thousandth of the calls.
    """

    __slots__ = ("_pool", "_pos")

    def __init__(self) -> None:
        self._pool = b""
        self._pos = 0

    def next(self) -> bytes:
        pos = self._pos
        if pos >= len(self._pool):
            self._pool = os.urandom(4096)
            pos = 0
        self._pos = pos + 4
        return self._pool[pos : pos + 4]


_mask_keys = _MaskKeys()


def masked_frame(payload: bytes) -> bytes:
    """One binary frame as a client sends it (masked). The tunnel's hot path, CLI side.

    The mask hides nothing from a network observer (TLS does that); RFC 6455 requires it so
    that script in browsers cannot craft bytes on the wire. It must still be unpredictable.
    """
    key = _mask_keys.next()
    n = len(payload)
    if n < 126:
        head = bytes((0x82, 0x80 | n))
    elif n < 65536:
        head = _pack_short(0x82, 0xFE, n)
    else:
        head = _pack_long(0x82, 0xFF, n)
    return head + key + apply_mask(payload, key)


def encode_frame(opcode: int, payload: bytes = b"", *, mask: bool, fin: bool = True) -> bytes:
    """One complete frame. Control frames must carry at most 125 bytes and be final."""
    if opcode >= OP_CLOSE and (len(payload) > MAX_CONTROL_PAYLOAD or not fin):
        raise ValueError("control frames carry at most 125 bytes and cannot be fragmented")
    if mask:
        key = os.urandom(4)
        return frame_header(opcode, len(payload), fin=fin, mask_key=key) + apply_mask(payload, key)
    return frame_header(opcode, len(payload), fin=fin) + payload


def close_payload(code: int, reason: str = "") -> bytes:
    """The payload of a close frame: the code and a UTF-8 reason cut to fit 125 bytes."""
    raw = reason.encode("utf-8")[: MAX_CONTROL_PAYLOAD - 2]
    return struct.pack("!H", code) + raw.decode("utf-8", "ignore").encode("utf-8")


def parse_close(payload: bytes) -> tuple[int, str]:
    """Code and reason of a close frame (1005 when it carries no code).

    Raises:
        ProtocolError: a one-byte payload, or a reason that is not UTF-8.
    """
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise ProtocolError(CLOSE_PROTOCOL, "close frame with a one-byte payload")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(CLOSE_PROTOCOL, "close reason is not UTF-8") from exc
    return struct.unpack("!H", payload[:2])[0], reason


class FrameParser:
    """Incremental frame parser. ``feed(bytes)`` returns ``(opcode, payload)`` pairs.

    Data frames are delivered as they arrive, piece by piece, with opcode ``OP_BINARY``
    (continuations included); control frames (close, ping, pong) whole. ``expect_masked``:
    True on the server (clients must mask), False on the client (servers must not).

    Raises ``ProtocolError`` from ``feed`` on reserved bits, unknown opcodes, text frames,
    wrong masking, bad control frames and frames over ``max_payload`` (code 1009).
    """

    __slots__ = (
        "_control",
        "_head",
        "_key",
        "_offset",
        "_opcode",
        "_remaining",
        "_started",
        "expect_masked",
        "frames",
        "max_payload",
    )

    def __init__(self, *, expect_masked: bool, max_payload: int = MAX_FRAME_PAYLOAD) -> None:
        self.expect_masked = expect_masked
        self.max_payload = max_payload
        self.frames = 0  # frames parsed so far: the relay bounds floods of tiny frames with it
        self._head = b""  # a partial header carried over from the last feed
        self._remaining = 0  # payload bytes of the current frame still to come
        self._opcode = -1  # opcode of the frame whose payload is being read; -1: between frames
        self._key: bytes | None = None
        self._offset = 0  # how far into the current payload: the mask rotates with it
        self._control = b""
        self._started = False  # inside a fragmented data message

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        if self._head:
            data = self._head + data
            self._head = b""
        pos = 0
        end = len(data)
        while pos < end:
            if self._opcode < 0:
                used = self._parse_header(data, pos, end)
                if used == 0:
                    self._head = data[pos:]
                    return out
                pos += used
                if self._remaining == 0:
                    self._finish_frame(out, b"")
                    continue
            take = min(self._remaining, end - pos)
            chunk = data[pos : pos + take] if (pos or take != end) else data
            pos += take
            key = self._key
            if key is not None:
                off = self._offset & 3
                chunk = apply_mask(chunk, key[off:] + key[:off] if off else key)
            self._offset += take
            self._remaining -= take
            if self._opcode >= OP_CLOSE:
                self._control += chunk
                if self._remaining == 0:
                    control, self._control = self._control, b""
                    self._finish_frame(out, control)
            else:
                out.append((OP_BINARY, chunk))
                if self._remaining == 0:
                    self._opcode = -1
        return out

    def _finish_frame(self, out: list[tuple[int, bytes]], payload: bytes) -> None:
        opcode = self._opcode
        self._opcode = -1
        if opcode >= OP_CLOSE:
            out.append((opcode, payload))

    def _parse_header(self, data: bytes, pos: int, end: int) -> int:
        """Parse one header at ``pos``; return its length, or 0 when more bytes are needed."""
        if end - pos < 2:
            return 0
        b0 = data[pos]
        b1 = data[pos + 1]
        need = 2
        length = b1 & 0x7F
        if length == 126:
            need = 4
        elif length == 127:
            need = 10
        masked = b1 & 0x80
        if masked:
            need += 4
        if end - pos < need:
            return 0
        if b0 & 0x70:
            raise ProtocolError(CLOSE_PROTOCOL, "reserved bits set (no extensions were negotiated)")
        if bool(masked) != self.expect_masked:
            raise ProtocolError(
                CLOSE_PROTOCOL,
                "client frames must be masked" if self.expect_masked else "server frames are masked",
            )
        if length == 126:
            length = _unpack_short(data, pos + 2)[0]
        elif length == 127:
            length = _unpack_long(data, pos + 2)[0]
        opcode = b0 & 0x0F
        fin = b0 & 0x80
        if opcode >= OP_CLOSE:
            if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                raise ProtocolError(CLOSE_PROTOCOL, f"unknown control opcode {opcode:#x}")
            if length > MAX_CONTROL_PAYLOAD or not fin:
                raise ProtocolError(CLOSE_PROTOCOL, "control frames carry at most 125 bytes, unfragmented")
        elif opcode == OP_BINARY:
            if self._started:
                raise ProtocolError(CLOSE_PROTOCOL, "new data frame inside a fragmented message")
            self._started = not fin
        elif opcode == OP_CONTINUATION:
            if not self._started:
                raise ProtocolError(CLOSE_PROTOCOL, "continuation frame without a message to continue")
            self._started = not fin
        elif opcode == OP_TEXT:
            raise ProtocolError(CLOSE_UNSUPPORTED, "the tunnel carries binary frames only")
        else:
            raise ProtocolError(CLOSE_PROTOCOL, f"unknown opcode {opcode:#x}")
        if length > self.max_payload:
            raise ProtocolError(
                CLOSE_TOO_BIG, f"frame of {length} bytes is over the {self.max_payload} limit"
            )
        self._key = data[need + pos - 4 : need + pos] if masked else None
        self._remaining = length
        self._offset = 0
        self._opcode = opcode
        self.frames += 1
        return need
