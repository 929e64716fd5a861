"""The approval routes through the ASGI app with real access tokens: 202 for a pending request,
approve and deny, /v1/reviews, who may see a pending grant, and the 409 a loser gets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from access.broker.runtime import Broker
from tests.broker.api.test_audit_routes import bearer
from tests.broker.conftest import BASE_URL
from tests.broker.grants.test_approvals import policy_with

pytestmark = pytest.mark.anyio


@pytest.fixture
def broker(make_broker: Callable[..., Broker]) -> Broker:
    return make_broker(policy=policy_with({"groups": ["leads"], "count": 2}))


@pytest.fixture
async def client(broker: Broker) -> AsyncIterator[httpx.AsyncClient]:
    from access.broker.app import create_app

    transport = httpx.ASGITransport(app=create_app(broker, background=False), client=("192.0.2.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
        yield http


async def test_a_request_waits_is_reviewed_and_issued(client: httpx.AsyncClient, broker: Broker) -> None:
    alice = bearer(broker, "alice", ("sre",))
    bob, carol = bearer(broker, "bob", ("leads",)), bearer(broker, "carol", ("leads",))
    eve = bearer(broker, "eve", ("marketing",))
    services = (await client.get("/v1/services", headers=alice)).json()
    assert [(s["scope"], s["requirement"], s["reviewers"]) for s in services[0]["scopes"]] == [
        ("read", "auto", None),
        ("write", "approval", "2 of group:leads"),
    ]
    body = {"service": "svc-payments", "scope": "write", "ttl": "20m", "reason": "INC-9"}
    asked = await client.post("/v1/grants", json=body, headers=alice)
    assert asked.status_code == 202, asked.text
    grant = asked.json()
    assert (grant["state"], grant["ttl_seconds"], grant["review"]["missing"]) == (
        "pending",
        1200,
        "2 more of group:leads",
    )
    gid = grant["id"]
    assert [g["id"] for g in (await client.get("/v1/reviews", headers=bob)).json()] == [gid]
    assert (await client.get("/v1/reviews", headers=alice)).json() == []
    seen = (await client.get(f"/v1/grants/{gid}", headers=bob)).json()
    assert seen["review"]["can_review"] is True
    assert seen["review"]["clauses"] == [
        {"count": 2, "reviewers": ["group:leads"], "approved_by": [], "missing": 2}
    ]
    assert (await client.get(f"/v1/grants/{gid}", headers=eve)).status_code == 404  # ids do not leak
    assert (await client.post(f"/v1/grants/{gid}/approve", json={}, headers=eve)).status_code == 404
    own = await client.post(f"/v1/grants/{gid}/approve", json={}, headers=alice)
    assert (own.status_code, own.json()["error"]["code"]) == (403, "forbidden")
    first = await client.post(f"/v1/grants/{gid}/approve", json={"comment": "fine"}, headers=bob)
    assert (first.status_code, first.json()["state"]) == (200, "pending")
    again = await client.post(f"/v1/grants/{gid}/approve", json={}, headers=bob)
    assert (again.status_code, again.json()["error"]["code"]) == (409, "conflict")
    done = await client.post(f"/v1/grants/{gid}/approve", json={}, headers=carol)
    assert (done.status_code, done.json()["state"]) == (200, "active")
    assert done.json()["approved_at"] is not None and done.json()["seconds_left"] == 1200
    late = await client.post(f"/v1/grants/{gid}/deny", json={"reason": "no"}, headers=bob)
    assert late.status_code == 409 and "already approved by bob, carol at" in late.json()["error"]["message"]


async def test_deny_needs_a_reason_and_ends_the_request(client: httpx.AsyncClient, broker: Broker) -> None:
    alice, bob = bearer(broker, "alice", ("sre",)), bearer(broker, "bob", ("leads",))
    body = {"service": "svc-payments", "scope": "write", "ttl": "20m"}
    gid = (await client.post("/v1/grants", json=body, headers=alice)).json()["id"]
    missing = await client.post(f"/v1/grants/{gid}/deny", json={}, headers=bob)
    assert missing.status_code == 400
    denied = await client.post(f"/v1/grants/{gid}/deny", json={"reason": "freeze"}, headers=bob)
    assert (denied.status_code, denied.json()["state"]) == (200, "denied")
    assert [(a["reviewer"], a["decision"], a["comment"]) for a in denied.json()["review"]["approvals"]] == [
        ("bob", "deny", "freeze")
    ]
