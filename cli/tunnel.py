"""The CLI's end of the tunnel: a loopback listener whose connections go through the broker.

Every local connection (psql, mysql, a script) gets its own TLS connection to the broker's
``/v1/tunnel`` endpoint (a WebSocket upgrade, so it passes through load balancers), carrying the
access token and the grant id. The broker checks both and connects to the target the policy
names. Bytes are relayed with ``shared.relay``; the broker's close frame says why a connection
ended (the grant expired, was revoked, ...), and the listener stops when the grant has ended.

This module imports nothing from ``access.broker``: the CLI may be installed on its own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from access.shared.relay import FramedRelay, RawPeer
from access.shared.wsframe import GRANT_ENDED_CODES, accept_key

__all__ = [
    "BrokerEndpoint",
    "ClientRelay",
    "Forwarder",
    "HandshakeRefused",
    "TunnelEnded",
    "open_tunnel",
]

HANDSHAKE_TIMEOUT = 15.0
MAX_RESPONSE = 64 * 1024
TOKEN_CACHE_SECONDS = 30.0


class HandshakeRefused(Exception):
    """The broker answered the upgrade with an error (its JSON body, when it sent one)."""

    def __init__(self, status: int, code: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.hint = hint

    @property
    def grant_ended(self) -> bool:
        """No later connection can succeed with this grant (expired, revoked, not ours, gone)."""
        return self.code in ("expired", "forbidden", "grant_denied", "not_found")


@dataclass(frozen=True)
class TunnelEnded:
    """Why the listener stopped: the grant ended (``code`` from the close frame or the refusal)."""

    message: str
    code: str  # "expired" | "revoked" | "locked" | "forbidden" | ...


@dataclass
class BrokerEndpoint:
    """Where and how to reach the broker's tunnel endpoint."""

    base_url: str
    grant_id: str
    token: Callable[[], str]  # may block (a refresh): called in a worker thread
    ssl_context: ssl.SSLContext | None = None
    _cached: tuple[str, float] | None = field(default=None, repr=False)

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).hostname or "localhost"

    @property
    def port(self) -> int:
        parts = urlsplit(self.base_url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def tls(self) -> bool:
        return urlsplit(self.base_url).scheme == "https"

    @property
    def path(self) -> str:
        prefix = urlsplit(self.base_url).path.rstrip("/")
        return f"{prefix}/v1/tunnel?grant={self.grant_id}"

    async def access_token(self, *, fresh: bool = False) -> str:
        now = time.monotonic()
        if not fresh and self._cached is not None and now - self._cached[1] < TOKEN_CACHE_SECONDS:
            return self._cached[0]
        token = await asyncio.to_thread(self.token)
        self._cached = (token, now)
        return token


class ClientRelay(FramedRelay):
    """The CLI's connection to the broker: handshake, then frames <-> the local connection."""

    client = True
    framed_closed = "broker closed"
    raw_closed = "client closed"

    def __init__(self, on_finished: Callable[[ClientRelay], None] | None = None) -> None:
        super().__init__()
        self.response: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.expected_accept = ""
        self.early = b""
        self._buffer = b""
        self._on_finished = on_finished

    def data_received(self, data: bytes) -> None:
        if self.open:
            self.relay_frames(data)
            return
        if self.response.done():
            self.early += data  # after our 101, before the relay starts: keep it for the relay
            return
        self._buffer += data
        head, sep, rest = self._buffer.partition(b"\r\n\r\n")
        if not sep:
            if len(self._buffer) > MAX_RESPONSE:
                self.response.set_exception(ConnectionError("the broker's answer is too large"))
            return
        status, headers = _parse_head(head)
        if status == 101:
            if headers.get("sec-websocket-accept") != self.expected_accept:
                self.response.set_exception(ConnectionError("the broker's WebSocket answer is not valid"))
                return
            assert self.transport is not None
            self.transport.pause_reading()  # until the relay starts
            self.response.set_result(rest)
            return
        length = int(headers.get("content-length", "0") or 0)
        if len(rest) < min(length, MAX_RESPONSE):
            return  # the body is still coming
        self.response.set_exception(_refusal(status, rest[:length]))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.response.done():
            self.response.set_exception(
                ConnectionError("the broker closed the connection during the handshake")
            )
        super().connection_lost(exc)

    def peer_closed_message(self) -> str:
        return "the local client closed the connection"

    def finished(self) -> None:
        if self._on_finished is not None:
            self._on_finished(self)


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        status = 0
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers


def _refusal(status: int, body: bytes) -> HandshakeRefused:
    try:
        error = json.loads(body)["error"]
        return HandshakeRefused(status, str(error["code"]), str(error["message"]), error.get("hint"))
    except (ValueError, KeyError, TypeError):
        return HandshakeRefused(status, "internal", f"the broker refused the tunnel (HTTP {status})")


async def open_tunnel(
    endpoint: BrokerEndpoint,
    local: asyncio.Transport,
    *,
    on_finished: Callable[[ClientRelay], None] | None = None,
    fresh_token: bool = False,
) -> ClientRelay:
    """Connect to the broker, upgrade, and start relaying ``local`` through it.

    Raises:
        HandshakeRefused: the broker said no (bad token, grant ended, target unreachable).
        OSError / ConnectionError / TimeoutError: the broker could not be reached.
    """
    loop = asyncio.get_running_loop()
    token = await endpoint.access_token(fresh=fresh_token)
    relay = ClientRelay(on_finished)
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    relay.expected_accept = accept_key(key)
    transport, _ = await asyncio.wait_for(
        loop.create_connection(
            lambda: relay,
            endpoint.host,
            endpoint.port,
            ssl=endpoint.ssl_context if endpoint.tls else None,
            server_hostname=endpoint.host if endpoint.tls else None,
        ),
        HANDSHAKE_TIMEOUT,
    )
    host = endpoint.host if endpoint.port in (80, 443) else f"{endpoint.host}:{endpoint.port}"
    transport.write(
        (
            f"GET {endpoint.path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n"
            "User-Agent: access-cli\r\n\r\n"
        ).encode("latin-1")
    )
    try:
        rest = await asyncio.wait_for(relay.response, HANDSHAKE_TIMEOUT)
    except BaseException:
        transport.abort()
        raise
    relay.start_relay(local)
    early = rest + relay.early
    relay.early = b""
    if early:
        relay.relay_frames(early)
    return relay


class _LocalConnection(RawPeer):
    __slots__ = ("forwarder", "task")

    def __init__(self, forwarder: Forwarder) -> None:
        super().__init__()
        self.forwarder = forwarder
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # paused until the tunnel is open
        self.task = asyncio.get_running_loop().create_task(self.forwarder.attach(self))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.relay is None and self.task is not None:
            self.task.cancel()
        super().connection_lost(exc)


class Forwarder:
    """A loopback listener whose every connection is tunnelled through the broker.

    ``report`` receives one-line messages for the person (refusals, cuts). ``ended`` resolves
    when the grant has ended, as the broker said in a close frame or a refusal.
    """

    def __init__(
        self,
        endpoint: BrokerEndpoint,
        *,
        port: int = 0,
        report: Callable[[str], None] = lambda _message: None,
    ) -> None:
        self.endpoint = endpoint
        self.port = port
        self.report = report
        self.relays: set[ClientRelay] = set()
        self.ended: asyncio.Future[TunnelEnded] = asyncio.get_running_loop().create_future()
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> tuple[str, int]:
        """Listen on 127.0.0.1 (loopback only: the tunnel is the grant holder's, nobody else's)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _LocalConnection(self), "127.0.0.1", self.port)
        sockname = self._server.sockets[0].getsockname()
        self.port = int(sockname[1])
        return "127.0.0.1", self.port

    async def attach(self, local: _LocalConnection) -> None:
        transport = local.transport
        assert transport is not None
        self.connections += 1
        relay: ClientRelay | None = None
        for attempt in range(2):
            try:
                relay = await open_tunnel(
                    self.endpoint, transport, on_finished=self._finished, fresh_token=attempt > 0
                )
                break
            except HandshakeRefused as exc:
                if exc.code == "unauthenticated" and attempt == 0:
                    continue  # the cached token may have been revoked or refreshed: once more
                self.report(exc.message + (f" ({exc.hint})" if exc.hint else ""))
                if exc.grant_ended:
                    self._end(TunnelEnded(exc.message, exc.code))
            except (OSError, TimeoutError) as exc:
                self.report(
                    f"cannot reach the broker at {self.endpoint.base_url}: {exc or type(exc).__name__}"
                )
            break
        if relay is None:
            transport.close()
            return
        local.relay = relay
        self.relays.add(relay)

    def _finished(self, relay: ClientRelay) -> None:
        self.relays.discard(relay)
        if relay.remote_close is None:
            if relay.why == "error":
                self.report("the connection to the broker was lost")
            return
        code, reason = relay.remote_close
        if code in GRANT_ENDED_CODES:
            self.report(reason)
            self._end(TunnelEnded(reason, {4010: "expired", 4011: "revoked"}.get(code, "locked")))
        elif code not in (1000, 1005) and reason:
            self.report(f"the broker closed a connection: {reason}")

    def _end(self, ended: TunnelEnded) -> None:
        if not self.ended.done():
            self.ended.set_result(ended)

    async def aclose(self) -> None:
        """Stop listening and drop every live connection."""
        if self._server is not None:
            self._server.close()
        for relay in list(self.relays):
            if relay.transport is not None:
                relay.transport.abort()
            if relay.peer is not None:
                relay.peer.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
