"""kubectl <-> API server for one tunnel channel, sans-I/O: bytes in, bytes and audit records out.

``KubeProxy`` holds two h11 connections: a server one facing kubectl (the client leg, what
kubectl sends through the tunnel) and a client one facing the API server (the target leg). For
each request head from kubectl it:

1. refuses what it will not forward, with a Kubernetes ``Status`` body kubectl prints and
   ``Connection: close``: a head over ``max_head`` (431), a path it cannot classify (400), a
   client's own ``Impersonate-*`` headers (403: the broker says who the person is), a body over
   ``max_body`` or one without a length (413, 411), an upgrade anywhere but exec, attach and
   port-forward (400), and whatever the scope's rules do not allow (403, "forbidden by access:
   scope read does not allow delete on pods in namespace shop");
2. otherwise forwards it with the client's ``Authorization`` removed and the broker's added, and
   ``Impersonate-User``/``Impersonate-Group`` for the grant's person when the service says
   ``impersonate: true``; the body follows as it arrives;
3. relays the response as it arrives (chunked watches and followed logs stream through), and
   after a ``101`` (exec, attach, port-forward: WebSocket or SPDY) stops parsing: ``upgraded``
   is then True and ``leftovers`` hands what each side sent past the heads to the byte relay.

One request at a time: bytes kubectl sends while a response is outstanding wait here (at most
``max_head + max_body``; more is a ``ProxyError``), as HTTP/1.1 allows. Every exchange becomes one
audit record (``take_records``): ``list pods shop 200 1234`` (what, response code, body bytes
sent to kubectl), ``refused`` ones with their reason, a cut one (``finish``) with what it had.
"""

from __future__ import annotations

import http
import json
from dataclasses import dataclass, field

import h11

from access.broker.kube.request import CONNECT_SUBRESOURCES, Unclassifiable, classify
from access.broker.kube.rules import KubeScope, decide, is_discovery
from access.broker.wire.base import Statement

__all__ = ["Forwarding", "KubeProxy", "ProxyError", "status_response"]

MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024
MAX_RECORD = 2000  # characters of one audit record's text
# Request headers the client may not send: the broker says who the person is.
_IMPERSONATE = b"impersonate-"
_DROPPED = frozenset({b"authorization", b"proxy-authorization", b"host"})
_KIND = "kube"


class ProxyError(Exception):
    """The client or the API server broke HTTP in a way that ends the channel."""


@dataclass(frozen=True, slots=True)
class Forwarding:
    """What the broker adds to each request it forwards (never logged)."""

    host: str  # the API server's Host header value
    authorization: str | None = field(default=None, repr=False)  # "Bearer ..."; None: client certificate
    user: str | None = None  # Impersonate-User, when the service impersonates
    groups: tuple[str, ...] = ()  # Impersonate-Group


def status_response(code: int, message: str, reason: str = "") -> bytes:
    """A complete HTTP response carrying a Kubernetes ``Status`` (closing the connection)."""
    phrase = http.HTTPStatus(code).phrase
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or phrase.replace(" ", ""),
        "code": code,
    }
    body = json.dumps(status).encode()
    head = (
        f"HTTP/1.1 {code} {phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


@dataclass(slots=True)
class _Exchange:
    what: str
    code: int = 0
    sent: int = 0  # response body bytes sent to the client


class KubeProxy:
    """One channel's HTTP between kubectl and the API server (see the module's docstring)."""

    def __init__(
        self,
        scope: str,
        rules: KubeScope | None,
        forwarding: Forwarding,
        *,
        max_head: int = MAX_HEAD,
        max_body: int = MAX_BODY,
    ) -> None:
        self.scope = scope
        self.rules = rules
        self.forwarding = forwarding
        self.max_head = max_head
        self.max_body = max_body
        self.client = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        self.target = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_head)
        self.upgraded = False  # both legs switched protocols: relay bytes from here on
        self.closing = False  # send what is queued for the client, then close both legs
        self.exchange: _Exchange | None = None  # the request in flight
        self.forwarded = False  # the request in flight went to the API server
        self.head_started = False  # the client has sent part of a request head
        self._to_client = bytearray()
        self._to_target = bytearray()
        self._waiting = bytearray()  # client bytes that arrived while a response was due
        self._records: list[Statement] = []
        self._leftovers = (b"", b"")

    # -- output ----------------------------------------------------------------------------

    def data_to_client(self) -> bytes:
        data, self._to_client = bytes(self._to_client), bytearray()
        return data

    def data_to_target(self) -> bytes:
        data, self._to_target = bytes(self._to_target), bytearray()
        return data

    def take_records(self) -> list[Statement]:
        records, self._records = self._records, []
        return records

    def leftovers(self) -> tuple[bytes, bytes]:
        """After the upgrade: (bytes the client sent past its head, bytes the target sent past its 101)."""
        return self._leftovers

    @property
    def awaiting_response(self) -> bool:
        """A forwarded request has had no response head yet."""
        return self.forwarded and self.exchange is not None and self.exchange.code == 0

    def finish(self) -> None:
        """The channel ends: record the exchange still in flight (a cut watch or log), if any."""
        if self.exchange is not None and not self.upgraded:
            self._record(self.exchange, "cut")
        self.exchange = None

    # -- the client leg --------------------------------------------------------------------

    def feed_client(self, data: bytes) -> None:
        """Bytes from kubectl. Raises ProxyError."""
        if self.closing or self.upgraded:
            return
        if self.exchange is not None and self._request_done():
            self._waiting += data
            if len(self._waiting) > self.max_head + self.max_body:
                raise ProxyError("the client sent too much while a response was due")
            return
        self.client.receive_data(data)
        self._client_events()

    def _request_done(self) -> bool:
        return self.client.their_state not in (h11.IDLE, h11.SEND_BODY)

    def _client_events(self) -> None:
        while not self.closing:
            try:
                event = self.client.next_event()
            except h11.RemoteProtocolError as exc:
                code = exc.error_status_hint
                if code == 431:
                    self._refuse(None, 431, f"request head over {self.max_head} bytes")
                else:
                    self._refuse(None, 400, f"bad HTTP request: {exc}")
                return
            if event is h11.NEED_DATA:
                self.head_started = self.client.their_state is h11.IDLE and bool(self.client.trailing_data[0])
                return
            if event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self.head_started = False
                self._request(event)
            elif isinstance(event, h11.Data):
                if self.forwarded:
                    self._to_target += self.target.send(h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                if self.forwarded:
                    self._to_target += self.target.send(h11.EndOfMessage())
            elif isinstance(event, h11.ConnectionClosed):
                self.closing = True

    def _request(self, event: h11.Request) -> None:
        method = event.method.decode("ascii", "replace")
        target = event.target.decode("ascii", "replace")
        headers = event.headers.raw_items()
        # h11 bounds a head that arrives in pieces; one that arrived whole is measured here.
        if len(event.target) + sum(len(name) + len(value) + 4 for name, value in headers) > self.max_head:
            self._refuse(None, 431, f"request head over {self.max_head} bytes")
            return
        try:
            attrs = classify(method, target)
        except Unclassifiable as exc:
            self._refuse(f"{method} {target[:200]}", 400, f"access cannot check this request: {exc}")
            return
        what = attrs.describe()
        names = {name.lower() for name, _ in headers}
        if any(name.startswith(_IMPERSONATE) for name in names):
            # Discovery (which kubectl prints no refusal of) goes without them; the rest is refused.
            if not is_discovery(attrs):
                self._refuse(
                    what, 403, "access says who you are to the cluster: --as and --as-group are not allowed"
                )
                return
            headers = [(name, value) for name, value in headers if not name.lower().startswith(_IMPERSONATE)]
        verdict = decide(self.scope, self.rules, attrs)
        if not verdict.allowed:
            self._refuse(what, 403, verdict.reason)
            return
        upgrade = b"upgrade" in names
        if upgrade and attrs.subresource not in CONNECT_SUBRESOURCES:
            self._refuse(what, 400, "access relays upgrades for exec, attach and port-forward only")
            return
        if b"transfer-encoding" in names and not upgrade:
            self._refuse(what, 411, "access takes request bodies with a Content-Length")
            return
        lengths = [value for name, value in headers if name.lower() == b"content-length"]
        if lengths and int(lengths[0]) > self.max_body:
            self._refuse(what, 413, f"request body over {self.max_body} bytes")
            return
        self.exchange = _Exchange(what)
        self.forwarded = True
        out = [(name, value) for name, value in headers if name.lower() not in _DROPPED]
        forwarding = self.forwarding
        out.insert(0, (b"Host", forwarding.host.encode("ascii")))
        if forwarding.authorization is not None:
            out.append((b"Authorization", forwarding.authorization.encode("latin-1")))
        if forwarding.user is not None:
            out.append((b"Impersonate-User", forwarding.user.encode("utf-8")))
            out.extend((b"Impersonate-Group", group.encode("utf-8")) for group in forwarding.groups)
        self._to_target += self.target.send(
            h11.Request(method=event.method, target=event.target, headers=out)
        )

    def _refuse(self, what: str | None, code: int, message: str) -> None:
        """Answer ``code`` with a Status, record it, and close after sending it."""
        reason = {403: "Forbidden", 400: "BadRequest", 413: "RequestEntityTooLarge"}.get(code, "")
        text = f"forbidden by access: {message}" if code == 403 else f"access: {message}"
        self._to_client += status_response(code, text, reason)
        self.closing = True
        self._record(_Exchange(what or "(unreadable request)", code), f"refused: {message}")

    # -- the target leg --------------------------------------------------------------------

    def feed_target(self, data: bytes) -> None:
        """Bytes from the API server. Raises ProxyError."""
        if self.upgraded or (self.closing and self.exchange is None):
            return
        self.target.receive_data(data)
        while True:
            try:
                event = self.target.next_event()
            except h11.RemoteProtocolError as exc:
                raise ProxyError(f"the API server broke HTTP: {exc}") from exc
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            exchange = self.exchange
            if exchange is None:
                raise ProxyError("the API server sent a response nobody asked for")
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    self._switch(event, exchange)
                    return
                self._to_client += self.client.send(event)
            elif isinstance(event, h11.Response):
                exchange.code = event.status_code
                self._to_client += self._send_client(event)
            elif isinstance(event, h11.Data):
                exchange.sent += len(event.data)
                self._to_client += self._send_client(h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._to_client += self._send_client(h11.EndOfMessage())
                self._record(exchange)
                self._next_cycle()
                if self.closing:
                    return
            elif isinstance(event, h11.ConnectionClosed):
                self.closing = True
                return

    def _send_client(self, event: h11.Event) -> bytes:
        try:
            return self.client.send(event) or b""
        except h11.LocalProtocolError as exc:
            raise ProxyError(f"cannot relay the API server's response: {exc}") from exc

    def _switch(self, event: h11.InformationalResponse, exchange: _Exchange) -> None:
        exchange.code = 101
        self._to_client += self._send_client(event)
        if self.client.our_state is not h11.SWITCHED_PROTOCOL:
            raise ProxyError("the API server switched protocols on a request that did not ask to")
        self.upgraded = True
        self._record(exchange)
        self.exchange = None
        client_rest = self.client.trailing_data[0] + bytes(self._waiting)
        self._waiting = bytearray()
        self._leftovers = (client_rest, self.target.trailing_data[0])

    def _next_cycle(self) -> None:
        self.exchange = None
        self.forwarded = False
        states = (
            self.client.our_state,
            self.client.their_state,
            self.target.our_state,
            self.target.their_state,
        )
        if any(state is not h11.DONE for state in states):
            self.closing = True  # Connection: close on either leg, or a body left unfinished
            return
        self.client.start_next_cycle()
        self.target.start_next_cycle()
        waiting, self._waiting = bytes(self._waiting), bytearray()
        self._client_events()
        if waiting:
            self.feed_client(waiting)

    # -- audit -----------------------------------------------------------------------------

    def _record(self, exchange: _Exchange, note: str = "") -> None:
        text = f"{exchange.what} {exchange.code} {exchange.sent}" + (f" {note}" if note else "")
        self._records.append(Statement(_KIND, text[:MAX_RECORD]))
