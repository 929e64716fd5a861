"""The CLI's end of the tunnel: a loopback listener whose connections go through the broker.

The listener holds one TLS connection to the broker's ``/v1/tunnel`` endpoint (a WebSocket
upgrade, so it passes through load balancers), opened with the access token and the grant id.
With ``hold=True`` (``access connect`` and ``exec``) it is opened at once and kept open, reopened
after a loss, whether local connections are open or not: the broker's close frame for an end
(the grant expired or was revoked, the account locked, the sign-in session ended) then reaches
an idle listener too, within the broker's cut window. Without it, the first local connection
opens it. Every local connection (psql, mysql, a script) is a channel of it (``shared.mux``): the
broker checks the grant again and connects to the target the policy names. The listener stops
when the grant has ended. If the connection to the broker is lost, its channels are dropped
(fail closed) and a new connection is opened (at once when held, else by the next local one).

This module imports nothing from ``access.broker``: the CLI may be installed on its own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from access.cli.errors import CliError, NeedsLogin
from access.shared.closecodes import ended_why
from access.shared.httphead import HeadError, parse_response_head, split_head
from access.shared.mux import Channel, MuxSession
from access.shared.muxframe import MAX_CHANNELS, OPEN, SUBPROTOCOL
from access.shared.wsframe import CLOSE_GOING_AWAY, CLOSE_NORMAL, GRANT_ENDED_CODES, accept_key

if TYPE_CHECKING:
    from access.cli.localtls import LocalTls

LOCAL_HEAD_MAX = 64 * 1024  # a local connection's first request head (kubernetes), at most
LOCAL_HEAD_TIMEOUT = 10.0  # ... arriving within this

__all__ = [
    "BrokerEndpoint",
    "ClientSession",
    "Forwarder",
    "GatedChannel",
    "HandshakeRefused",
    "TunnelEnded",
]

HANDSHAKE_TIMEOUT = 15.0
MAX_RESPONSE = 64 * 1024
TOKEN_CACHE_SECONDS = 30.0
# A held connection that could not be (re)opened is tried again after this, doubling up to the cap.
HOLD_RETRY = 0.5
HOLD_RETRY_MAX = 10.0


class HandshakeRefused(CliError):
    """The broker answered the upgrade with an error (its JSON body, when it sent one)."""

    code: str  # the broker's wire code: always known here ("internal" when the body was not JSON)

    def __init__(self, status: int, code: str, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint, code=code)
        self.status = status

    @property
    def grant_ended(self) -> bool:
        """No later connection can succeed with this grant (expired, revoked, not ours, gone)."""
        return self.code in GRANT_ENDED


@dataclass(frozen=True)
class TunnelEnded:
    """Why the listener stopped: the grant ended (``code`` from the close frame or the refusal)."""

    message: str
    code: str  # "expired" | "revoked" | "locked" | "signed out" | "forbidden" | ...


@dataclass
class BrokerEndpoint:
    """Where and how to reach the broker's tunnel endpoint."""

    base_url: str
    grant_id: str
    # The access token; True: the broker refused the last one, refresh. May block: a worker thread.
    token: Callable[[bool], str]
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
        token = await asyncio.to_thread(self.token, fresh)
        self._cached = (token, now)
        return token


class ClientSession(MuxSession):
    """The CLI's WebSocket to the broker: the handshake, then local connections as channels."""

    def __init__(self, forwarder: Forwarder) -> None:
        super().__init__(client=True)
        self.forwarder = forwarder
        self.ready = False  # the handshake succeeded: channels can open
        self.failed = False  # the handshake failed: this session will never be ready
        self.pending: list[LocalChannel] = []  # waiting for the handshake
        self.handed_over: ClientSession | None = None  # the retry that took over from this one
        self.draining = False  # the broker is stopping: no new channels here (DRAIN)
        self.cut_at_close = 0  # channels still open when the WebSocket closed
        loop = asyncio.get_running_loop()
        self.gone: asyncio.Future[None] = loop.create_future()
        self.settled: asyncio.Future[None] = loop.create_future()  # ready, or failed
        self._next_id = 1
        self._expected_accept = ""
        self._response: asyncio.Future[bytes] | None = None
        self._buffer = b""

    @property
    def usable(self) -> bool:
        return not (self.failed or self._lost or self._close_sent or self.draining)

    # -- the handshake ---------------------------------------------------------------------

    async def connect(self, endpoint: BrokerEndpoint, *, fresh_token: bool = False) -> None:
        """Connect to the broker and upgrade; then open the channels waiting for it.

        Raises:
            HandshakeRefused: the broker said no (bad token, grant ended, ...).
            OSError / ConnectionError / TimeoutError: the broker could not be reached.
        """
        loop = asyncio.get_running_loop()
        token = await endpoint.access_token(fresh=fresh_token)
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        self._expected_accept = accept_key(key)
        self._response = loop.create_future()
        transport, _ = await asyncio.wait_for(
            loop.create_connection(
                lambda: self,
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
                f"GET {endpoint.path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\nAuthorization: Bearer {token}\r\n"
                "User-Agent: access-cli\r\n\r\n"
            ).encode("latin-1")
        )
        try:
            rest = await asyncio.wait_for(self._response, HANDSHAKE_TIMEOUT)
        except BaseException:
            transport.abort()
            raise
        self.ready = True
        self._settle()
        self.start(rest)
        transport.resume_reading()
        pending, self.pending = self.pending, []
        for channel in pending:
            if channel.why is None:
                self._open(channel)

    def handshake_received(self, data: bytes) -> None:
        response = self._response
        if response is None or response.done():
            return
        self._buffer += data
        try:
            split = split_head(self._buffer, MAX_RESPONSE)
        except HeadError:
            response.set_exception(ConnectionError("the broker's answer is too large"))
            return
        if split is None:
            return
        rest = split[1]
        parsed = parse_response_head(split[0])
        status, headers = parsed.status, parsed.headers
        if status == 101:
            if headers.get("sec-websocket-accept") != self._expected_accept:
                response.set_exception(ConnectionError("the broker's WebSocket answer is not valid"))
            elif headers.get("sec-websocket-protocol") != SUBPROTOCOL:
                response.set_exception(
                    ConnectionError(f"the broker does not speak {SUBPROTOCOL}: upgrade the broker or the CLI")
                )
            else:
                assert self.transport is not None
                self.transport.pause_reading()  # until start()
                response.set_result(rest)
            return
        length = int(headers.get("content-length", "0") or 0)
        if len(rest) < min(length, MAX_RESPONSE):
            return  # the body is still coming
        response.set_exception(_refusal(status, rest[:length]))

    # -- channels --------------------------------------------------------------------------

    def attach(self, channel: LocalChannel) -> None:
        """A new local connection: open it as a channel now, or once the handshake is done."""
        self.adopt(channel)
        if self.ready and self.open:
            self._open(channel)
        else:
            self.pending.append(channel)

    def _open(self, channel: LocalChannel) -> None:
        channel.id = self._next_id
        self._next_id += 1
        self.add_channel(channel)
        self.send(OPEN, channel.id)

    def on_open_ok(self, channel: Channel) -> None:
        channel.activate()

    def on_open_fail(self, channel: Channel, error: dict[str, Any]) -> None:
        channel.end("refused", flush=False)
        message = str(error.get("message", "the broker refused the connection"))
        hint = error.get("hint")
        self.forwarder.report(message + (f" ({hint})" if hint else ""))
        if str(error.get("code")) in GRANT_ENDED:
            self.forwarder.end(TunnelEnded(message, str(error.get("code"))))

    def on_drain(self, seconds: int) -> None:
        """The broker is stopping: new local connections go through a new WebSocket (behind a
        load balancer, to another replica); the open ones go on for at most ``seconds``."""
        self.draining = True
        self.forwarder.drained(self, seconds)

    def close(self, code: int, reason: str, *, why: str) -> None:
        if self.cut_at_close == 0:
            self.cut_at_close = len(self.channels)
        if self.remote_close is not None and self.remote_close[0] in GRANT_ENDED_CODES:
            # Known before the channels are cut below: a program that exits the moment its
            # connection closes (kubectl get -w exits 0) must still find the end decided.
            ended_code, ended_reason = self.remote_close
            self.forwarder.end(TunnelEnded(ended_reason, ended_why(ended_code) or "locked"))
        super().close(code, reason, why=why)

    def channel_finished(self, channel: Channel) -> None:
        if channel in self.pending:
            self.pending.remove(channel)
        if self.live_channels == 0 and self.forwarder.session is not self and self.open and not self.draining:
            # A WebSocket opened beside a full one, now empty: new connections go elsewhere.
            self.close(CLOSE_NORMAL, "no connections left", why="client closed")

    def _settle(self) -> None:
        if not self.settled.done():
            self.settled.set_result(None)

    def fail(self) -> None:
        """The handshake failed: drop the local connections that waited for it."""
        self.failed = True
        self._settle()
        pending, self.pending = self.pending, []
        for channel in pending:
            channel.end("error", flush=False)
        if self.transport is not None:
            self.transport.abort()

    def hand_over(self, other: ClientSession) -> None:
        """Give the local connections waiting for this session to ``other`` (a retry)."""
        self.failed = True
        self.handed_over = other
        self._settle()
        pending, self.pending = self.pending, []
        for channel in pending:
            if channel.why is None:
                self.release(channel)
                channel.session = other
                other.attach(channel)
        if self.transport is not None:
            self.transport.abort()

    # -- the end ---------------------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        was_open = self.open
        if self._response is not None and not self._response.done():
            self._response.set_exception(
                ConnectionError("the broker closed the connection during the handshake")
            )
        super().connection_lost(exc)
        if not self.gone.done():
            self.gone.set_result(None)
        self.forwarder.session_lost(self, was_open or self.remote_close is not None)


class LocalChannel(Channel):
    """A connection to the local listener, carried as a channel of a ``ClientSession``."""

    __slots__ = ()

    session: ClientSession

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # paused until the broker accepts the channel
        self.session.attach(self)


class GatedChannel(LocalChannel):
    """A local connection that becomes a channel only once its first request head has the token."""

    __slots__ = ("forwarder", "gate", "head", "passed", "timer")

    def __init__(self, forwarder: Forwarder, gate: LocalTls) -> None:
        super().__init__(forwarder._current())
        self.forwarder = forwarder
        self.gate = gate
        self.head = b""
        self.passed = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Channel.connection_made(self, transport)  # not attached yet: no channel until the check
        assert self.transport is not None
        self.transport.resume_reading()
        self.timer = asyncio.get_running_loop().call_later(LOCAL_HEAD_TIMEOUT, self._reject)

    def data_received(self, data: bytes) -> None:
        if self.passed:
            super().data_received(data)
            return
        self.head += data
        try:
            split = split_head(self.head, LOCAL_HEAD_MAX)
        except HeadError:
            self._reject()
            return
        if split is None:
            return
        if not self.gate.admits(split[0]):
            self._reject()
            return
        self.passed = True
        self._stop_timer()
        head, self.head = self.head, b""
        self.session = self.forwarder._current()  # the one live now (it may have been replaced)
        self.session.attach(self)
        Channel.data_received(self, head)  # held, reading paused, until the broker opens the channel

    def _reject(self) -> None:
        self._stop_timer()
        if not self.passed and self.transport is not None and not self.transport.is_closing():
            from access.cli.localtls import unauthorized

            self.transport.write(unauthorized())
            self.transport.close()

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        if self.passed:
            super().connection_lost(exc)
        # else: never a channel, nothing to tell the session


def _refusal(status: int, body: bytes) -> HandshakeRefused:
    try:
        error = json.loads(body)["error"]
        return HandshakeRefused(status, str(error["code"]), str(error["message"]), error.get("hint"))
    except (ValueError, KeyError, TypeError):
        return HandshakeRefused(status, "internal", f"the broker refused the tunnel (HTTP {status})")


class Forwarder:
    """A loopback listener whose every connection is tunnelled through the broker.

    ``report`` receives one-line messages for the person (refusals, cuts). ``ended`` resolves
    when the grant has ended, as the broker said in a close frame or a refusal. ``hold``: keep a
    connection to the broker open from :meth:`start` on, so that an end is heard while idle.
    """

    def __init__(
        self,
        endpoint: BrokerEndpoint,
        *,
        port: int = 0,
        report: Callable[[str], None] = lambda _message: None,
        hold: bool = False,
        local_tls: LocalTls | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.port = port
        self.report = report
        self.hold = hold
        # kubernetes: the listener serves TLS and admits a connection only with the run's token.
        self.local_tls = local_tls
        self.session: ClientSession | None = None  # the one new connections join
        self.sessions: set[ClientSession] = set()
        self.ended: asyncio.Future[TunnelEnded] = asyncio.get_running_loop().create_future()
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self, sock: socket.socket | None = None) -> tuple[str, int]:
        """Listen on 127.0.0.1 (loopback only: the tunnel is the grant holder's, nobody else's).

        ``sock``: a socket already listening on 127.0.0.1, to serve instead of binding ``port``.
        """
        loop = asyncio.get_running_loop()
        tls = None if self.local_tls is None else self.local_tls.context
        if sock is not None:
            self._server = await loop.create_server(self._accept, sock=sock, ssl=tls)
        else:
            self._server = await loop.create_server(self._accept, "127.0.0.1", self.port, ssl=tls)
        sockname = self._server.sockets[0].getsockname()
        self.port = int(sockname[1])
        if self.hold:
            self._spawn(self._hold())
        return "127.0.0.1", self.port

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hold(self) -> None:
        """Keep a connection to the broker open until the grant ends or we close.

        A lost connection is reopened at once, then after ``HOLD_RETRY`` doubling up to
        ``HOLD_RETRY_MAX`` while it cannot be; only the first failure of a run is reported.
        """
        delay = HOLD_RETRY
        quiet = False
        while not (self._closing or self.ended.done()):
            session = self._current(quiet=quiet)
            # Shielded: cancelling this task (aclose) must not cancel the session's own futures.
            await asyncio.shield(session.settled)
            if session.handed_over is not None:
                continue  # retried with a fresh token: that one is self.session now
            if session.ready:
                delay, quiet = HOLD_RETRY, False
                await asyncio.shield(session.gone)
                continue
            quiet = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, HOLD_RETRY_MAX)

    def _accept(self) -> LocalChannel:
        self.connections += 1
        if self.local_tls is not None:
            return GatedChannel(self, self.local_tls)
        return LocalChannel(self._current())

    def _current(self, *, quiet: bool = False) -> ClientSession:
        """The WebSocket new connections join: a new one when there is none that can take them,
        also when this one carries the protocol's ``MAX_CHANNELS`` (the older ones keep theirs)."""
        session = self.session
        if session is None or not session.usable or session.live_channels >= MAX_CHANNELS:
            session = self.session = self._new_session()
            self._spawn(self._connect(session, quiet=quiet))
        return session

    def _new_session(self) -> ClientSession:
        session = ClientSession(self)
        self.sessions.add(session)
        return session

    async def _connect(self, session: ClientSession, *, quiet: bool = False) -> None:
        """Open ``session``; report a failure unless ``quiet`` (a held connection's retries)."""
        for attempt in range(2):
            try:
                await session.connect(self.endpoint, fresh_token=attempt > 0)
                return
            except HandshakeRefused as exc:
                if exc.code == "unauthenticated" and attempt == 0:
                    # The cached token may have been revoked or refreshed: once more, afresh.
                    retry = self._new_session()
                    if self.session is session:
                        self.session = retry
                    self.sessions.discard(session)
                    session.hand_over(retry)
                    session = retry
                    continue
                if exc.grant_ended:
                    self.report(exc.message + (f" ({exc.hint})" if exc.hint else ""))
                    self.end(TunnelEnded(exc.message, exc.code))
                elif exc.code == "unauthenticated" and self.hold:
                    # Refused with a fresh token as well: the sign-in session behind it is over.
                    self.report(exc.message + (f" ({exc.hint})" if exc.hint else ""))
                    self.end(TunnelEnded(exc.message, "signed out"))
                elif not quiet:
                    self.report(exc.message + (f" ({exc.hint})" if exc.hint else ""))
            except (OSError, TimeoutError) as exc:
                if not quiet:
                    self.report(
                        f"cannot reach the broker at {self.endpoint.base_url}: {exc or type(exc).__name__}"
                    )
            except CliError as exc:  # no token to be had: a refresh refused (signed out), or unreachable
                signed_out = isinstance(exc, NeedsLogin)
                if signed_out or not quiet:
                    self.report(exc.message + (f" ({exc.hint})" if exc.hint else ""))
                if signed_out and self.hold:
                    self.end(TunnelEnded(exc.message, "signed out"))
            break
        self.sessions.discard(session)
        if self.session is session:
            self.session = None
        session.fail()

    def drained(self, session: ClientSession, seconds: int) -> None:
        """``session``'s broker is stopping: the next connection (at once, when held) opens a new
        WebSocket to the same URL."""
        if self.session is session:
            self.session = None
        if session.live_channels:
            self.report(
                f"the broker is restarting: {session.live_channels} open connection(s) go on for up to "
                f"{seconds} s; new ones go through a new connection to {self.endpoint.base_url}"
            )
        if self.hold and not (self._closing or self.ended.done()):
            self._current()

    def session_lost(self, session: ClientSession, relayed: bool) -> None:
        """``session``'s connection to the broker is gone; say why if it had been working."""
        self.sessions.discard(session)
        if self.session is session:
            self.session = None
        if not relayed or self._closing:
            return
        if session.draining and (session.remote_close is None or session.remote_close[0] == CLOSE_GOING_AWAY):
            # The drained broker stopped: what still ran through it is cut; the rest already moved.
            if session.cut_at_close:
                self.report(
                    f"the broker stopped: {session.cut_at_close} connection(s) still open through it "
                    "were cut; new ones go through another"
                )
            return
        if session.remote_close is None:
            if session.why == "error" or session.live_channels:
                self.report("the connection to the broker was lost")
            return
        code, reason = session.remote_close
        if code in GRANT_ENDED_CODES:
            self.report(reason)  # the end itself was decided when the close frame came (``close``)
        elif code not in (1000, 1005) and reason:
            self.report(f"the broker closed the tunnel: {reason}")

    def end(self, ended: TunnelEnded) -> None:
        if not self.ended.done():
            self.ended.set_result(ended)

    async def aclose(self) -> None:
        """Stop listening, drop every live connection and say goodbye to the broker."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        sessions = list(self.sessions)
        for session in sessions:
            for channel in session.pending:
                channel.end("client closed", flush=False)
            session.close(CLOSE_NORMAL, "the access CLI stopped", why="client closed")
        waits = [session.gone for session in sessions if session.transport is not None]
        if waits:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*waits), 2)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)


GRANT_ENDED = frozenset({"expired", "forbidden", "grant_denied", "locked", "not_found"})
