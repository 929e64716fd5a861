"""The broker's ASGI application: routers, one error handler, request size limits, background loops.

Every error a client sees has the broker's JSON shape (``BrokerError.body()``): ``BrokerError``
subclasses render their own status and code; validation, routing and database errors are mapped
to one; anything else is a bug, answered ``500 {"error": {"code": "internal", ...}}`` by
:class:`CatchAll`, whose traceback goes to the log once and never to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from access.broker.errors import BrokerError, InvalidRequest, NotFound, PayloadTooLarge, database_unavailable
from access.broker.grants.batch import GrantWriter
from access.broker.loops import Loop
from access.broker.observe.metrics import metrics_for
from access.broker.observe.requests import RequestLog
from access.broker.runtime import Broker
from access.shared.models import MAX_JSON_BODY_BYTES

__all__ = ["CatchAll", "create_app"]

log = logging.getLogger(__name__)

# On a graceful stop, how long queued connection.close entries are retried before the process exits.
_STOP_WRITE_TIMEOUT = 5.0


class BodySizeLimit:
    """Refuse request bodies over ``limit`` bytes, whether or not Content-Length is honest."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await _send_error(send, PayloadTooLarge(f"request body over {self.limit} bytes"))
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise PayloadTooLarge(f"request body over {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


class CatchAll:
    """Answer an unexpected exception with a 500 in the broker's JSON shape, and log it once.

    Starlette's own last-resort handler re-raises after answering, so the server logs the same
    traceback again; this one is the end of the line. The exception's text stays in the log:
    it may carry internals (SQL, paths, tokens) that are nobody's business outside.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception:
            log.exception("unexpected error answering %s %s", scope.get("method"), scope.get("path"))
            if not started:  # otherwise the status line is gone: the truncated answer says enough
                await _send_error(send, _INTERNAL)


_INTERNAL = BrokerError(
    "internal error: the broker failed to answer this request",
    hint="try again; if it persists, tell the broker's operator",
)


async def _send_error(send: Send, error: BrokerError) -> None:
    response = JSONResponse(error.body(), status_code=error.status)
    await response({"type": "http"}, _empty_receive, send)


async def _empty_receive() -> Message:
    return {"type": "http.disconnect"}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query"))
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid")))
    return "invalid request: " + "; ".join(parts)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BrokerError)
    async def broker_error(_request: Request, exc: BrokerError) -> Response:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> Response:
        err = InvalidRequest(_validation_message(exc), hint="see `access --help` for the expected form")
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        err: BrokerError
        if exc.status_code == 404:
            err = NotFound("no such endpoint")
        elif exc.status_code == 405:
            err = InvalidRequest("method not allowed on this endpoint")
        else:
            err = InvalidRequest(str(exc.detail))
        return JSONResponse(err.body(), status_code=exc.status_code if exc.status_code < 500 else 500)

    async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
        # Starlette answers an unknown WebSocket path with a bare close (uvicorn sends 403);
        # a 404 with the usual JSON body says what is actually wrong, as for plain requests.
        if scope["type"] == "websocket" and "websocket.http.response" in scope.get("extensions", {}):
            err = NotFound("no such endpoint")
            await WebSocket(scope, receive, send).send_denial_response(
                JSONResponse(err.body(), status_code=err.status, headers={"Cache-Control": "no-store"})
            )
            return
        location = _without_trailing_slash(app, scope)
        if location is not None:
            await RedirectResponse(location, status_code=307)(scope, receive, send)
            return
        await starlette_not_found(scope, receive, send)

    starlette_not_found = app.router.not_found
    app.router.default = not_found

    @app.exception_handler(sa.exc.SQLAlchemyError)
    async def database_error(_request: Request, exc: sa.exc.SQLAlchemyError) -> Response:
        log.error("database error: %s", exc.__class__.__name__)
        err = database_unavailable()
        return JSONResponse(err.body(), status_code=err.status)


def _without_trailing_slash(app: FastAPI, scope: Scope) -> str | None:
    """``/device/`` -> ``<public URL>/device`` when that is a route, else None.

    Starlette's own ``redirect_slashes`` builds the Location from the request's Host header, so
    ``Host: evil.example`` would send people to another site; this one always names the
    broker's configured public URL (``broker.base_url``).
    """
    path: str = scope["path"]
    if scope["type"] != "http" or path == "/" or not path.endswith("/"):
        return None
    stripped = {**scope, "path": path.rstrip("/") or "/"}
    if not any(route.matches(stripped)[0] is not Match.NONE for route in app.router.routes):
        return None
    raw = scope.get("raw_path") or quote(path).encode()
    location = app.state.broker.base_url + raw.decode("latin-1").rstrip("/")
    query: bytes = scope.get("query_string", b"")
    return f"{location}?{query.decode('latin-1')}" if query else location


def _background_loops(broker: Broker) -> list[Loop]:
    from access.broker.audit.checkpoints import CheckpointLoop
    from access.broker.audit.sink import AuditSinkLoop
    from access.broker.audit.statements import StatementFlushLoop
    from access.broker.events.outbox import OutboxLoop
    from access.broker.grants import ExpiryLoop
    from access.broker.identities.reconcile import ReconcileLoop
    from access.broker.notifications.delivery import WEBHOOK, WebhookLoop
    from access.broker.rollout import PolicyWatch
    from access.broker.tunnel.closes import CloseRetryLoop
    from access.broker.tunnel.registry import TunnelWatch

    watch, policy = TunnelWatch(broker), PolicyWatch(broker)
    loops: list[Loop] = [
        CheckpointLoop(broker),
        ExpiryLoop(broker),
        OutboxLoop(broker, skip=(WEBHOOK,)),  # webhooks wait on others' servers: in a loop of their own
        WebhookLoop(broker),
        *([AuditSinkLoop(broker)] if broker.settings.audit_sink_url else []),  # audit/sink.py
        watch,
        CloseRetryLoop(broker),
        StatementFlushLoop(broker),
        ReconcileLoop(broker),
        policy,
    ]
    if broker.settings.listens:
        from access.broker.events.listen import SignalListener

        # Other processes' ends at once; after every reconnection the polls read what was missed,
        # and while it is not listening the tunnel watch polls at its quick interval.
        watch.listener = SignalListener(broker, resync=[watch.wake, policy.wake], policy_changed=policy.wake)
        loops.append(watch.listener)
    return loops


def create_app(broker: Broker, *, background: bool = True) -> FastAPI:
    """Build the ASGI app around ``broker``. ``background=False`` skips the loops (in-process tests)."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        from access.broker.tunnel.closes import InstanceLoop, stop_instance

        tasks: list[asyncio.Task[Any]] = []
        if background:
            # Before serving: this process's heartbeat, and the closes dead processes still owe.
            instance = InstanceLoop(broker)
            await instance.step()
            tasks = [asyncio.create_task(loop.run()) for loop in [instance, *_background_loops(broker)]]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if background:
                from access.broker.audit.checkpoints import write_checkpoint
                from access.broker.audit.statements import statement_log_for

                stop_by = time.monotonic() + _STOP_WRITE_TIMEOUT
                await asyncio.to_thread(statement_log_for(broker).stop, stop_by)
                await asyncio.to_thread(stop_instance, broker, stop_by)
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(write_checkpoint, broker)

    from access.broker.api import health, oauth
    from access.broker.api import metrics as metrics_route
    from access.broker.api import router as api
    from access.broker.api.grants import GrantRequestFastPath
    from access.broker.api.schema import openapi_schema
    from access.broker.web import apidocs
    from access.broker.web import device as device_page
    from access.broker.web import inbox as inbox_page
    from access.broker.web import inbox_mfa as inbox_mfa_page
    from access.broker.web import oidc as oidc_page

    app = FastAPI(
        title="access broker",
        version="0.1.0",
        lifespan=lifespan,
        description="Just-in-time, audited access to services: the JSON API under /v1 and OAuth 2.0.",
        docs_url=None,  # /docs is web/apidocs.py: Swagger UI served from the package, no CDN
        redoc_url=None,
        redirect_slashes=False,  # Starlette's would trust the Host header: see _without_trailing_slash
    )
    app.state.broker = broker
    app.state.grant_writer = GrantWriter(broker)  # POST /v1/grants, in turn (grants.batch)
    app.openapi = lambda: openapi_schema(app)  # type: ignore[method-assign]  # FastAPI's documented way
    _install_error_handlers(app)
    # The JSON API first: a request's route is found by trying each in turn (about 20 us each on
    # FastAPI's included routers), and /v1 is what clients call most. No other path is under /v1.
    app.include_router(api.router)
    # Before every route: POST /v1/grants without FastAPI's routing and dependency solving
    # for a well-formed request (anything else goes on to its FastAPI route).
    app.router.routes.insert(0, GrantRequestFastPath())
    app.include_router(health.router)
    app.include_router(metrics_route.router)
    app.include_router(oauth.router)
    app.include_router(device_page.router)
    app.include_router(inbox_mfa_page.router)  # before the inbox's /inbox/{grant_id}
    app.include_router(inbox_page.router)
    app.include_router(oidc_page.router)
    app.include_router(apidocs.router)
    app.add_middleware(BodySizeLimit, limit=MAX_JSON_BODY_BYTES)
    app.add_middleware(CatchAll)  # it sees what the others raise
    # Outermost: every answer, the catch-all's 500s too, gets a request id, a log line, a count.
    app.add_middleware(RequestLog, metrics=metrics_for(broker))
    return app
