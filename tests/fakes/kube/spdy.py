"""``kubectl port-forward``: SPDY/3.1 tunnelled over a WebSocket (``SPDY/3.1+portforward.k8s.io``).

kubectl 1.31+ does not speak a channel protocol for port-forward: it opens a WebSocket and runs
the same SPDY/3.1 session over it that it used to run over an ``Upgrade: SPDY/3.1`` connection
(client-go's tunneling dialer; the API server translates it for the kubelet). The WebSocket's
binary messages are a byte stream; message boundaries mean nothing.

Per forwarded connection the client opens two streams with headers ``streamtype`` (``error`` or
``data``), ``port`` and ``requestid``. The server replies to each (SYN_REPLY), connects to the
port, copies bytes both ways on the data stream, and when either side is done ends both streams
(the client waits for the error stream's end, which carries a message only on failure).

The framing is sans-I/O (:class:`Framer`); header blocks are zlib streams with the SPDY/3
dictionary, one compression context per direction for the whole session. Flow control
(WINDOW_UPDATE) is not enforced; SETTINGS are ignored; PING is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.fakes.kube.http import WebSocket

__all__ = ["DICTIONARY", "Control", "Data", "Framer", "PortForward", "PortForwardSession", "ProtocolError"]

SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
RST_PROTOCOL_ERROR, RST_CANCEL = 1, 5
MAX_FRAME = 1024 * 1024
MAX_HEADERS = 64 * 1024  # a decompressed header block
INBOUND = 64  # DATA frames held per connection before the session stops reading

# The dictionary's words, each written with a 4-byte length, then a tail without lengths.
_NAMES = (
    "options head post put delete trace accept accept-charset accept-encoding accept-language "
    "accept-ranges age allow authorization cache-control connection content-base content-encoding "
    "content-language content-length content-location content-md5 content-range content-type date "
    "etag expect expires from host if-match if-modified-since if-none-match if-range "
    "if-unmodified-since last-modified location max-forwards pragma proxy-authenticate "
    "proxy-authorization range referer retry-after server te trailer transfer-encoding upgrade "
    "user-agent vary via warning www-authenticate method get status"
)
_WORDS = [
    *_NAMES.split(),
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
]
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)


def _dictionary() -> bytes:
    return b"".join(struct.pack("!I", len(w)) + w.encode() for w in _WORDS) + _TAIL.encode()


# The zlib dictionary every SPDY/3 header block is compressed with (SPDY/3 draft, section 2.6.10.1).
DICTIONARY = _dictionary()


class ProtocolError(Exception):
    """The peer broke SPDY framing; the session ends with GOAWAY."""


@dataclass(frozen=True)
class Data:
    stream_id: int
    fin: bool
    data: bytes


@dataclass(frozen=True)
class Control:
    type: int
    flags: int
    stream_id: int = 0  # SYN_STREAM, SYN_REPLY, RST_STREAM, HEADERS, WINDOW_UPDATE
    headers: dict[str, list[str]] = field(default_factory=dict)
    value: int = 0  # RST_STREAM and GOAWAY status, PING id, WINDOW_UPDATE delta


class Framer:
    """SPDY/3.1 frames from bytes (``feed``) and to bytes (``syn_reply``, ``data``, ...), server side."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._deflate = zlib.compressobj(zdict=DICTIONARY)

    def feed(self, data: bytes) -> list[Data | Control]:
        """Raises ProtocolError on a frame over ``MAX_FRAME``, a bad version or a bad header block."""
        self._buffer += data
        frames: list[Data | Control] = []
        while len(self._buffer) >= 8:
            first, second = struct.unpack_from("!II", self._buffer)
            length = second & 0xFFFFFF
            if length > MAX_FRAME:
                raise ProtocolError(f"frame of {length} bytes")
            if len(self._buffer) < 8 + length:
                break
            payload = bytes(self._buffer[8 : 8 + length])
            del self._buffer[: 8 + length]
            flags = second >> 24
            if first & 0x80000000:
                frames.append(self._control(first, flags, payload))
            else:
                frames.append(Data(first & 0x7FFFFFFF, bool(flags & FLAG_FIN), payload))
        return frames

    def _control(self, first: int, flags: int, payload: bytes) -> Control:
        version, kind = (first >> 16) & 0x7FFF, first & 0xFFFF
        if version != 3:
            raise ProtocolError(f"SPDY version {version}")
        if kind == SYN_STREAM:
            (stream_id,) = struct.unpack_from("!I", payload)
            return Control(kind, flags, stream_id & 0x7FFFFFFF, self._headers(payload[10:]))
        if kind in (SYN_REPLY, HEADERS):
            (stream_id,) = struct.unpack_from("!I", payload)
            return Control(kind, flags, stream_id & 0x7FFFFFFF, self._headers(payload[4:]))
        if kind in (RST_STREAM, WINDOW_UPDATE):
            stream_id, value = struct.unpack_from("!II", payload)
            return Control(kind, flags, stream_id & 0x7FFFFFFF, value=value)
        if kind == PING:
            return Control(kind, flags, value=struct.unpack_from("!I", payload)[0])
        if kind == GOAWAY:
            last, code = struct.unpack_from("!II", payload)
            return Control(kind, flags, last & 0x7FFFFFFF, value=code)
        return Control(kind, flags)  # SETTINGS and anything newer: nothing to do

    def _headers(self, block: bytes) -> dict[str, list[str]]:
        try:
            raw = self._inflate.decompress(block, MAX_HEADERS)
            (count,) = struct.unpack_from("!I", raw)
            pos, headers = 4, {}
            for _ in range(count):
                (n,) = struct.unpack_from("!I", raw, pos)
                name = raw[pos + 4 : pos + 4 + n].decode()
                pos += 4 + n
                (n,) = struct.unpack_from("!I", raw, pos)
                headers[name] = raw[pos + 4 : pos + 4 + n].decode().split("\x00")
                pos += 4 + n
        except (zlib.error, struct.error, UnicodeDecodeError) as exc:
            raise ProtocolError(f"bad header block: {exc}") from exc
        return headers

    @staticmethod
    def _frame(kind: int, flags: int, payload: bytes) -> bytes:
        return struct.pack("!HHI", 0x8003, kind, (flags << 24) | len(payload)) + payload

    def syn_reply(self, stream_id: int, *, fin: bool = False) -> bytes:
        block = self._deflate.compress(struct.pack("!I", 0)) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        return self._frame(SYN_REPLY, FLAG_FIN if fin else 0, struct.pack("!I", stream_id) + block)

    @staticmethod
    def data(stream_id: int, data: bytes, *, fin: bool = False) -> bytes:
        return struct.pack("!II", stream_id, ((FLAG_FIN if fin else 0) << 24) | len(data)) + data

    def rst_stream(self, stream_id: int, status: int) -> bytes:
        return self._frame(RST_STREAM, 0, struct.pack("!II", stream_id, status))

    def ping(self, ping_id: int) -> bytes:
        return self._frame(PING, 0, struct.pack("!I", ping_id))

    def goaway(self, last_stream_id: int, status: int = 0) -> bytes:
        return self._frame(GOAWAY, 0, struct.pack("!II", last_stream_id, status))


@dataclass
class PortForward:
    """One forwarded connection as the stand-in saw it (``KubeAPI.forwards`` keeps them)."""

    namespace: str
    pod: str
    port: int
    user: str
    bytes_in: int = 0  # client to pod
    bytes_out: int = 0  # pod to client
    error: str = ""


class _Pair:
    """The error and data streams of one forwarded connection, and what copies its bytes."""

    def __init__(self) -> None:
        self.error_id = 0
        self.data_id = 0
        self.port = 0
        # Client bytes wait here while the connection to the pod port is being opened.
        self.inbound: asyncio.Queue[bytes | None] = asyncio.Queue(INBOUND)
        self.task: asyncio.Task[None] | None = None
        self.forward: PortForward | None = None


class PortForwardSession:
    """One port-forward WebSocket: ``target(port)`` says where a pod port leads, ``record`` keeps
    each forwarded connection."""

    def __init__(
        self,
        socket: WebSocket,
        namespace: str,
        pod: str,
        user: str,
        target: Callable[[int], tuple[str, int] | None],
        record: Callable[[PortForward], None],
    ) -> None:
        self.socket = socket
        self.framer = Framer()
        self.namespace, self.pod, self.user = namespace, pod, user
        self.target, self.record = target, record
        self.pairs: dict[str, _Pair] = {}
        self.by_stream: dict[int, _Pair] = {}
        self.last_stream = 0

    async def run(self) -> None:
        """Serve the session until the client closes it (or breaks SPDY: GOAWAY)."""
        try:
            while (message := await self.socket.recv()) is not None:
                for frame in self.framer.feed(message):
                    await self._handle(frame)
        except ProtocolError:
            await self.socket.send(self.framer.goaway(self.last_stream, RST_PROTOCOL_ERROR))
        finally:
            for pair in self.pairs.values():
                if pair.task is not None:
                    pair.task.cancel()
            await self.socket.close()

    async def _handle(self, frame: Data | Control) -> None:
        if isinstance(frame, Data):
            pair = self.by_stream.get(frame.stream_id)
            if pair is None or frame.stream_id != pair.data_id:
                return  # the error stream carries nothing from the client; it half-closes it at once
            if frame.data:
                await pair.inbound.put(frame.data)
            if frame.fin:
                await pair.inbound.put(None)
        elif frame.type == SYN_STREAM:
            await self._stream(frame)
        elif frame.type == PING:
            await self.socket.send(self.framer.ping(frame.value))
        elif frame.type == RST_STREAM:
            pair = self.by_stream.get(frame.stream_id)
            if pair is not None and pair.task is not None:
                pair.task.cancel()
        elif frame.type == GOAWAY:
            await self.socket.close()

    async def _stream(self, frame: Control) -> None:
        self.last_stream = max(self.last_stream, frame.stream_id)
        kind = frame.headers.get("streamtype", [""])[0]
        request = frame.headers.get("requestid", [""])[0]
        try:
            port = int(frame.headers.get("port", [""])[0])
        except ValueError:
            port = 0
        if kind not in ("error", "data") or not 0 < port < 65536:
            await self.socket.send(self.framer.rst_stream(frame.stream_id, RST_PROTOCOL_ERROR))
            return
        await self.socket.send(self.framer.syn_reply(frame.stream_id))
        pair = self.pairs.setdefault(request, _Pair())
        pair.port = port
        self.by_stream[frame.stream_id] = pair
        if kind == "error":
            pair.error_id = frame.stream_id
        else:
            pair.data_id = frame.stream_id
        if pair.error_id and pair.data_id and pair.task is None:
            pair.forward = PortForward(self.namespace, self.pod, port, self.user)
            self.record(pair.forward)
            pair.task = asyncio.ensure_future(self._pump(pair, pair.forward))

    async def _pump(self, pair: _Pair, forward: PortForward) -> None:
        address = self.target(pair.port)
        try:
            if address is None:
                raise ConnectionRefusedError(f"nothing listens on port {pair.port} in the pod")
            reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), 5)
        except (OSError, TimeoutError) as exc:
            forward.error = (
                f"error forwarding port {pair.port} to pod {self.pod}, uid : failed to connect to "
                f"localhost:{pair.port} inside namespace: {exc}"
            )
            await self.socket.send(self.framer.data(pair.error_id, forward.error.encode(), fin=True))
            await self.socket.send(self.framer.data(pair.data_id, b"", fin=True))
            return
        upstream = asyncio.ensure_future(self._upstream(pair, forward, writer))
        try:
            while data := await reader.read(65536):
                forward.bytes_out += len(data)
                await self.socket.send(self.framer.data(pair.data_id, data))
        except OSError:
            pass
        finally:
            upstream.cancel()
            writer.close()
            with contextlib.suppress(OSError):
                await self.socket.send(self.framer.data(pair.data_id, b"", fin=True))
                await self.socket.send(self.framer.data(pair.error_id, b"", fin=True))

    @staticmethod
    async def _upstream(pair: _Pair, forward: PortForward, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while (data := await pair.inbound.get()) is not None:
                forward.bytes_in += len(data)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()  # the client closed its end: the pod's app sees EOF
