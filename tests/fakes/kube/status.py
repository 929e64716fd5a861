"""``meta/v1`` Status bodies, as the API server writes them for refusals and errors."""

from __future__ import annotations

import json
from typing import Any

from tests.fakes.kube.http import Response
from tests.fakes.kube.objects import Kind

__all__ = ["bad_request", "failure", "forbidden", "not_found", "refuse", "status_response", "unauthorized"]

REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    431: "RequestHeaderFieldsTooLarge",
    500: "InternalError",
}


def failure(
    code: int, message: str, details: dict[str, Any] | None = None, reason: str = ""
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or REASONS.get(code, ""),
    }
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


def status_response(body: dict[str, Any]) -> Response:
    return Response(int(body["code"]), json.dumps(body).encode())


def _details(kind: Kind | None, name: str = "") -> dict[str, Any]:
    details: dict[str, Any] = {"name": name} if name else {}
    if kind is not None:
        if kind.group:
            details["group"] = kind.group
        details["kind"] = kind.resource
    return details


def unauthorized() -> Response:
    """What a request without a valid credential gets; kubectl prints "Unauthorized"."""
    return status_response(failure(401, "Unauthorized"))


def not_found(kind: Kind | None = None, name: str = "") -> Response:
    if kind is None:
        return status_response(failure(404, "the server could not find the requested resource", {}))
    return status_response(failure(404, f'{kind.qualified} "{name}" not found', _details(kind, name)))


def forbidden(user: str, verb: str, kind: Kind, namespace: str, name: str, why: str = "") -> Response:
    group = kind.group
    where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    message = f'User "{user}" cannot {verb} resource "{kind.resource}" in API group "{group}" {where}'
    subject = f'{kind.qualified} "{name}"' if name else kind.qualified
    message = f"{subject} is forbidden: {message}" + (f": {why}" if why else "")
    return status_response(failure(403, message, _details(kind, name)))


def bad_request(message: str) -> Response:
    return status_response(failure(400, message))


def refuse(code: int, message: str) -> Response:
    """The server's own refusals (a head or body over its limit), as Status bodies."""
    return status_response(failure(code, message))
