"""The broker's end of the tunnel: a WebSocket upgrade on ``/v1/tunnel``, its channels relayed to the target.

uvicorn hands an ``Upgrade: websocket`` request on ``/v1/tunnel`` to ``TunnelProtocol``
(``server.BrokerHttpProtocol`` picks it, once per connection) with the request head
re-serialised. The connection never touches ASGI:

1. parse the head (``GET /v1/tunnel?grant=ID``, ``Authorization: Bearer``, WebSocket key, the
   ``access-tunnel.v2`` subprotocol);
2. stop reading, and in a worker thread verify the token and the grant. Any failure is answered
   with the broker's JSON error body and the connection closed; otherwise ``101``;
3. for each channel the CLI opens (``shared.muxframe``), in a worker thread: check again that
   the sign-in session and the grant are live, write ``connection.open`` (fail closed), then
   connect to the target the policy names (never one the client names) and answer ``OPEN_OK``;
   a failure is an ``OPEN_FAIL`` carrying the JSON error, and not one byte reaches the target;
4. relay (``shared.mux``) until a side closes or the grant ends, then write each channel's
   ``connection.close`` (bytes each way, duration, why) from a worker thread; one that cannot
   be written now is written later (``tunnel.closes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import math
import re
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from access.broker.audit.actions import Action
from access.broker.audit.statements import statement_log_for
from access.broker.errors import (
    BrokerError,
    Expired,
    Forbidden,
    HeadTooLarge,
    InvalidRequest,
    NotFound,
    RateLimited,
    TargetUnreachable,
    Unauthenticated,
)
from access.broker.kinds.login import LOGIN_KINDS, TargetTls, target_login, target_tls
from access.broker.observe.metrics import metrics_for
from access.broker.observe.requests import REQUEST_ID_HEADER, new_request_id
from access.broker.tunnel import cancels, wired
from access.broker.tunnel.closes import pending_for
from access.broker.tunnel.limits import limits_for
from access.broker.tunnel.registry import registry_for
from access.broker.tunnel.target import TargetChannel
from access.broker.wire import mysql as mywire
from access.broker.wire import postgres as pgwire
from access.broker.wire.base import Handshake, Statement, TargetLogin, WireError
from access.shared.closecodes import grant_ended_close
from access.shared.httphead import HeadError, parse_request_head, split_head
from access.shared.mux import Channel, MuxSession, error_payload
from access.shared.muxframe import DRAIN, OPEN_FAIL, OPEN_OK, SUBPROTOCOL
from access.shared.net import forwarded_client
from access.shared.wsframe import CLOSE_GOING_AWAY, CLOSE_PROTOCOL, ProtocolError, accept_key

if TYPE_CHECKING:
    from access.broker.auth.principal import AuthContext
    from access.broker.grants import TunnelGrant
    from access.broker.runtime import Broker

__all__ = [
    "CHANNEL_KINDS",
    "CONNECT_TIMEOUT",
    "TUNNEL_PATH",
    "StatementSink",
    "TunnelProtocol",
    "TunnelRequest",
    "WireChannel",
    "parse_request",
]

log = logging.getLogger(__name__)
# One line per tunnel opened, cut and closed, and per channel closed (never per frame).
events = logging.getLogger("access.broker.tunnel.events")

TUNNEL_PATH = "/v1/tunnel"
CONNECT_TIMEOUT = 5.0
_SSL_REQUEST = (8).to_bytes(4, "big") + pgwire.SSL_REQUEST.to_bytes(4, "big")
# Called with each batch of statements a channel's tap recorded, before the chunk is forwarded;
# False (the statement log is full or cannot be written) ends the channel: fail closed.
StatementSink = Callable[["BrokerChannel", list[Statement]], bool]
_GRANT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Channel classes of kinds that are neither relayed as bytes (tcp) nor logged in to (LOGIN_KINDS),
# registered by their room (``access.broker.kube.channel``: kubernetes). A kind with neither is
# refused at each open: never relayed as raw bytes.
CHANNEL_KINDS: dict[str, Callable[[TunnelProtocol, int], BrokerChannel]] = {}


@dataclass(frozen=True)
class TunnelRequest:
    grant_id: str
    token: str
    key: str
    forwarded_for: str = ""


def parse_request(head: bytes) -> TunnelRequest:
    """Check an upgrade request's head and pull out what the tunnel needs.

    Raises:
        NotFound: not ``/v1/tunnel``.
        InvalidRequest: not a usable WebSocket upgrade, or no/bad ``grant`` parameter.
        Unauthenticated: no bearer token.
    """
    parsed = parse_request_head(head)
    method, headers = parsed.method, parsed.headers
    url = urlsplit(parsed.target)
    if url.path != TUNNEL_PATH:
        raise NotFound("no such endpoint")
    if method != "GET":
        raise InvalidRequest("the tunnel endpoint takes GET")
    if headers.get("sec-websocket-version") != "13" or not headers.get("sec-websocket-key"):
        raise InvalidRequest("the tunnel endpoint needs a WebSocket (version 13) upgrade")
    offered = {p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")}
    if SUBPROTOCOL not in offered:
        raise InvalidRequest(
            f"this broker's tunnel speaks {SUBPROTOCOL}",
            hint="install the access CLI of the broker's version",
        )
    grants = parse_qs(url.query).get("grant", [])
    if len(grants) != 1 or not _GRANT_ID.fullmatch(grants[0]):
        raise InvalidRequest("give exactly one grant id: /v1/tunnel?grant=ID", hint="see `access grants`")
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the tunnel needs a bearer token")
    return TunnelRequest(
        grant_id=grants[0],
        token=token.strip(),
        key=headers["sec-websocket-key"],
        forwarded_for=headers.get("x-forwarded-for", ""),
    )


def http_error(error: BrokerError, request_id: str | None = None) -> bytes:
    """A complete HTTP/1.1 error response carrying the broker's JSON error body (and
    ``X-Request-Id``: ``request_id``, else a new one)."""
    body = json.dumps(error.body()).encode()
    phrase = http.HTTPStatus(error.status).phrase
    head = (
        f"HTTP/1.1 {error.status} {phrase}\r\n"
        "Content-Type: application/json\r\n"
        f"{REQUEST_ID_HEADER}: {request_id or new_request_id()}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class BrokerChannel(TargetChannel):
    """One channel: the connection to the target, and what its audit entries need."""

    __slots__ = ("connection_id", "counted", "error", "live", "opened", "target_tls")

    def __init__(self, session: TunnelProtocol, channel_id: int) -> None:
        super().__init__(session, channel_id)
        self.connection_id = "c-" + secrets.token_hex(8)
        self.opened = False  # connection.open was written: connection.close must follow
        self.counted = False  # counted against its user's channels (limits)
        self.live = False  # agreed to (OPEN_OK): counted in access_channels_open
        self.error: str | None = None
        self.target_tls = TargetTls("disable")  # how ``_connect`` dials the target

    # Hooks for a kind's channel class (``CHANNEL_KINDS``); the base relays bytes only.

    def prepare(self) -> None:
        """Worker thread, after ``connection.open``: read what the kind needs (files, secrets),
        set ``target_tls``. Raises BrokerError to refuse the channel."""

    def finishing(self, details: dict[str, Any]) -> None:
        """The channel is over: add what the kind knows to its ``connection.close`` ``details``."""


class WireChannel(BrokerChannel):
    """A channel to a target the broker logs in to (postgres, mysql, redis: ``wired``).

    The kind's ``Handshake`` runs from the target's connection on: the client's DATA goes to
    ``feed_client``, the target's bytes to ``feed_target``, and what the machine has for either
    leg is sent on (to the client only once the channel is open, within its send window). Once
    done, the relay is ``TargetChannel``'s (compiled): each client chunk goes through the ``Tap``
    first, and its statements to the statement log (``TargetChannel.hand_off``). A ``WireError``
    (a refused login, a refused command such as Redis ``AUTH``, a malformed stream) sends its
    ``client_message`` and closes both legs, audited as ``why: refused``. The login is bounded
    by ``settings.tunnel_login_timeout``. A channel without a login is a plain ``BrokerChannel``:
    none of this is on its path.

    MySQL with ``options.tls``: the target's connection starts in clear; once the machine has
    sent its SSLRequest (``wants_tls``) the channel upgrades it (``_start_tls``) and the login
    goes on over TLS. A failed upgrade is the client's ERR, audited as ``why: refused``.
    """

    __slots__ = (
        "cancel",
        "deferred",
        "issued",
        "kind",
        "login",
        "machine",
        "pending",
        "shared",
        "timer",
        "tls",
    )

    def __init__(self, session: TunnelProtocol, channel_id: int, kind: str) -> None:
        super().__init__(session, channel_id)
        self.kind = kind
        self.login: TargetLogin | None = None  # set in the worker thread; never logged
        self.tls = TargetTls("disable")
        self.machine: Handshake | None = None  # None once the login is done
        self.login_running = True  # until the login is done: every byte goes to ``machine``
        self.issued: tuple[int, int] | None = None  # PostgreSQL: the key the client got
        self.timer: asyncio.TimerHandle | None = None
        self.cancel: str | None = None  # a CancelRequest channel: "forwarded" or why it was refused
        self.deferred: WireError | None = None  # a refusal met before the channel was open
        self.pending: asyncio.Task[None] | None = None  # MySQL's TLS start, or a cancel's lookup
        self.shared: asyncio.Future[bool] | None = None  # PostgreSQL: the store's copy of ``issued``

    def start_login(self) -> None:
        """Make the machines (before the target is dialled: uvloop may read it at once)."""
        assert self.login is not None
        if self.kind == "postgres":
            self.issued = cancels.cancels_for(self.session.broker).issue()  # type: ignore[attr-defined]
        tls = self.tls.mode != "disable"
        self.machine, recorder = wired.machines(self.kind, self.login, self.issued, tls=tls)
        self.set_tap(recorder)
        self.login = None
        loop = asyncio.get_running_loop()
        timeout: float = self.session.broker.settings.tunnel_login_timeout  # type: ignore[attr-defined]
        self.timer = loop.call_later(timeout, self._timed_out)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.machine is not None:
            self._run(self.machine.feed_target, b"")  # Redis: the broker's AUTH goes out now

    def connection_lost(self, exc: Exception | None) -> None:
        # A client ends with its protocol's goodbye (Terminate, COM_QUIT, QUIT) and then closes;
        # the server closes on it too, and its close can reach us first: the client ended it.
        tap = self.tap
        if exc is None and self.why is None and tap is not None and tap.terminated:
            self.why = "client closed"
        super().connection_lost(exc)

    # -- the login's bytes (``TargetChannel`` relays and taps the rest) ------------------------

    def target_login_bytes(self, data: bytes) -> None:
        assert self.machine is not None
        self._run(self.machine.feed_target, data)

    def client_login_bytes(self, data: bytes) -> None:
        machine = self.machine
        assert machine is not None
        self.consume(data)  # taken by the machine at once: the credit is due as for bytes that left
        session = self.session
        session.buffered += len(data)
        if session.buffered > session.mark:
            session.over_mark()
        self._run(machine.feed_client, data)
        if self.unacked >= self.ack_mark and not self.write_paused and self.transport is not None:
            self._ack()

    def tap_failed(self, exc: WireError) -> None:
        self.refuse(exc)

    def statements_tapped(self, batch: list[Statement]) -> bool:
        """The hand-off before ``log_side`` is set (the login had no grant or sign-in to
        record them under): the session's sink, which then refuses. Once logged in,
        ``TargetChannel.hand_off`` adds to the log's compiled side directly."""
        sink: StatementSink | None = self.session.statement_sink  # type: ignore[attr-defined]
        if sink is not None and not sink(self, batch):
            self.statements_refused()
            return False
        return True

    def statements_refused(self) -> None:
        message = "the broker cannot record this connection's statements now; try again shortly"
        self.refuse(WireError("the statement log refused a batch", wired.client_error(self.kind, message)))

    # -- the login -------------------------------------------------------------------------

    def _run(self, feed: Callable[[bytes], None], data: bytes) -> None:
        machine = self.machine
        assert machine is not None
        try:
            if data:
                feed(data)
            if isinstance(machine, pgwire.PostgresHandshake) and machine.cancel_request is not None:
                if self.pending is None:
                    self._cancel(machine.cancel_request)
                return
            out = machine.data_to_target()
            if out and self.transport is not None:
                self.transport.write(out)
            if isinstance(machine, mywire.MysqlHandshake) and machine.wants_tls and self.pending is None:
                self._begin_tls(machine)
            back = machine.data_to_client()
            if back:
                self._to_client(back)
            if machine.done:
                self._logged_in(machine)
        except WireError as exc:
            self.refuse(exc)

    def stop_timer(self) -> None:
        """The login is over (done, refused, or the channel ended): its deadline is moot."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _begin_tls(self, machine: mywire.MysqlHandshake) -> None:
        assert self.transport is not None
        self.transport.pause_reading()  # nothing the target sends now may be read in clear
        self.pending = asyncio.get_running_loop().create_task(self._start_tls(machine))

    async def _start_tls(self, machine: mywire.MysqlHandshake) -> None:
        """MySQL: the SSLRequest is out; upgrade the target's connection, then log in over TLS.

        While TLS starts the connection's protocol is a stand-in (``_Upgrading``), so its loss
        does not reach the channel from asyncio: this method ends the channel itself when the
        upgrade fails, and hands the stand-in over to the channel once it succeeds.
        """
        raw = self.transport
        session: TunnelProtocol = self.session  # type: ignore[assignment]
        grant = session.grant
        context = self.tls.context()
        if raw is None or self.why is not None or grant is None or context is None:
            return  # ended meanwhile: the plain connection is still the channel's, its loss ends it
        standin = _Upgrading()
        try:
            secure = await asyncio.get_running_loop().start_tls(
                raw, standin, context, server_hostname=grant.host, ssl_handshake_timeout=CONNECT_TIMEOUT
            )
        except Exception as exc:  # any failure to start TLS ends the channel (fail closed)
            reason = getattr(exc, "strerror", None) or str(exc) or repr(exc)
            self._tls_failed(machine, grant.service, reason, exc)
            return
        if secure is None or secure.is_closing() or standin.lost or not self.active:
            # Lost or ended while TLS started: asyncio and uvloop then wake start_tls with no error
            # (and no transport, or a closed one) and tell no protocol, so the channel ends here.
            if secure is not None:
                secure.abort()
            self._tls_failed(machine, grant.service, "the target closed the connection", standin.exc)
            return
        secure.set_protocol(self)
        standin.owner = self  # a loss already on its way to the stand-in goes on to the channel
        Channel.connection_made(self, secure)  # the channel's transport from now on; reading paused
        if not session.writing_paused:
            secure.resume_reading()
        try:
            machine.tls_started()
        except WireError as exc:
            self.refuse(exc)
            return
        self._run(machine.feed_target, standin.early)

    def _tls_failed(
        self, machine: mywire.MysqlHandshake, service: str, reason: str, exc: Exception | None
    ) -> None:
        """TLS did not start: the client is told (unless the channel already ended), then the
        channel ends, once (its connection's loss reached no protocol that would end it)."""
        if self.why is None:
            try:
                machine.refuse(
                    f"TLS to the target failed: {reason}",
                    f"TLS to {service} failed ({reason}); "
                    "operators: check the service's options.tls and the target's certificate",
                )
            except WireError as failed:
                self.refuse(failed)
        self.connection_lost(exc)

    def _logged_in(self, machine: Handshake) -> None:
        self.machine = None
        self.login_running = False
        self.stop_timer()
        session: TunnelProtocol = self.session  # type: ignore[assignment]
        grant = session.grant
        if isinstance(machine, pgwire.PostgresHandshake) and grant is not None:
            target_key = machine.target_key
            if target_key is not None and self.issued is not None:
                entry = cancels.CancelEntry(grant.grant_id, self.issued, target_key, grant.host, grant.port)
                self.shared = cancels.remember(session.broker, entry)  # written in a worker thread
                if self.shared is None:
                    self.issued = None
        ctx = session.ctx
        if grant is not None and ctx is not None:
            self.log_side = session.statement_log.side  # the hand-off without Python (``TargetChannel``)
            self.log_ids = (self.connection_id, grant.grant_id, grant.service, ctx.name)
        client, target = machine.leftovers()
        if target:
            self._to_client(target)
        if client and self.tap_client(client) and self.transport is not None:
            self.transport.write(client)

    def _to_client(self, data: bytes) -> None:
        """Send ``data`` to the client within the window; hold it until the channel is open."""
        if self.active and not self.held and len(data) <= self.send_window:
            self.send_window -= len(data)
            self.bytes_out += len(data)
            self.session.send_data(self.id, data)
            return
        self.held += data
        self.session.hold_changed(len(data))

    def _timed_out(self) -> None:
        self.timer = None
        if self.machine is None or self.why is not None:
            return
        seconds = f"{self.session.broker.settings.tunnel_login_timeout:g}"  # type: ignore[attr-defined]
        message = f"the target did not finish the login within {seconds} s; try again, or tell its owners"
        why = f"the login to the target did not finish within {seconds} s"
        if isinstance(self.machine, mywire.MysqlHandshake):
            try:  # the machine knows which sequence id the client expects now
                self.machine.refuse(why, message)
            except WireError as exc:
                self.refuse(exc)
            return
        self.refuse(WireError(why, wired.client_error(self.kind, message)))

    def _cancel(self, presented: tuple[int, int]) -> None:
        """A CancelRequest channel: look its key up (``cancels.lookup``: this process, else the
        store), then forward it only for a live channel of the same grant. Meanwhile the machine
        stays: it reads nothing more from the client, and a target that speaks is refused."""
        self.stop_timer()
        self.pending = asyncio.get_running_loop().create_task(self._forward_cancel(presented))

    async def _forward_cancel(self, presented: tuple[int, int]) -> None:
        session: TunnelProtocol = self.session  # type: ignore[assignment]
        grant = session.grant
        assert grant is not None
        entry = await cancels.lookup(session.broker, presented)
        if self.why is not None or self.transport is None:
            return  # ended meanwhile: its connection's loss ends it
        self.machine = None
        self.login_running = False
        self.cancel = cancels.decide(entry, grant.grant_id, grant.host, grant.port)
        if self.cancel == cancels.FORWARDED:
            assert entry is not None
            self.transport.write(pgwire.cancel_message(*entry.target_key))
        elif entry is not None and entry.grant_id != grant.grant_id:
            log.warning("refused a cancel request for another grant's connection (grant %s)", grant.grant_id)
        self.why = "cancel" if self.cancel == cancels.FORWARDED else "refused"
        session.close_channel(self)
        self.end(self.why, flush=True)  # the target reads the request, then closes

    def activate(self) -> None:
        super().activate()
        if self.deferred is not None:  # the client can be told now
            exc, self.deferred = self.deferred, None
            self.refuse(exc)

    def refuse(self, exc: WireError) -> None:
        """Send the error to the client (in its protocol), then close both legs.

        Before the channel is open (the target can answer the broker's login, e.g. Redis's
        ``-WRONGPASS``, before OPEN_OK went out) the client could not get the error, only a
        closed connection: the refusal then waits for ``activate``.
        """
        if self.why is not None:
            return
        if not self.active:
            self.deferred = self.deferred or exc
            self.stop_timer()
            return
        self.why = "refused"
        self.error = str(exc)[:500]
        self.stop_timer()
        message = exc.client_message
        if message and self.active and not self.held and len(message) <= self.send_window:
            self.send_window -= len(message)
            self.session.send_data(self.id, message)
        self.session.close_channel(self, "refused")
        self.end("refused", flush=False)


class TunnelProtocol(MuxSession):
    """One tunnel WebSocket, from the upgrade request to its channels' close audit entries."""

    def __init__(self, config: Any, server_state: Any, app_state: Any = None, **_: Any) -> None:
        super().__init__()
        self.broker: Broker = config.app.state.broker
        self.connections: set[Any] = server_state.connections
        self.grant_id = ""
        self.principal_id: str | None = None
        self.session_id: str | None = None
        self.client_address = "unknown"
        self.ctx: AuthContext | None = None
        self.grant: TunnelGrant | None = None
        self._head = b""
        self._handshake: asyncio.Task[None] | None = None
        self._pending_cut: str | None = None
        self._last_id = 0
        self._opening: set[asyncio.Task[None]] = set()
        settings = self.broker.settings
        self.max_head = settings.http_max_head
        self.max_channels = settings.max_channels_per_tunnel
        self.buffer_limit = settings.tunnel_buffer_limit
        self.limits = limits_for(self.broker)
        self.budget = self.limits.budget
        self._tunnel_counted = False  # counted against its user's tunnels
        self._draining: asyncio.TimerHandle | None = None  # a graceful stop: the cut at its end
        # Where a logged-in channel's statements go (see ``StatementSink``): the statement log,
        # which batches them into ledger entries; a test may put another sink here.
        self.statement_log = statement_log_for(self.broker)  # looked up once, not per statement
        self.statement_sink: StatementSink | None = self._record_statements
        self.metrics = metrics_for(self.broker)
        self.request_id = new_request_id()  # in its refusals' X-Request-Id and its log lines
        self._opened_at: float | None = None  # the 101 was sent: counted in access_tunnels_open
        self._cut_at: float | None = None  # when this process decided to end it (``cut``)

    # -- the HTTP phase --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.connections.add(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.client_address = str(peer[0])

    def handshake_received(self, data: bytes) -> None:
        if self._handshake is not None:
            return  # reading is paused; a client must not send frames before our 101
        self._head += data
        try:
            split = split_head(self._head, self.max_head)
        except HeadError:
            self._refuse(HeadTooLarge(f"request head over {self.max_head} bytes"))
            return
        if split is None:
            return
        assert self.transport is not None
        self.transport.pause_reading()
        try:
            request = parse_request(split[0])
        except BrokerError as exc:
            self._refuse(exc)
            return
        self.grant_id = request.grant_id
        self.client_address = forwarded_client(
            self.client_address, [request.forwarded_for], self.broker.settings.trusted_proxies
        )[:64]
        registry_for(self.broker).add(self)
        self._handshake = asyncio.get_running_loop().create_task(self._upgrade(request))

    async def _upgrade(self, request: TunnelRequest) -> None:
        loop = asyncio.get_running_loop()
        try:
            ctx, grant = await loop.run_in_executor(None, self._authorize, request)
        except BrokerError as exc:
            self._refuse(exc)
            return
        except Exception:
            log.exception("tunnel authorisation failed")
            self._refuse(BrokerError("internal error"))
            return
        self.ctx, self.grant = ctx, grant
        self.principal_id = grant.principal_id
        # Indexed by session from here on: a logout, a refresh-token reuse or a revoke cuts it.
        # An end that landed during the check above is caught by TunnelWatch's next poll.
        self.session_id = ctx.session_id
        registry_for(self.broker).add_session(self, ctx.session_expires_at)
        if self._lost:
            self._maybe_finish()
            return
        if self._pending_cut is not None:  # the grant ended while we checked it
            self._refuse_ended(self._pending_cut)
            return
        if not self.limits.take_tunnel(grant.principal_id):
            self._refuse_over_limit(ctx)
            return
        self._tunnel_counted = True
        registry_for(self.broker).schedule_expiry(grant)
        assert self.transport is not None
        rest = self._head.partition(b"\r\n\r\n")[2]
        self._head = b""
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Protocol: " + SUBPROTOCOL.encode("ascii") + b"\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(request.key).encode("ascii") + b"\r\n\r\n"
        )
        self.start(rest)
        self._opened_at = time.monotonic()
        self.metrics.tunnels_open.inc()
        events.info("tunnel open", extra=self._log_fields())
        if self.open:
            self.transport.resume_reading()

    def _authorize(self, request: TunnelRequest) -> tuple[AuthContext, TunnelGrant]:
        """Worker thread: the token and the grant, or a BrokerError (refusals are audited)."""
        from access.broker.auth.tokens import authenticate
        from access.broker.grants import open_for_tunnel

        ctx = authenticate(self.broker, request.token)
        return ctx, self._refusal_audited(ctx, lambda: open_for_tunnel(self.broker, ctx, request.grant_id))

    def _refusal_audited(self, ctx: AuthContext, check: Any) -> TunnelGrant:
        from access.broker.audit import ledger
        from access.broker.grants import NotYours

        try:
            grant: TunnelGrant = check()
        except (Forbidden, Expired, NotFound, RateLimited) as exc:
            # Someone signed in asked for a grant they cannot use (or for one more connection
            # than its identity may have): worth a line in the ledger.
            # Someone else's grant is answered as a missing one, but recorded as before.
            why = "forbidden" if isinstance(exc, NotYours) else str(exc.code)
            ledger.record(
                self.broker,
                actor=ctx.name,
                action=Action.CONNECTION_REFUSE,
                target=f"grant:{self.grant_id}",
                details={"grant": self.grant_id, "client": self.client_address, "why": why},
            )
            raise
        return grant

    def _refuse_over_limit(self, ctx: AuthContext) -> None:
        limit = self.limits.max_tunnels
        self.metrics.rate_limited.labels("tunnels_per_user").inc()
        self._refuse(
            RateLimited(
                f"{ctx.name} already has {limit} tunnels open through this broker (the limit)",
                hint="stop an `access connect` or `access exec` you no longer need, then try again "
                "(operators: ACCESS_BROKER_MAX_TUNNELS_PER_USER)",
            )
        )
        future = asyncio.get_running_loop().run_in_executor(None, self._audit_over_limit, ctx.name)
        future.add_done_callback(_log_failure)

    def _audit_over_limit(self, actor: str) -> None:
        from access.broker.audit import ledger

        ledger.record(
            self.broker,
            actor=actor,
            action=Action.CONNECTION_REFUSE,
            target=f"grant:{self.grant_id}",
            details={"grant": self.grant_id, "client": self.client_address, "why": "too many tunnels"},
        )

    def _refuse(self, error: BrokerError) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(http_error(error, self.request_id))
            self.transport.close()
        events.info(
            "tunnel refused", extra={**self._log_fields(), "status": error.status, "code": error.code}
        )

    def _refuse_ended(self, why: str) -> None:
        self.why = why
        self._refuse(_ended_error(why, self.grant_id))

    # -- channels --------------------------------------------------------------------------

    def on_open(self, channel_id: int) -> None:
        if channel_id <= self._last_id:
            raise ProtocolError(CLOSE_PROTOCOL, f"channel {channel_id} reused (ids only increase)")
        self._last_id = channel_id
        kind = self.grant.kind if self.grant is not None else "tcp"
        channel: BrokerChannel
        error: BrokerError | None = None
        if kind in LOGIN_KINDS:
            channel = WireChannel(self, channel_id, kind)
        elif kind in CHANNEL_KINDS:
            channel = CHANNEL_KINDS[kind](self, channel_id)
        else:
            channel = BrokerChannel(self, channel_id)
            if kind != "tcp":  # fail closed: no kind falls back to raw bytes
                error = BrokerError(
                    f"this broker cannot relay {kind} services", hint="operators: see the log"
                )
        if error is None and len(self.channels) >= self.max_channels:
            error = RateLimited(
                f"too many connections through one tunnel (at most {self.max_channels} at once)",
                hint="close some, or run a second `access connect`",
            )
        elif (
            error is None
            and self.principal_id is not None
            and not self.limits.take_channel(self.principal_id)
        ):
            error = RateLimited(
                f"too many connections through your tunnels (at most {self.limits.max_channels} at once)",
                hint="close some connections, or stop an `access connect` you no longer need",
            )
        if error is not None:
            if isinstance(error, RateLimited):
                self.metrics.rate_limited.labels("channels").inc()
            self.send(OPEN_FAIL, channel_id, payload=error_payload(error.body()))
            return
        channel.counted = True
        self.adopt(channel)
        self.add_channel(channel)
        task = asyncio.get_running_loop().create_task(self._open_channel(channel))
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)

    async def _open_channel(self, channel: BrokerChannel) -> None:
        loop = asyncio.get_running_loop()
        grant = self.grant
        assert grant is not None
        try:
            await loop.run_in_executor(None, self._authorize_channel, channel)
            if channel.why is not None:  # the client gave up, or the tunnel was cut meanwhile
                self.channel_failed(channel)
                return
            tls = channel.target_tls
            if isinstance(channel, WireChannel):
                channel.start_login()
                tls = channel.tls
            await asyncio.wait_for(self._connect(channel, grant, tls), CONNECT_TIMEOUT)
        except BrokerError as exc:
            self._fail_channel(channel, exc)
            return
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            channel.error = f"target {grant.host}:{grant.port} unreachable: {reason}"
            if isinstance(exc, ssl.SSLError | _NoTls):
                failed = TargetUnreachable(
                    f"TLS to {grant.service} failed ({reason})",
                    hint="operators: check the service's options.tls and the target's certificate",
                )
            else:
                failed = TargetUnreachable(
                    f"{grant.service} did not answer ({reason})",
                    hint="the service may be down; try again, or tell its owners",
                )
            self._fail_channel(channel, failed)
            return
        except Exception:
            log.exception("opening a tunnel channel failed")
            self._fail_channel(channel, BrokerError("internal error"))
            return
        if channel.why is not None or self.channels.get(channel.id) is not channel:
            channel.end(channel.why or "client closed", flush=False)  # ended while we connected
            return
        self.send(OPEN_OK, channel.id)
        channel.live = True
        self.metrics.channels_open.inc()
        channel.activate()

    async def _connect(self, channel: BrokerChannel, grant: TunnelGrant, tls: TargetTls) -> None:
        """Dial the target; with TLS for a service whose ``options.tls`` asks for it."""
        loop = asyncio.get_running_loop()
        context = tls.context()
        if context is None or grant.kind == "mysql":  # mysql: the login machine asks for TLS
            await loop.create_connection(lambda: channel, grant.host, grant.port)
        elif grant.kind != "postgres":
            await loop.create_connection(
                lambda: channel, grant.host, grant.port, ssl=context, server_hostname=grant.host
            )
        else:
            # PostgreSQL: an SSLRequest first; TLS once the target answers S.
            prelude = _SslAnswer(loop)
            transport, _ = await loop.create_connection(lambda: prelude, grant.host, grant.port)
            try:
                transport.write(_SSL_REQUEST)
                if await prelude.answer != b"S":
                    raise _NoTls(0, "the target does not accept TLS, which options.tls asks for")
                # A stand-in protocol until TLS is up: a failed handshake tells it, not the
                # channel, that the connection is lost (the failure is the channel's OPEN_FAIL).
                secure = await loop.start_tls(
                    transport, asyncio.Protocol(), context, server_hostname=grant.host
                )
            except BaseException:
                transport.abort()
                raise
            assert secure is not None
            secure.set_protocol(channel)
            channel.connection_made(secure)

    def _fail_channel(self, channel: BrokerChannel, error: BrokerError) -> None:
        channel.why = channel.why or "error"
        if self.channels.get(channel.id) is channel and self.open:
            self.channels.pop(channel.id)
            self.send(OPEN_FAIL, channel.id, payload=error_payload(error.body()))
        self.channel_failed(channel)

    def _authorize_channel(self, channel: BrokerChannel) -> None:
        """Worker thread: the sign-in session and the grant still live, then ``connection.open``."""
        from access.broker.grants import open_connection

        ctx = self.ctx
        assert ctx is not None
        self._refusal_audited(
            ctx,
            lambda: open_connection(
                self.broker,
                ctx,
                self.grant_id,
                connection_id=channel.connection_id,
                client=self.client_address,
            ),
        )
        channel.opened = True
        if isinstance(channel, WireChannel):
            assert self.grant is not None
            channel.tls = target_tls(self.grant)
            channel.login = target_login(self.broker, self.grant)
        else:
            channel.prepare()

    def channel_finished(self, channel: Channel) -> None:
        assert isinstance(channel, BrokerChannel)
        if self._draining is not None and self.live_channels == 0:
            asyncio.get_running_loop().call_soon(self._end_drain)  # the last one: the tunnel is done
        if channel.counted and self.principal_id is not None:
            channel.counted = False
            self.limits.drop_channel(self.principal_id)
        if channel.live:
            channel.live = False
            self.metrics.channels_open.dec()
        if not channel.opened or self.ctx is None or self.grant is None:
            return  # refused before it opened: nothing was opened, so nothing to close
        details: dict[str, Any] = {
            "connection": channel.connection_id,
            "grant": self.grant.grant_id,
            "service": self.grant.service,
            "bytes_up": channel.bytes_in,
            "bytes_down": channel.bytes_out,
            "duration_s": round(time.monotonic() - channel.started, 3),
            "why": channel.why or "client closed",
        }
        if channel.error:
            details["error"] = channel.error
        # A channel's byte counts, added once as it closes: the relay itself counts nothing more.
        self.metrics.tunnel_bytes.labels("up").inc(channel.bytes_in)
        self.metrics.tunnel_bytes.labels("down").inc(channel.bytes_out)
        events.info(
            "channel close",
            extra={
                **self._log_fields(),
                "connection": channel.connection_id,
                "bytes_up": channel.bytes_in,
                "bytes_down": channel.bytes_out,
                "duration_ms": round((time.monotonic() - channel.started) * 1000, 3),
                "why": details["why"],
            },
        )
        if isinstance(channel, WireChannel):
            channel.stop_timer()
            details["statements"] = channel.statements
            if channel.cancel is not None:
                details["cancel"] = channel.cancel
            if channel.issued is not None:
                cancels.forget(self.broker, channel.issued, channel.shared)
            self.statement_log.close(channel.connection_id)  # write what it still holds
        channel.finishing(details)
        # Queued, then written from a worker thread; kept and retried while the database is down.
        from access.broker.grants import grant_target

        closes = pending_for(self.broker)
        target = grant_target(self.grant.service, self.grant.grant_id)
        closes.add(channel.connection_id, self.ctx.name, target, details)
        asyncio.get_running_loop().run_in_executor(None, closes.flush_now)

    def _record_statements(self, channel: BrokerChannel, batch: list[Statement]) -> bool:
        """On the event loop: hand ``batch`` (a logged-in channel's statements, a Kubernetes
        channel's requests) to the statement log (no database work here). False when the log is
        full or cannot be written: the channel then stops (fail closed)."""
        if self.grant is None or self.ctx is None:
            return False
        # The log's compiled side directly (``StatementLog.add`` is this call behind keywords).
        return self.statement_log.side.add(
            channel.connection_id, self.grant.grant_id, self.grant.service, self.ctx.name, batch
        )

    # -- cuts and the end ------------------------------------------------------------------

    def cut(self, why: str) -> None:
        """End this tunnel because its grant or sign-in session ended (``why``: expired, revoked,
        locked, signed out, session expired)."""
        if self._cut_at is None:
            self._cut_at = time.monotonic()  # access_tunnel_cut_seconds runs from here to the close
            events.info("tunnel cut", extra={**self._log_fields(), "why": why})
        if not self.open:
            self._pending_cut = why  # the handshake is still running: it refuses at its next step
            return
        code, text = grant_ended_close(why, self.grant_id)
        self.close(code, text, why=why)

    def shutdown(self) -> None:
        """uvicorn is shutting down (SIGTERM): drain. The CLI is told (DRAIN) to open new
        connections through a new WebSocket, which lands on another replica; the open ones go on
        until they end or ``drain_timeout`` passes, then the tunnel closes (1001)."""
        if not self.open:
            if self.transport is not None:
                self.transport.close()
            return
        seconds = self.broker.settings.drain_timeout
        if self._draining is not None or seconds <= 0 or self.live_channels == 0:
            self._end_drain()
            return
        self.send(DRAIN, 0, math.ceil(seconds))
        self.flush()
        self._draining = asyncio.get_running_loop().call_later(seconds, self._end_drain)

    def _end_drain(self) -> None:
        if self._draining is not None:
            self._draining.cancel()
        if self.open:
            self.close(CLOSE_GOING_AWAY, "the broker is shutting down", why="shutdown")

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        if self._cut_at is not None:
            self.metrics.cut_seconds.observe(time.monotonic() - self._cut_at)
            self._cut_at = None
        super().connection_lost(exc)

    def finished(self) -> None:
        registry_for(self.broker).remove(self)
        if self._opened_at is not None:
            self.metrics.tunnels_open.dec()
            seconds = time.monotonic() - self._opened_at
            self._opened_at = None
            events.info(
                "tunnel close",
                extra={
                    **self._log_fields(),
                    "duration_ms": round(seconds * 1000, 3),
                    "why": self.why or "closed",
                },
            )
        if self._tunnel_counted and self.principal_id is not None:
            self._tunnel_counted = False
            self.limits.drop_tunnel(self.principal_id)

    def _log_fields(self) -> dict[str, Any]:
        """What every tunnel log line says: never the token, nor anything from the request head
        but the grant id."""
        return {
            "request_id": self.request_id,
            "grant": self.grant_id or None,
            "principal": self.ctx.name if self.ctx is not None else None,
            "client": self.client_address,
        }


class _NoTls(ConnectionRefusedError):
    """A PostgreSQL target answered an SSLRequest with N."""


class _Upgrading(asyncio.Protocol):
    """The target connection's protocol while TLS starts in the middle of a MySQL login.

    It keeps what arrives before the channel takes over: a loss (``lost``, ``exc``) and any
    bytes (``early``: a little over the machine's ceiling at most, which then refuses them).
    Once ``owner`` is set, a loss still on its way goes to the channel. A loss while TLS starts
    is not the channel's either: ``WireChannel._start_tls`` ends the channel itself.
    """

    def __init__(self) -> None:
        self.owner: WireChannel | None = None
        self.lost = False
        self.exc: Exception | None = None
        self.early = b""

    def data_received(self, data: bytes) -> None:
        if self.owner is not None:
            self.owner.data_received(data)
        elif len(self.early) <= mywire.MAX_HANDSHAKE_PACKET + 4:
            self.early += data

    def connection_lost(self, exc: Exception | None) -> None:
        if self.owner is not None:
            self.owner.connection_lost(exc)
        else:
            self.lost, self.exc = True, exc


class _SslAnswer(asyncio.Protocol):
    """The target's one-byte answer to an SSLRequest (PostgreSQL), before TLS starts."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.answer: asyncio.Future[bytes] = loop.create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.answer.done():
            self.answer.set_result(data[:1])
        if self.transport is not None:
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(ConnectionResetError(0, "it closed the connection before TLS"))


def _ended_error(why: str, grant_id: str) -> BrokerError:
    message = grant_ended_close(why, grant_id)[1]
    if why in ("signed out", "session expired"):
        return Unauthenticated(message, hint="run `access login`")
    return Expired(message) if why == "expired" else Forbidden(message)


def _log_failure(future: asyncio.Future[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        exc = future.exception()
        if exc is not None:
            log.error("could not write the connection.refuse audit entry: %s", exc)
