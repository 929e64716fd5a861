"""FastAPI dependency aliases that keep routes short (``BrokerDep``, ``CurrentPrincipal``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from access.broker.auth.principal import AuthContext
from access.broker.errors import Unauthenticated
from access.broker.runtime import Broker
from access.shared.net import forwarded_client

__all__ = ["BrokerDep", "CurrentPrincipal", "bearer_token", "client_ip", "get_broker", "get_principal"]


def get_broker(request: Request) -> Broker:
    broker: Broker = request.app.state.broker
    return broker


def bearer_token(request: Request) -> str:
    """The bearer token from the Authorization header.

    Raises:
        Unauthenticated: no header, or not a Bearer token.
    """
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("this call needs a bearer token")
    return token.strip()


def client_ip(request: Request) -> str:
    """The client's address: the peer's, or behind a trusted proxy the one it forwarded.

    Used for every per-client decision and record: rate limits, the device page, the ledger.
    ``X-Forwarded-For`` is believed only from ``trusted_proxies`` (see ``shared.net.forwarded_client``).
    """
    peer = request.client.host if request.client else "unknown"
    trusted = get_broker(request).settings.trusted_proxies
    return forwarded_client(peer, request.headers.getlist("x-forwarded-for"), trusted)[:64]


def get_principal(request: Request) -> AuthContext:
    """Verify the bearer token and the session behind it.

    Raises:
        Unauthenticated: missing, expired, forged or revoked token, or a disabled principal.
    """
    from access.broker.auth.tokens import authenticate

    return authenticate(get_broker(request), bearer_token(request))


async def _broker_dependency(request: Request) -> Broker:
    """``get_broker`` as a dependency: a coroutine, so FastAPI runs it on the event loop. A plain
    function dependency is sent to the thread pool and back, a hop per request for an attribute
    read (benchmarks/grants.py)."""
    return get_broker(request)


BrokerDep = Annotated[Broker, Depends(_broker_dependency)]
CurrentPrincipal = Annotated[AuthContext, Depends(get_principal)]
