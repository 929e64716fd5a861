"""A small HTTP/1.1 server over TLS for the stand-in: h11 parses, asyncio moves the bytes.

A handler takes a :class:`Request` (head and whole body, both bounded) and returns one of:

- :class:`Response`: a status and a whole body;
- :class:`Stream`: a status and an async iterator of chunks, sent with chunked encoding until the
  iterator ends or the client goes away (the iterator is then cancelled);
- :class:`Upgrade`: a WebSocket upgrade with the chosen subprotocol and a coroutine that runs the
  :class:`WebSocket` (RFC 6455 framing by the ``websockets`` package's sans-I/O ``Protocol``).

Every wait is bounded (``Limits``); a connection over the cap is closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
from websockets.frames import Frame, Opcode
from websockets.protocol import CLOSED, OPEN, Protocol, Side

from access.shared.wsframe import accept_key

__all__ = ["Handler", "Limits", "Request", "Response", "Server", "Stream", "Upgrade", "WebSocket"]


@dataclass(frozen=True)
class Limits:
    head: int = 16 * 1024  # request line and headers
    body: int = 1024 * 1024  # a request body (PATCH, DELETE options)
    message: int = 1024 * 1024  # one WebSocket message
    head_timeout: float = 10.0  # from the first byte (or the previous response) to a whole head
    idle_timeout: float = 30.0  # a kept-alive connection with no request
    write_timeout: float = 10.0  # a client that stops reading
    connections: int = 64


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]  # names lower-cased, repeats kept in order
    body: bytes
    peer_cert: dict[str, Any] | None  # the verified client certificate, if one was presented
    path: str = field(init=False)
    query: dict[str, list[str]] = field(init=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.target)
        object.__setattr__(self, "path", parts.path)
        object.__setattr__(self, "query", parse_qs(parts.query, keep_blank_values=True))

    def header(self, name: str) -> str | None:
        values = self.header_all(name)
        return values[-1] if values else None

    def header_all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    def arg(self, name: str, default: str = "") -> str:
        values = self.query.get(name)
        return values[-1] if values else default


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Stream:
    status: int
    chunks: AsyncGenerator[bytes, None]
    content_type: str = "application/json"


@dataclass(frozen=True)
class Upgrade:
    subprotocol: str
    run: Callable[[WebSocket], Awaitable[None]]


Handler = Callable[[Request], Awaitable[Response | Stream | Upgrade]]
Refuse = Callable[[int, str], Response]  # the body of a refusal the server makes itself (413, 431)


def _plain(code: int, message: str) -> Response:
    return Response(code, message.encode(), "text/plain")


class WebSocket:
    """One accepted WebSocket: whole binary or text messages in, binary messages out."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, subprotocol: str, limits: Limits
    ) -> None:
        self.subprotocol = subprotocol
        self._reader = reader
        self._writer = writer
        self._limits = limits
        self._protocol = Protocol(Side.SERVER, state=OPEN, max_size=limits.message)
        self._pending: list[bytes] = []  # whole messages parsed but not yet received
        self._partial = bytearray()
        self._send_lock = asyncio.Lock()

    def feed(self, data: bytes) -> None:
        self._protocol.receive_data(data)

    async def recv(self) -> bytes | None:
        """The next message; None once the peer closed (or broke the framing)."""
        while not self._pending:
            self._collect()
            if self._pending:
                break
            await self._flush()
            if self._protocol.close_expected() or self._protocol.state is CLOSED:
                return None
            data = await self._reader.read(65536)
            if data:
                self._protocol.receive_data(data)
            else:
                self._protocol.receive_eof()
                self._collect()
                return self._pending.pop(0) if self._pending else None
        return self._pending.pop(0)

    def _collect(self) -> None:
        for event in self._protocol.events_received():
            if isinstance(event, Frame) and event.opcode in (Opcode.BINARY, Opcode.TEXT, Opcode.CONT):
                self._partial += event.data
                if event.fin:
                    self._pending.append(bytes(self._partial))
                    self._partial.clear()

    async def send(self, message: bytes) -> None:
        if self._protocol.state is not OPEN:
            return
        self._protocol.send_binary(message)
        await self._flush()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._protocol.state is OPEN:
            self._protocol.send_close(code, reason)
        await self._flush()

    async def _flush(self) -> None:
        async with self._send_lock:
            for data in self._protocol.data_to_send():
                if data:
                    self._writer.write(data)
                elif self._writer.can_write_eof():
                    with contextlib.suppress(OSError, RuntimeError):
                        self._writer.write_eof()
            await asyncio.wait_for(self._writer.drain(), self._limits.write_timeout)


class Server:
    """``Server(handler, ssl_context).start()`` listens on a random loopback port (``.port``)."""

    def __init__(
        self,
        handler: Handler,
        ssl_context: ssl.SSLContext,
        limits: Limits | None = None,
        refuse: Refuse = _plain,
    ) -> None:
        self.handler = handler
        self.refuse = refuse
        self.ssl_context = ssl_context
        self.limits = limits or Limits()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.errors: list[BaseException] = []  # what a handler raised: the fixture fails the test on any

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", 0, ssl=self.ssl_context, ssl_handshake_timeout=self.limits.head_timeout
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._tasks) >= self.limits.connections:
            writer.close()
            return
        self._tasks.add(task)
        try:
            await _Connection(self, reader, writer).serve()
        except (ConnectionError, OSError, TimeoutError, h11.ProtocolError, ssl.SSLError):
            pass  # the client went away, stalled or broke HTTP: its connection ends
        except asyncio.CancelledError:
            pass  # the stand-in is stopping (asyncio would log a cancelled connection task)
        except Exception as exc:
            self.errors.append(exc)
        finally:
            self._tasks.discard(task)
            writer.close()


class _Connection:
    def __init__(self, server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.limits = server.limits
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.head)

    async def serve(self) -> None:
        try:
            await self._serve()
        except h11.RemoteProtocolError as exc:  # a head over the limit (431) or broken HTTP (400)
            if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await self._respond(self.server.refuse(exc.error_status_hint, str(exc)), close=True)

    async def _serve(self) -> None:
        first = True
        while True:
            timeout = self.limits.head_timeout if first else self.limits.idle_timeout
            event = await self._next(timeout)
            first = False
            if not isinstance(event, h11.Request):
                return
            request = await self._request(event)
            if request is None:
                return
            result = await self.server.handler(request)
            if isinstance(result, Upgrade):
                await self._upgrade(request, result)
                return
            if isinstance(result, Stream):
                await self._stream(result)
            else:
                await self._respond(result)
            if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                return
            self.h11.start_next_cycle()

    async def _next(self, deadline: float) -> h11.Event | type[h11.PAUSED]:
        async with asyncio.timeout(deadline):
            while True:
                event = self.h11.next_event()
                if event is not h11.NEED_DATA:
                    return event  # type: ignore[return-value]
                self.h11.receive_data(await self.reader.read(65536))

    async def _request(self, head: h11.Request) -> Request | None:
        # h11 bounds a head that arrives in pieces; one that arrives whole is measured here.
        size = len(head.method) + len(head.target) + sum(len(k) + len(v) + 4 for k, v in head.headers)
        if size > self.limits.head:
            refusal = self.server.refuse(431, f"the request head is over {self.limits.head} bytes")
            await self._respond(refusal, close=True)
            return None
        body = bytearray()
        too_large = self.server.refuse(413, f"the request body is over {self.limits.body} bytes")
        length = dict(head.headers).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.limits.body:
            await self._respond(too_large, close=True)  # refused before a byte of it is read
            await self._discard()
            return None
        while True:
            event = await self._next(self.limits.head_timeout)
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.limits.body:
                    await self._respond(too_large, close=True)
                    await self._discard()
                    return None
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                break
            else:
                return None
        headers = [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in head.headers]
        return Request(
            head.method.decode("ascii"),
            head.target.decode("latin-1"),
            headers,
            bytes(body),
            self.writer.get_extra_info("peercert") or None,
        )

    async def _discard(self) -> None:
        """Read what a refused client still sends (bounded), so that it reads the refusal instead
        of meeting a reset while it writes; then the connection closes."""
        left = 8 * self.limits.body
        with contextlib.suppress(TimeoutError, OSError, ssl.SSLError):
            async with asyncio.timeout(self.limits.head_timeout):
                while left > 0 and (data := await self.reader.read(65536)):
                    left -= len(data)

    async def _send(self, *events: h11.Event) -> None:
        for event in events:
            data = self.h11.send(event)
            if data:
                self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), self.limits.write_timeout)

    async def _respond(self, response: Response, *, close: bool = False) -> None:
        """Send a whole response; ``close`` says the connection ends after it (a refusal), so that
        the client does not send its next request down a connection the server is closing."""
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            *response.headers,
            *([("Connection", "close")] if close else []),
        ]
        await self._send(h11.Response(status_code=response.status, headers=headers))
        await self._send(h11.Data(data=response.body), h11.EndOfMessage())

    async def _stream(self, stream: Stream) -> None:
        await self._send(
            h11.Response(
                status_code=stream.status,
                headers=[("Content-Type", stream.content_type), ("Transfer-Encoding", "chunked")],
            )
        )
        # The client sends nothing while it reads a stream: EOF (or any byte) means it went away.
        gone = asyncio.ensure_future(self.reader.read(1))
        try:
            while True:
                chunk = asyncio.ensure_future(anext(stream.chunks, None))
                await asyncio.wait({chunk, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not chunk.done():
                    chunk.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await chunk
                    return  # the body is unfinished, so the connection closes
                data = chunk.result()
                if data is None:
                    break
                await self._send(h11.Data(data=data))
            await self._send(h11.EndOfMessage())
        finally:
            if gone.done():
                if not gone.cancelled() and gone.exception() is None and gone.result():
                    self.h11.receive_data(gone.result())  # the next request's first byte
            else:
                gone.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await gone
            await stream.chunks.aclose()

    async def _upgrade(self, request: Request, upgrade: Upgrade) -> None:
        key = request.header("sec-websocket-key") or ""
        headers = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", accept_key(key)),
            ("Sec-WebSocket-Protocol", upgrade.subprotocol),
        ]
        await self._send(h11.InformationalResponse(status_code=101, headers=headers))
        socket = WebSocket(self.reader, self.writer, upgrade.subprotocol, self.limits)
        trailing, _ = self.h11.trailing_data
        if trailing:
            socket.feed(trailing)
        await upgrade.run(socket)
