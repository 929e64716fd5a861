"""OAuth 2.0 endpoints: device authorization (RFC 8628), token, revocation (RFC 7009), metadata (RFC 8414).

Errors here use RFC 6749's ``{"error", "error_description"}`` (``tokens.OAuthError``), as
OAuth clients expect; token responses are never cached.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import unquote_plus

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from access.broker.api.deps import BrokerDep, client_ip
from access.broker.api.oauth_schema import (
    DeviceAuthorizationForm,
    RevokeForm,
    ServerMetadata,
    TokenForm,
    TokenResponse,
    form_body,
    oauth_errors,
)
from access.broker.auth import device, exchange, sessions
from access.broker.auth.tokens import AUDIENCE, OAuthError
from access.broker.errors import BrokerError, PayloadTooLarge
from access.shared.oauth import (
    ACCESS_TOKEN_TYPE,
    DEVICE_GRANT_TYPE,
    ID_TOKEN_TYPE,
    JWT_TOKEN_TYPE,
    TOKEN_EXCHANGE_GRANT_TYPE,
)

__all__ = ["router"]

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_MAX_PARAM = 4096


class _NoStoreRoute(APIRoute):
    """Renders errors here too with ``Cache-Control: no-store`` (RFC 6749 sections 5.1, 5.2).

    The app's error handler would render them without it; an error from the token endpoint
    can echo what the client sent, and no cache should keep it.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def no_store(request: Request) -> Response:
            try:
                response = await handler(request)
            except BrokerError as exc:
                response = JSONResponse(exc.body(), status_code=exc.status)
                if exc.status == 401:  # RFC 6749 section 5.2: invalid_client names the scheme
                    response.headers["WWW-Authenticate"] = 'Basic realm="access"'
            response.headers.update(_NO_STORE)
            return response

        return no_store


router = APIRouter(tags=["oauth"], route_class=_NoStoreRoute)


def _json(body: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=_NO_STORE)


async def _form(request: Request) -> dict[str, str]:
    """The request's form parameters, each given at most once (RFC 6749 section 3.2).

    Raises:
        OAuthError: ``invalid_request`` for a body that is not a form, a repeated or an
            oversized parameter.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "send parameters as application/x-www-form-urlencoded")
    try:
        form = await request.form()
    except PayloadTooLarge as exc:
        raise OAuthError("invalid_request", exc.message, status=413) from exc
    except Exception as exc:  # malformed bodies: python-multipart raises several types
        raise OAuthError("invalid_request", "the form body could not be parsed") from exc
    params: dict[str, str] = {}
    for key in form:
        values = form.getlist(key)
        if len(values) != 1 or not isinstance(values[0], str):
            raise OAuthError("invalid_request", f"parameter {key[:40]!r} must be given once, as text")
        if len(values[0]) > _MAX_PARAM:
            raise OAuthError("invalid_request", f"parameter {key[:40]!r} is too long")
        params[key] = values[0]
    return params


def _required(params: dict[str, str], name: str) -> str:
    value = params.get(name, "")
    if not value:
        raise OAuthError("invalid_request", f"missing parameter {name!r}")
    return value


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    """Client id and secret from HTTP Basic (form-urlencoded inside, per RFC 6749 section 2.3.1)."""
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise OAuthError("invalid_client", "malformed HTTP Basic credentials") from exc
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise OAuthError("invalid_client", "malformed HTTP Basic credentials")
    return unquote_plus(client_id), unquote_plus(secret)


def _client_secret(request: Request, params: dict[str, str]) -> tuple[str, str]:
    basic = _basic_credentials(request)
    in_form = "client_secret" in params
    if basic is not None and in_form:
        raise OAuthError("invalid_request", "authenticate the client one way: HTTP Basic or form, not both")
    if basic is not None:
        return basic
    if not in_form or not params.get("client_id"):
        raise OAuthError("invalid_client", "client_credentials needs client_id and client_secret")
    return params["client_id"], params["client_secret"]


@router.post(
    "/oauth/device_authorization",
    openapi_extra=form_body(DeviceAuthorizationForm),
    responses={200: {"model": device.DeviceAuthorization}, **oauth_errors()},
)
async def device_authorization(request: Request, broker: BrokerDep) -> JSONResponse:
    """RFC 8628 section 3.1: start a device login. Form: ``client_id``, optional ``client_host``,
    optional ``mfa=true`` (step-up, ``access login --mfa``: the sign-in must have a second factor)."""
    params = await _form(request)
    client_id = _required(params, "client_id")
    mfa = params.get("mfa", "false")
    if mfa not in ("true", "false"):
        raise OAuthError("invalid_request", "mfa must be true or false")
    auth = await run_in_threadpool(
        device.start, broker, client_id, params.get("client_host"), client_ip(request), mfa == "true"
    )
    return _json(auth.to_response())


@router.post(
    "/oauth/token",
    openapi_extra=form_body(TokenForm),
    responses={200: {"model": TokenResponse}, **oauth_errors()},
)
async def token(request: Request, broker: BrokerDep) -> JSONResponse:
    """The token endpoint: device_code, refresh_token, client_credentials and token-exchange grants."""
    params = await _form(request)
    grant_type = _required(params, "grant_type")
    if grant_type == DEVICE_GRANT_TYPE:
        code, client_id = _required(params, "device_code"), _required(params, "client_id")
        tokens = await run_in_threadpool(device.exchange, broker, code, client_id)
    elif grant_type == "refresh_token":
        raw = _required(params, "refresh_token")
        tokens = await run_in_threadpool(sessions.refresh, broker, raw, params.get("client_id"))
    elif grant_type == "client_credentials":
        client_id, secret = _client_secret(request, params)
        tokens = await run_in_threadpool(
            sessions.client_credentials, broker, client_id, secret, client_ip(request)
        )
    elif grant_type == TOKEN_EXCHANGE_GRANT_TYPE:
        subject_token = _exchange_params(params, broker.base_url)
        tokens = await run_in_threadpool(
            exchange.exchange_ci_token, broker, subject_token, client_ip(request)
        )
        return _json({**tokens.to_response(), "issued_token_type": ACCESS_TOKEN_TYPE})
    else:
        raise OAuthError("unsupported_grant_type", f"unsupported grant_type {grant_type[:100]!r}")
    return _json(tokens.to_response())


def _exchange_params(params: dict[str, str], base_url: str) -> str:
    """The subject token of an RFC 8693 request, after checking what else it asks for.

    ``audience``/``resource``, when given, must name this broker; ``requested_token_type`` an
    access token; ``scope`` and ``actor_token`` (delegation) are refused rather than ignored, so
    a client never believes it got something it did not.
    """
    subject_token = _required(params, "subject_token")
    token_type = _required(params, "subject_token_type")
    if token_type not in (JWT_TOKEN_TYPE, ID_TOKEN_TYPE):
        raise OAuthError("invalid_request", f"subject_token_type must be {JWT_TOKEN_TYPE} or {ID_TOKEN_TYPE}")
    requested = params.get("requested_token_type", ACCESS_TOKEN_TYPE)
    if requested != ACCESS_TOKEN_TYPE:
        raise OAuthError("invalid_request", f"this broker issues only {ACCESS_TOKEN_TYPE}")
    for name in ("audience", "resource"):
        if name in params and params[name] not in (base_url, AUDIENCE):
            raise OAuthError("invalid_target", f"{name} must be {base_url} (this broker) or left out")
    if "scope" in params:
        raise OAuthError(
            "invalid_scope", "scope is not supported: the trust rule decides the service account"
        )
    if "actor_token" in params:
        raise OAuthError("invalid_request", "actor_token (delegation) is not supported")
    return subject_token


@router.post(
    "/oauth/revoke",
    openapi_extra=form_body(RevokeForm),
    responses={
        200: {
            "description": "revoked, or nothing to revoke",
            "content": {"application/json": {"schema": {"type": "object", "maxProperties": 0}}},
        },
        **oauth_errors(),
    },
)
async def revoke(request: Request, broker: BrokerDep) -> JSONResponse:
    """RFC 7009: revoke the session behind a refresh or access token. Always 200 for a well-formed call."""
    params = await _form(request)
    raw = _required(params, "token")
    await run_in_threadpool(sessions.revoke_token, broker, raw)
    return _json({})


@router.get("/.well-known/oauth-authorization-server", responses={200: {"model": ServerMetadata}})
def metadata(broker: BrokerDep) -> JSONResponse:
    """RFC 8414 authorization server metadata."""
    base = broker.base_url
    return JSONResponse(
        {
            "issuer": base,
            "token_endpoint": f"{base}/oauth/token",
            "device_authorization_endpoint": f"{base}/oauth/device_authorization",
            "revocation_endpoint": f"{base}/oauth/revoke",
            "grant_types_supported": [
                DEVICE_GRANT_TYPE,
                "refresh_token",
                "client_credentials",
                TOKEN_EXCHANGE_GRANT_TYPE,
            ],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
            "revocation_endpoint_auth_methods_supported": ["none"],
            "response_types_supported": [],
        }
    )
