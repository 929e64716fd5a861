"""The broker's ASGI application: routers, one error handler, request size limits, background loops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from access.broker.errors import BrokerError, InvalidRequest, NotFound, PayloadTooLarge, Unavailable
from access.broker.loops import Loop
from access.broker.runtime import Broker
from access.shared.models import MAX_JSON_BODY_BYTES

__all__ = ["create_app"]

log = logging.getLogger(__name__)


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

    @app.exception_handler(sa.exc.SQLAlchemyError)
    async def database_error(_request: Request, exc: sa.exc.SQLAlchemyError) -> Response:
        log.error("database error: %s", exc.__class__.__name__)
        err = Unavailable(
            "the broker's database is unavailable, so nothing was changed", hint="try again shortly"
        )
        return JSONResponse(err.body(), status_code=err.status)


def _background_loops(broker: Broker) -> list[Loop]:
    from access.broker.audit.checkpoints import CheckpointLoop
    from access.broker.events.outbox import OutboxLoop
    from access.broker.grants import ExpiryLoop
    from access.broker.tunnel.registry import TunnelWatch

    return [CheckpointLoop(broker), ExpiryLoop(broker), OutboxLoop(broker), TunnelWatch(broker)]


def create_app(broker: Broker, *, background: bool = True) -> FastAPI:
    """Build the ASGI app around ``broker``. ``background=False`` skips the loops (in-process tests)."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        tasks: list[asyncio.Task[Any]] = []
        if background:
            tasks = [asyncio.create_task(loop.run()) for loop in _background_loops(broker)]
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

                with contextlib.suppress(Exception):
                    await asyncio.to_thread(write_checkpoint, broker)

    from access.broker.api import health, oauth
    from access.broker.api import router as api
    from access.broker.web import device as device_page

    app = FastAPI(
        title="access broker",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.broker = broker
    _install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(oauth.router)
    app.include_router(device_page.router)
    app.include_router(api.router)
    app.add_middleware(BodySizeLimit, limit=MAX_JSON_BODY_BYTES)
    return app
