"""The OpenAPI schema (``/openapi.json``) as clients meet the broker, and the error responses routes declare.

Every error of the JSON API has the broker's one shape (``shared.models.ErrorBody``), and a body
or parameter that does not validate is answered 400 in it (``app.py``). FastAPI would document a
422 with its own validation body on every route that takes input, an answer the broker never
gives, so :func:`openapi_schema` takes it out. ``tests/broker/api/test_schema.py`` runs
schemathesis against this schema: an answer it does not document is a failure there.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from access.shared.models import ErrorBody

__all__ = ["API_ERRORS", "ERROR_DESCRIPTIONS", "errors", "openapi_schema"]

ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "invalid request: a body, parameter or value that does not validate (nothing changed)",
    401: "no, expired, forged or revoked bearer token: run `access login`",
    403: "not allowed: the policy said no, a lock is in force, or a recent second factor is needed",
    404: "no such service or grant (or not one the caller may see)",
    409: "conflict: already decided, ended or reviewed",
    410: "expired: the grant or its review ran out",
    413: "request body over the broker's limit",
    429: "rate limited: try again later",
    500: "internal error: the broker failed to answer (its log has the details)",
    502: "the service behind the grant refused or failed a step (a per-grant identity)",
    503: "the broker's database or ledger is unavailable: it fails closed, nothing changed",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for these error statuses, each with the broker's error body."""
    return {status: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


# What any call of the JSON API may meet, whatever it asks.
API_ERRORS = errors(400, 401, 413, 500, 503)


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, built once: FastAPI's, without the 422 the broker never sends."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        # /v1 after the sign-in's routes, as ever, though create_app tries /v1 first (for speed;
        # sorted is stable, so each group keeps its own order).
        paths = schema.get("paths", {})
        schema["paths"] = dict(sorted(paths.items(), key=lambda item: item[0].startswith("/v1")))
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        components = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema
