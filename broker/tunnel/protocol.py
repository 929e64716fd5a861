"""The broker's end of the tunnel: a WebSocket upgrade on ``/v1/tunnel`` relayed to the target.

uvicorn hands every ``Upgrade: websocket`` request to ``TunnelProtocol`` (``ws=`` in
``server.py``) with the request head re-serialised. The connection never touches ASGI:

1. parse the head (``GET /v1/tunnel?grant=ID``, ``Authorization: Bearer``, WebSocket key);
2. stop reading, and in a worker thread verify the token and the grant and write the
   ``connection.open`` audit entry. Any failure is answered with the broker's JSON error body
   and the connection closed: not one byte reaches the target;
3. connect to the target the policy names (never one the client names), answer ``101``;
4. relay (``shared.relay``) until one side closes or the grant ends, then write
   ``connection.close`` (bytes each way, duration, why) from a worker thread.
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

from access.broker.errors import (
    BrokerError,
    Expired,
    Forbidden,
    InvalidRequest,
    NotFound,
    TargetUnreachable,
    Unauthenticated,
)
from access.broker.tunnel.registry import registry_for
from access.shared.relay import FramedRelay, RawPeer
from access.shared.wsframe import (
    CLOSE_EXPIRED,
    CLOSE_GOING_AWAY,
    CLOSE_LOCKED,
    CLOSE_REVOKED,
    accept_key,
)

if TYPE_CHECKING:
    from access.broker.grants import TunnelGrant
    from access.broker.principal import AuthContext
    from access.broker.runtime import Broker

__all__ = ["CONNECT_TIMEOUT", "TUNNEL_PATH", "TunnelProtocol", "TunnelRequest", "parse_request"]

log = logging.getLogger(__name__)

TUNNEL_PATH = "/v1/tunnel"
CONNECT_TIMEOUT = 5.0
MAX_HEAD = 16 * 1024
_GRANT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CUT = {
    "expired": (CLOSE_EXPIRED, "grant {grant} expired"),
    "revoked": (CLOSE_REVOKED, "grant {grant} was revoked"),
    "locked": (CLOSE_LOCKED, "grant {grant} ended: the account was locked out"),
}


@dataclass(frozen=True)
class TunnelRequest:
    grant_id: str
    token: str
    key: str


def parse_request(head: bytes) -> TunnelRequest:
    """Check an upgrade request's head and pull out what the tunnel needs.

    Raises:
        NotFound: not ``/v1/tunnel``.
        InvalidRequest: not a usable WebSocket upgrade, or no/bad ``grant`` parameter.
        Unauthenticated: no bearer token.
    """
    lines = head.decode("latin-1").split("\r\n")
    method, _, rest = lines[0].partition(" ")
    target = rest.rpartition(" ")[0]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    url = urlsplit(target)
    if url.path != TUNNEL_PATH:
        raise NotFound("no such endpoint")
    if method != "GET":
        raise InvalidRequest("the tunnel endpoint takes GET")
    if headers.get("sec-websocket-version") != "13" or not headers.get("sec-websocket-key"):
        raise InvalidRequest("the tunnel endpoint needs a WebSocket (version 13) upgrade")
    grants = parse_qs(url.query).get("grant", [])
    if len(grants) != 1 or not _GRANT_ID.fullmatch(grants[0]):
        raise InvalidRequest("give exactly one grant id: /v1/tunnel?grant=ID", hint="see `access grants`")
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the tunnel needs a bearer token")
    return TunnelRequest(grant_id=grants[0], token=token.strip(), key=headers["sec-websocket-key"])


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


class TunnelProtocol(FramedRelay):
    """One tunnel connection, from the upgrade request to the close audit entry."""

    def __init__(self, config: Any, server_state: Any, app_state: Any = None, **_: Any) -> None:
        super().__init__()
        self.broker: Broker = config.app.state.broker
        self.connections: set[Any] = server_state.connections
        self.connection_id = "c-" + secrets.token_hex(8)
        self.grant_id = ""
        self.principal_id: str | None = None
        self.client_address = "unknown"
        self.ctx: AuthContext | None = None
        self.grant: TunnelGrant | None = None
        self._head = b""
        self._handshake: asyncio.Task[None] | None = None
        self._pending_cut: str | None = None
        self._started = time.monotonic()
        self._target_error: str | None = None

    # -- the HTTP phase --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.connections.add(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.client_address = str(peer[0])

    def data_received(self, data: bytes) -> None:
        if self.open:
            self.relay_frames(data)
            return
        if self._handshake is not None:
            return  # reading is paused; a client must not send frames before our 101
        self._head += data
        if b"\r\n\r\n" not in self._head:
            if len(self._head) > MAX_HEAD:
                self._refuse(InvalidRequest("request head too large"))
            return
        assert self.transport is not None
        self.transport.pause_reading()
        try:
            request = parse_request(self._head.partition(b"\r\n\r\n")[0])
        except BrokerError as exc:
            self._refuse(exc)
            return
        self.grant_id = request.grant_id
        registry_for(self.broker).add(self)
        self._handshake = asyncio.get_running_loop().create_task(self._open(request))

    async def _open(self, request: TunnelRequest) -> None:
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
        if self._framed_lost:  # the client left during the checks: close what was opened
            self.finished()
            return
        if self._pending_cut is not None:
            self._refuse_ended(self._pending_cut)
            return
        registry_for(self.broker).schedule_expiry(grant)
        try:
            peer, _ = await asyncio.wait_for(
                loop.create_connection(lambda: RawPeer(self), grant.host, grant.port), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            self._target_error = f"target {grant.host}:{grant.port} unreachable: {reason}"
            self.why = "error"
            self._refuse(
                TargetUnreachable(
                    f"{grant.service} did not answer ({reason})",
                    hint="the service may be down; try again, or tell its owners",
                )
            )
            return
        assert self.transport is not None
        ended = self._cut_while_opening()  # the grant may have ended while we connected
        if self._framed_lost or ended is not None:
            if ended is not None:
                self._refuse_ended(ended)
            peer.close()
            return
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(request.key).encode("ascii") + b"\r\n\r\n"
        )
        self.start_relay(peer)

    def _authorize(self, request: TunnelRequest) -> tuple[AuthContext, TunnelGrant]:
        """Worker thread: token, grant, and the ``connection.open`` entry, or a BrokerError."""
        from access.broker import ledger
        from access.broker.grants import grant_target, open_for_tunnel
        from access.broker.tokens import authenticate

        broker = self.broker
        ctx = authenticate(broker, request.token)
        try:
            grant = open_for_tunnel(broker, ctx, request.grant_id)
        except (Forbidden, Expired, NotFound) as exc:
            # Someone signed in asked for a grant they cannot use: worth a line in the ledger.
            with broker.transaction() as conn:
                ledger.append(
                    conn,
                    broker.clock,
                    actor=ctx.name,
                    action="connection.refuse",
                    target=f"grant:{request.grant_id}",
                    details={"grant": request.grant_id, "client": self.client_address, "why": str(exc.code)},
                )
            raise
        with broker.transaction() as conn:
            ledger.append(
                conn,
                broker.clock,
                actor=ctx.name,
                action="connection.open",
                target=grant_target(grant.service, grant.grant_id),
                details={
                    "connection": self.connection_id,
                    "grant": grant.grant_id,
                    "service": grant.service,
                    "scope": grant.scope,
                    "kind": grant.kind,
                    "client": self.client_address,
                    "target": f"{grant.host}:{grant.port}",
                },
            )
        return ctx, grant

    def _cut_while_opening(self) -> str | None:
        return self._pending_cut

    def _refuse(self, error: BrokerError) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(http_error(error))
            self.transport.close()

    def _refuse_ended(self, why: str) -> None:
        self.why = why
        message = _CUT.get(why, _CUT["revoked"])[1].format(grant=self.grant_id)
        error: BrokerError = Expired(message) if why == "expired" else Forbidden(message)
        self._refuse(error)

    # -- cuts and the end ------------------------------------------------------------------

    def cut(self, why: str) -> None:
        """End this tunnel because its grant ended (``why``: expired, revoked, locked)."""
        if not self.open:
            self._pending_cut = why  # the handshake is still running: it refuses at its next step
            return
        code, text = _CUT.get(why, _CUT["revoked"])
        self.close(code, text.format(grant=self.grant_id), why=why)

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
        if self.ctx is None or self.grant is None:
            return  # refused before it opened: nothing was opened, so nothing to close
        details: dict[str, Any] = {
            "connection": self.connection_id,
            "grant": self.grant.grant_id,
            "service": self.grant.service,
            "bytes_up": self.bytes_from_framed,
            "bytes_down": self.bytes_to_framed,
            "duration_s": round(time.monotonic() - self._started, 3),
            "why": self.why or "client closed",
        }
        if self._target_error:
            details["error"] = self._target_error
        if self.remote_close is not None:
            details["close_code"] = self.remote_close[0]
        actor = self.ctx.name
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, self._audit_close, actor, details)
        future.add_done_callback(_log_failure)

    def _audit_close(self, actor: str, details: dict[str, Any]) -> None:
        from access.broker import ledger
        from access.broker.grants import grant_target

        with self.broker.transaction() as conn:
            ledger.append(
                conn,
                self.broker.clock,
                actor=actor,
                action="connection.close",
                target=grant_target(str(details["service"]), str(details["grant"])),
                details=details,
            )


def _log_failure(future: asyncio.Future[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        exc = future.exception()
        if exc is not None:
            log.error("could not write the connection.close audit entry: %s", exc)
