"""FastAPI dependency aliases that keep routes short (``BrokerDep``, ``CurrentPrincipal``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from access.broker.auth.principal import AuthContext
from access.broker.errors import Unauthenticated
from access.broker.runtime import Broker

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
    return request.client.host if request.client else "unknown"


def get_principal(request: Request) -> AuthContext:
    """Verify the bearer token and the session behind it.

    Raises:
        Unauthenticated: missing, expired, forged or revoked token, or a disabled principal.
    """
    from access.broker.auth.tokens import authenticate

    return authenticate(get_broker(request), bearer_token(request))


BrokerDep = Annotated[Broker, Depends(get_broker)]
CurrentPrincipal = Annotated[AuthContext, Depends(get_principal)]
