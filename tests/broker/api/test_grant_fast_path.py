"""POST /v1/grants' fast path (``api.grants.GrantRequestFastPath``) answers as the FastAPI route
does: the same status and JSON for a good request and for every refusal (no token, another
scheme, a forged token, another content type, bad JSON, a body that is no valid request, a
body over the limit), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from access.broker.api.grants import GrantRequestFastPath
from access.broker.runtime import Broker
from access.shared.models import MAX_JSON_BODY_BYTES
from tests.broker.conftest import BASE_URL, add_user, login

pytestmark = pytest.mark.anyio

GOOD = {"service": "svc-payments", "scope": "read", "ttl": "30m", "reason": "INC-1"}


def _without_fast_path(broker: Broker) -> FastAPI:
    from access.broker.app import create_app

    app = create_app(broker, background=False)
    app.router.routes[:] = [r for r in app.router.routes if not isinstance(r, GrantRequestFastPath)]
    return app


@pytest.fixture
async def clients(any_broker: Broker) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    from access.broker.app import create_app

    fast = httpx.ASGITransport(app=create_app(any_broker, background=False), client=("192.0.2.7", 50000))
    slow = httpx.ASGITransport(app=_without_fast_path(any_broker), client=("192.0.2.7", 50000))
    async with (
        httpx.AsyncClient(transport=fast, base_url=BASE_URL) as a,
        httpx.AsyncClient(transport=slow, base_url=BASE_URL) as b,
    ):
        yield a, b


def test_the_fast_path_is_tried_first_and_only_for_post_v1_grants(broker: Broker) -> None:
    from access.broker.app import create_app

    first = create_app(broker, background=False).router.routes[0]
    assert isinstance(first, GrantRequestFastPath)
    scope: dict[str, Any] = {"type": "http", "path": "/v1/grants", "method": "POST"}
    assert first.matches(scope)[0].name == "FULL"
    assert first.matches({**scope, "method": "GET"})[0].name == "NONE"
    assert first.matches({**scope, "path": "/v1/grants/g-1/revoke"})[0].name == "NONE"


def _shape(answer: httpx.Response) -> tuple[int, Any]:
    body = answer.json()
    if answer.status_code in (201, 202):  # a new grant each time: its own id and times
        body = {k: v for k, v in body.items() if k not in ("id", "created_at", "expires_at")}
    return answer.status_code, body


async def test_the_fast_path_answers_as_the_fastapi_route(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], any_broker: Broker
) -> None:
    token = login(any_broker, add_user(any_broker, "alice", ("sre",))).access_token
    bearer = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    cases: list[tuple[dict[str, str], bytes]] = [
        (bearer, json.dumps(GOOD).encode()),
        (bearer, json.dumps({**GOOD, "ttl": "2h"}).encode()),  # denied by the policy: 403
        (bearer, json.dumps({**GOOD, "service": "svc-nowhere"}).encode()),  # 404
        (bearer, b'{"service": "svc-payments", '),  # bad JSON: 422
        (bearer, b"[1, 2]"),  # JSON, no request: 422
        (bearer, json.dumps({**GOOD, "ttl": 5}).encode()),  # a field of the wrong type: 422
        (bearer, b""),  # no body: 422
        ({"content-type": "application/json"}, json.dumps(GOOD).encode()),  # no token: 401
        ({**bearer, "authorization": "Basic YTpi"}, json.dumps(GOOD).encode()),  # 401
        ({**bearer, "authorization": "Bearer forged"}, json.dumps(GOOD).encode()),  # 401
        ({**bearer, "authorization": "Bearer forged"}, b"[1]"),  # forged and bad body: 401
        ({**bearer, "content-type": "text/plain"}, json.dumps(GOOD).encode()),  # 422
        ({**bearer, "content-type": "application/json; charset=utf-8"}, json.dumps(GOOD).encode()),
        (bearer, b" " * (MAX_JSON_BODY_BYTES + 1)),  # over the limit: 413
    ]
    fast, slow = clients
    for headers, content in cases:
        a = await fast.post("/v1/grants", content=content, headers=headers)
        b = await slow.post("/v1/grants", content=content, headers=headers)
        assert _shape(a) == _shape(b), (headers, content[:40], a.text, b.text)
        assert a.headers.get("content-type") == b.headers.get("content-type")
    assert _shape(await fast.post("/v1/grants", json=GOOD, headers=bearer))[0] == 201


async def test_a_body_sent_in_chunks_over_the_limit_is_refused_as_by_the_route(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], any_broker: Broker
) -> None:
    """No Content-Length: the limit is found while the body is read (the fast path reads it)."""
    token = login(any_broker, add_user(any_broker, "alice", ("sre",))).access_token
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b" " * (MAX_JSON_BODY_BYTES // 2)

    fast, slow = clients
    a = await fast.post("/v1/grants", content=chunks(), headers=headers)
    b = await slow.post("/v1/grants", content=chunks(), headers=headers)
    assert (a.status_code, a.json()) == (b.status_code, b.json())
