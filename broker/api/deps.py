"""FastAPI dependency aliases that keep routes short (``BrokerDep``, ``CurrentPrincipal``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from access.broker.auth.principal import AuthContext
from access.broker.auth.tokencache import AccessClaims
from access.broker.errors import Unauthenticated
from access.broker.runtime import Broker
from access.shared.net import forwarded_client

__all__ = [
    "BearerClaims",
    "BrokerDep",
    "CurrentPrincipal",
    "client_ip",
    "get_broker",
    "get_principal",
    "seen_principal",
]

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

    ctx = authenticate(get_broker(request), _bearer_token(credentials))
    seen_principal(request, ctx)
    return ctx


def _bearer_token(credentials: HTTPAuthorizationCredentials | None) -> str:
    token = credentials.credentials.strip() if credentials is not None else ""
    if not token:
        raise Unauthenticated("this call needs a bearer token")
    return token


def seen_principal(request: Request, ctx: AuthContext) -> None:
    """Name the authenticated caller in the request's log line (``observe.requests``)."""
    request.state.principal = ctx.name


async def _bearer_claims(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)]
) -> AccessClaims:
    """The bearer token's signature, type, issuer, audience and times checked (``tokens.
    verify_access_token``, CPU only: on the event loop, no thread-pool hop), NOT its session.

    Raises:
        Unauthenticated: no Bearer token; a malformed, expired or forged one.
    """
    from access.broker.auth.tokens import verify_access_token

    return verify_access_token(get_broker(request), _bearer_token(credentials))


async def _broker_dependency(request: Request) -> Broker:
    """``get_broker`` as a dependency: a coroutine, so FastAPI runs it on the event loop. A plain
    function dependency is sent to the thread pool and back, a hop per request for an attribute
    read (benchmarks/grants.py)."""
    return get_broker(request)


BrokerDep = Annotated[Broker, Depends(_broker_dependency)]
CurrentPrincipal = Annotated[AuthContext, Depends(get_principal)]
# Only for a route whose service checks the session behind the claims itself, inside its own
# transaction (``tokens.session_context(broker, claims, conn)``): a revoked session, an expired
# one or a disabled principal must still be refused there. Every other route: CurrentPrincipal.
BearerClaims = Annotated[AccessClaims, Depends(_bearer_claims)]
