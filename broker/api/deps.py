"""FastAPI dependency aliases that keep routes short (``BrokerDep``, ``CurrentPrincipal``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from access.broker.auth.principal import AuthContext
from access.broker.errors import Unauthenticated
from access.broker.runtime import Broker
from access.shared.net import forwarded_client

__all__ = ["BrokerDep", "CurrentPrincipal", "client_ip", "get_broker", "get_principal"]

# Declares the Bearer scheme in the OpenAPI schema (and on every route that authenticates); it
# raises nothing itself (``auto_error=False``): get_principal answers a missing token in our shape.
_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="an access token from `access login` (the device flow) or POST /oauth/token",
)


def get_broker(request: Request) -> Broker:
    broker: Broker = request.app.state.broker
    return broker


def client_ip(request: Request) -> str:
    """The client's address: the peer's, or behind a trusted proxy the one it forwarded.

    Used for every per-client decision and record: rate limits, the device page, the ledger.
    ``X-Forwarded-For`` is believed only from ``trusted_proxies`` (see ``shared.net.forwarded_client``).
    """
    peer = request.client.host if request.client else "unknown"
    trusted = get_broker(request).settings.trusted_proxies
    return forwarded_client(peer, request.headers.getlist("x-forwarded-for"), trusted)[:64]


def get_principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)]
) -> AuthContext:
    """Verify the bearer token and the session behind it.

    Raises:
        Unauthenticated: no Bearer token; a missing, expired, forged or revoked one; a disabled
            principal.
    """
    from access.broker.auth.tokens import authenticate

    token = credentials.credentials.strip() if credentials is not None else ""
    if not token:
        raise Unauthenticated("this call needs a bearer token")
    ctx = authenticate(get_broker(request), token)
    request.state.principal = ctx.name  # for the request's log line (observe.requests)
    return ctx


async def _broker_dependency(request: Request) -> Broker:
    """``get_broker`` as a dependency: a coroutine, so FastAPI runs it on the event loop. A plain
    function dependency is sent to the thread pool and back, a hop per request for an attribute
    read (benchmarks/grants.py)."""
    return get_broker(request)


BrokerDep = Annotated[Broker, Depends(_broker_dependency)]
CurrentPrincipal = Annotated[AuthContext, Depends(get_principal)]
