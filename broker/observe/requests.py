"""Every HTTP request (and WebSocket upgrade through ASGI): a request id, a log line, counted.

:class:`RequestLog` is the app's outermost middleware. It gives each request an id (the
client's ``X-Request-Id`` when that is short and plain, else a new one), returns it in the
``X-Request-Id`` header of every answer (errors and WebSocket denials too), and when the
answer is done logs one line and counts it by route template. The line carries the request id,
method, route template, status, duration, the principal once a route has authenticated one
(``api.deps`` puts its name in the request's state) and the grant id when the route has one.
Never the raw path or query string (``/oidc/callback?code=...&state=...``), headers or bodies.
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from access.broker.observe.metrics import UNMATCHED, Metrics

__all__ = ["REQUEST_ID_HEADER", "RequestLog", "accepted_request_id", "new_request_id"]

log = logging.getLogger("access.broker.requests")

REQUEST_ID_HEADER = "X-Request-Id"
_HEADER = REQUEST_ID_HEADER.lower().encode("ascii")
# A client's id is kept only when it cannot smuggle anything into a log line or a header.
_SAFE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
# A method label is one of these or OTHER: a client's invented method makes no new series.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "WEBSOCKET"})
_RESPONSE_STARTS = frozenset({"http.response.start", "websocket.http.response.start"})


def new_request_id() -> str:
    """16 random hex characters."""
    return secrets.token_hex(8)


def accepted_request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's ``X-Request-Id`` if short and of safe characters, else a new id."""
    for name, value in headers:
        if name == _HEADER:
            return value.decode("ascii") if _SAFE_ID.fullmatch(value) else new_request_id()
    return new_request_id()


def _route(scope: Scope) -> str:
    """The matched route's template (``/v1/grants/{grant_id}``), or ``UNMATCHED``."""
    template = getattr(scope.get("route"), "path", None)
    if not isinstance(template, str):
        return UNMATCHED
    # FastAPI gives a route of an included router its own path, without the prefixes it was
    # included under (/v1): those are the request path's leading segments (no route of ours
    # has a parameter that spans segments, so the counts line up).
    path: str = scope.get("path", "")
    prefix = path.count("/") - template.count("/")
    if prefix > 0:
        template = "/".join(path.split("/")[: prefix + 1]) + template
    return template


class RequestLog:
    """The request id, the request's log line and its metrics (see the module's text)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # Bounded: routes are the app's, methods the few below, statuses the app's.
        self._series: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        request_id = accepted_request_id(scope["headers"])
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        header = (_HEADER, request_id.encode("ascii"))
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind in _RESPONSE_STARTS:
                status = int(message["status"])
                message = {**message, "headers": [*message.get("headers", ()), header]}
            elif kind == "websocket.accept":
                status = 101
                message = {**message, "headers": [*message.get("headers", ()), header]}
            elif kind == "websocket.close" and status == 0:
                status = 403  # closed before it was accepted: the server answers the upgrade 403
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._done(scope, request_id, status, time.monotonic() - started)

    def _done(self, scope: Scope, request_id: str, status: int, seconds: float) -> None:
        route = _route(scope)
        method = scope.get("method", "") if scope["type"] == "http" else "WEBSOCKET"
        method = method if method in _METHODS else "OTHER"
        key = (route, method, status)
        counted = self._series.get(key)
        if counted is None:  # prometheus_client's labels() is most of the cost: once per series
            counted = self._series[key] = (
                self.metrics.requests.labels(route, method, str(status)),
                self.metrics.request_seconds.labels(route, method),
            )
        counted[0].inc()
        counted[1].observe(seconds)
        if not log.isEnabledFor(logging.INFO):
            return
        grant_id = scope.get("path_params", {}).get("grant_id")
        log.info(
            "%s %s %d %.1f ms",
            method,
            route,
            status,
            seconds * 1000,
            extra={
                "request_id": request_id,
                "method": method,
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "principal": scope.get("state", {}).get("principal"),
                "grant": grant_id if isinstance(grant_id, str) else None,
            },
        )
