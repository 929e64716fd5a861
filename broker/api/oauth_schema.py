"""What the OAuth endpoints take and answer, as the OpenAPI schema documents them.

The routes (``api/oauth.py``) read their forms by hand, as RFC 6749 asks (each parameter once,
form-encoded only), and answer dicts built by the auth services; these models only describe
those forms and answers, so that ``/openapi.json`` is complete and schemathesis can check the
answers against it (``tests/broker/api/test_schema.py``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from access.broker.api.schema import ERROR_DESCRIPTIONS, errors
from access.shared.models import ErrorBody
from access.shared.oauth import (
    ACCESS_TOKEN_TYPE,
    DEVICE_GRANT_TYPE,
    ID_TOKEN_TYPE,
    JWT_TOKEN_TYPE,
    TOKEN_EXCHANGE_GRANT_TYPE,
)

__all__ = [
    "DeviceAuthorizationForm",
    "OAuthErrorBody",
    "RevokeForm",
    "ServerMetadata",
    "TokenForm",
    "TokenResponse",
    "form_body",
    "oauth_errors",
]

MAX_PARAM = 4096  # the longest value a form parameter may have (``oauth._form``)


class OAuthErrorBody(BaseModel):
    """RFC 6749 section 5.2."""

    error: str = Field(
        description="invalid_request, invalid_client, invalid_grant, authorization_pending, ..."
    )
    error_description: str


class DeviceAuthorizationForm(BaseModel):
    client_id: str = Field(min_length=1, max_length=MAX_PARAM)
    client_host: str | None = Field(default=None, max_length=MAX_PARAM, description="shown to the approver")
    mfa: Literal["true", "false"] = Field(default="false", description="true: a step-up sign-in (TOTP)")


class TokenForm(BaseModel):
    grant_type: Literal[DEVICE_GRANT_TYPE, "refresh_token", "client_credentials", TOKEN_EXCHANGE_GRANT_TYPE]  # type: ignore[valid-type]
    client_id: str | None = Field(default=None, max_length=MAX_PARAM)
    client_secret: str | None = Field(default=None, max_length=MAX_PARAM, description="or HTTP Basic")
    device_code: str | None = Field(default=None, max_length=MAX_PARAM)
    refresh_token: str | None = Field(default=None, max_length=MAX_PARAM)
    subject_token: str | None = Field(default=None, max_length=MAX_PARAM, description="token exchange")
    subject_token_type: Literal[JWT_TOKEN_TYPE, ID_TOKEN_TYPE] | None = None  # type: ignore[valid-type]
    requested_token_type: Literal[ACCESS_TOKEN_TYPE] | None = None  # type: ignore[valid-type]
    audience: str | None = Field(default=None, max_length=MAX_PARAM, description="this broker's URL")
    resource: str | None = Field(default=None, max_length=MAX_PARAM, description="this broker's URL")


class RevokeForm(BaseModel):
    token: str = Field(min_length=1, max_length=MAX_PARAM, description="a refresh or access token")
    token_type_hint: str | None = Field(default=None, max_length=MAX_PARAM)


class TokenResponse(BaseModel):
    """RFC 6749 section 5.1 (and RFC 8693 section 2.2.1's ``issued_token_type``)."""

    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int
    refresh_token: str | None = None
    issued_token_type: str | None = None


class ServerMetadata(BaseModel):
    """RFC 8414 section 2."""

    issuer: str
    token_endpoint: str
    device_authorization_endpoint: str
    revocation_endpoint: str
    grant_types_supported: list[str]
    token_endpoint_auth_methods_supported: list[str]
    revocation_endpoint_auth_methods_supported: list[str]
    response_types_supported: list[str]


def form_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads ``model``'s fields from a form."""
    schema = {"content": {"application/x-www-form-urlencoded": {"schema": model.model_json_schema()}}}
    return {"requestBody": {"required": True, **schema}}


def oauth_errors() -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a form endpoint: RFC 6749 errors, and the broker's own for a 500 or when its
    database is down."""
    described = {
        400: "an RFC 6749 error: invalid_request, invalid_grant, authorization_pending, slow_down, ...",
        401: "invalid_client: the client's id or secret is wrong",
        413: ERROR_DESCRIPTIONS[413],
        429: "temporarily_unavailable: too many attempts, try again later",
    }
    # 503 comes in either shape: RFC 6749's when an upstream provider or a CI issuer's keys cannot
    # be reached (``temporarily_unavailable``), the broker's own when its database cannot.
    either = {
        "anyOf": [{"$ref": f"#/components/schemas/{model.__name__}"} for model in (OAuthErrorBody, ErrorBody)]
    }
    unavailable = "the broker's database, an upstream provider or a CI issuer's keys are out of reach"
    return {
        **{status: {"model": OAuthErrorBody, "description": text} for status, text in described.items()},
        **errors(500),
        503: {"description": unavailable, "content": {"application/json": {"schema": either}}},
    }
