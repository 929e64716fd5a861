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
import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from access.broker.audit.actions import Action
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
from access.broker.tunnel.closes import pending_for
from access.broker.tunnel.limits import limits_for
from access.broker.tunnel.registry import registry_for
from access.shared.closecodes import grant_ended_close
from access.shared.httphead import HeadError, parse_request_head, split_head
from access.shared.mux import Channel, MuxSession, error_payload
from access.shared.muxframe import OPEN_FAIL, OPEN_OK, SUBPROTOCOL
from access.shared.net import forwarded_client
from access.shared.wsframe import CLOSE_GOING_AWAY, CLOSE_PROTOCOL, ProtocolError, accept_key

if TYPE_CHECKING:
    from access.broker.auth.principal import AuthContext
    from access.broker.grants import TunnelGrant
    from access.broker.runtime import Broker

__all__ = ["CONNECT_TIMEOUT", "TUNNEL_PATH", "TunnelProtocol", "TunnelRequest", "parse_request"]

log = logging.getLogger(__name__)

TUNNEL_PATH = "/v1/tunnel"
CONNECT_TIMEOUT = 5.0
_GRANT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


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


def http_error(error: BrokerError) -> bytes:
    """A complete HTTP/1.1 error response carrying the broker's JSON error body."""
    body = json.dumps(error.body()).encode()
    phrase = http.HTTPStatus(error.status).phrase
    head = (
        f"HTTP/1.1 {error.status} {phrase}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class BrokerChannel(Channel):
    """One channel: the connection to the target, and what its audit entries need."""

    __slots__ = ("connection_id", "counted", "error", "opened")

    def __init__(self, session: TunnelProtocol, channel_id: int) -> None:
        super().__init__(session, channel_id)
        self.connection_id = "c-" + secrets.token_hex(8)
        self.opened = False  # connection.open was written: connection.close must follow
        self.counted = False  # counted against its user's channels (limits)
        self.error: str | None = None


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
        except (Forbidden, Expired, NotFound) as exc:
            # Someone signed in asked for a grant they cannot use: worth a line in the ledger.
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
            self.transport.write(http_error(error))
            self.transport.close()

    def _refuse_ended(self, why: str) -> None:
        self.why = why
        self._refuse(_ended_error(why, self.grant_id))

    # -- channels --------------------------------------------------------------------------

    def on_open(self, channel_id: int) -> None:
        if channel_id <= self._last_id:
            raise ProtocolError(CLOSE_PROTOCOL, f"channel {channel_id} reused (ids only increase)")
        self._last_id = channel_id
        channel = BrokerChannel(self, channel_id)
        error: BrokerError | None = None
        if len(self.channels) >= self.max_channels:
            error = RateLimited(
                f"too many connections through one tunnel (at most {self.max_channels} at once)",
                hint="close some, or run a second `access connect`",
            )
        elif self.principal_id is not None and not self.limits.take_channel(self.principal_id):
            error = RateLimited(
                f"too many connections through your tunnels (at most {self.limits.max_channels} at once)",
                hint="close some connections, or stop an `access connect` you no longer need",
            )
        if error is not None:
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
            await asyncio.wait_for(
                loop.create_connection(lambda: channel, grant.host, grant.port), CONNECT_TIMEOUT
            )
        except BrokerError as exc:
            self._fail_channel(channel, exc)
            return
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            channel.error = f"target {grant.host}:{grant.port} unreachable: {reason}"
            self._fail_channel(
                channel,
                TargetUnreachable(
                    f"{grant.service} did not answer ({reason})",
                    hint="the service may be down; try again, or tell its owners",
                ),
            )
            return
        except Exception:
            log.exception("opening a tunnel channel failed")
            self._fail_channel(channel, BrokerError("internal error"))
            return
        if channel.why is not None or self.channels.get(channel.id) is not channel:
            channel.end(channel.why or "client closed", flush=False)  # ended while we connected
            return
        self.send(OPEN_OK, channel.id)
        channel.activate()

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

    def channel_finished(self, channel: Channel) -> None:
        assert isinstance(channel, BrokerChannel)
        if channel.counted and self.principal_id is not None:
            channel.counted = False
            self.limits.drop_channel(self.principal_id)
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
        # Queued, then written from a worker thread; kept and retried while the database is down.
        from access.broker.grants import grant_target

        closes = pending_for(self.broker)
        target = grant_target(self.grant.service, self.grant.grant_id)
        closes.add(channel.connection_id, self.ctx.name, target, details)
        asyncio.get_running_loop().run_in_executor(None, closes.flush_now)

    # -- cuts and the end ------------------------------------------------------------------

    def cut(self, why: str) -> None:
        """End this tunnel because its grant or sign-in session ended (``why``: expired, revoked,
        locked, signed out, session expired)."""
        if not self.open:
            self._pending_cut = why  # the handshake is still running: it refuses at its next step
            return
        code, text = grant_ended_close(why, self.grant_id)
        self.close(code, text, why=why)

    def shutdown(self) -> None:
        """uvicorn is shutting down: tunnels fail closed (the CLI reconnects after a restart)."""
        if self.open:
            self.close(CLOSE_GOING_AWAY, "the broker is shutting down", why="shutdown")
        elif self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        super().connection_lost(exc)

    def finished(self) -> None:
        registry_for(self.broker).remove(self)
        if self._tunnel_counted and self.principal_id is not None:
            self._tunnel_counted = False
            self.limits.drop_tunnel(self.principal_id)


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
