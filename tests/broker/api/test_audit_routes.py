"""The /v1 routes for services, grants and audit, through the ASGI app with real access tokens."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from access.broker.clock import FakeClock
from access.broker.runtime import Broker
from access.shared.models import AuditPage, Grant, ServiceInfo
from tests.broker.conftest import add_user, login

pytestmark = pytest.mark.anyio


def bearer(broker: Broker, name: str, groups: tuple[str, ...]) -> dict[str, str]:
    tokens = login(broker, add_user(broker, name, groups))
    return {"authorization": f"Bearer {tokens.access_token}"}


@pytest.fixture
def alice(broker: Broker) -> dict[str, str]:
    return bearer(broker, "alice", ("sre",))  # sre: may request svc-payments and read the audit log


@pytest.fixture
def robot(broker: Broker) -> dict[str, str]:
    return bearer(broker, "robot", ("ci",))  # ci: read on svc-payments only, no audit


async def request(client: httpx.AsyncClient, headers: dict[str, str], **body: str) -> httpx.Response:
    payload = {"service": "svc-payments", "scope": "read", "ttl": "30m", "reason": "INC-123", **body}
    return await client.post("/v1/grants", json=payload, headers=headers)


async def test_services_lists_what_the_caller_may_request(
    client: httpx.AsyncClient, alice: dict[str, str], robot: dict[str, str]
) -> None:
    response = await client.get("/v1/services", headers=alice)
    assert response.status_code == 200
    services = [ServiceInfo.model_validate(s) for s in response.json()]
    assert [(s.name, s.kind, [(x.scope, x.max_ttl_seconds) for x in s.scopes]) for s in services] == [
        ("svc-payments", "postgres", [("read", 1800), ("write", 1800)])
    ]
    response = await client.get("/v1/services", headers=robot)
    assert [(s["name"], [x["scope"] for x in s["scopes"]]) for s in response.json()] == [
        ("svc-payments", ["read"])
    ]


async def test_routes_need_a_token(client: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/v1/services"),
        ("POST", "/v1/grants"),
        ("GET", "/v1/grants"),
        ("GET", "/v1/audit"),
    ]:
        response = await client.request(method, path)
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "unauthenticated"


async def test_request_list_get_revoke(
    client: httpx.AsyncClient, broker: Broker, alice: dict[str, str]
) -> None:
    response = await request(client, alice)
    assert response.status_code == 201, response.text
    grant = Grant.model_validate(response.json())
    assert (grant.state, grant.seconds_left, grant.reason) == ("active", 1800, "INC-123")

    listed = (await client.get("/v1/grants", headers=alice)).json()
    assert [g["id"] for g in listed] == [grant.id]
    assert (await client.get(f"/v1/grants/{grant.id}", headers=alice)).json()["state"] == "active"

    revoked = await client.post(f"/v1/grants/{grant.id}/revoke", headers=alice)
    assert revoked.status_code == 200
    assert revoked.json()["state"] == "revoked"
    assert (await client.get("/v1/grants", headers=alice)).json() == []
    every = (await client.get("/v1/grants", params={"all": "true"}, headers=alice)).json()
    assert [(g["id"], g["state"]) for g in every] == [(grant.id, "revoked")]
    # Revoking an ended grant answers it as it is: 200, unchanged (issue 9: idempotent revoke).
    again = await client.post(f"/v1/grants/{grant.id}/revoke", headers=alice)
    assert (again.status_code, again.json()["state"]) == (200, "revoked")
    assert again.json()["ended_at"] == revoked.json()["ended_at"]


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        ({"ttl": "2h"}, 403, "grant_denied", "ttl 2h is over the maximum 30m for read on svc-payments"),
        ({"ttl": "0m"}, 400, "invalid_request", "the maximum for read on svc-payments is 30m"),
        ({"service": "svc-nope"}, 404, "not_found", "no service named 'svc-nope'"),
        ({"scope": "admin"}, 400, "invalid_request", "svc-payments has no scope 'admin'"),
        ({"service": "svc-cache"}, 403, "grant_denied", "no policy rule gives alice read on svc-cache"),
        ({"target": "10.0.0.1:22"}, 400, "invalid_request", "target"),  # the client never names the target
    ],
)
async def test_refusals(
    client: httpx.AsyncClient,
    alice: dict[str, str],
    body: dict[str, str],
    status: int,
    code: str,
    message: str,
) -> None:
    response = await request(client, alice, **body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert message in error["message"]


async def test_unknown_grant_is_404(client: httpx.AsyncClient, alice: dict[str, str]) -> None:
    response = await client.get("/v1/grants/g-nothing", headers=alice)
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")


async def test_someone_elses_grant_answers_like_a_missing_one(
    client: httpx.AsyncClient, broker: Broker, robot: dict[str, str]
) -> None:
    other = bearer(broker, "robot-2", ("ci",))  # no audit reader: may not see robot's grants
    response = await request(client, robot, ttl="15m")
    assert response.status_code == 201, response.text
    theirs = response.json()["id"]
    missing = "g-" + "0" * (len(theirs) - 2)
    for suffix in ("", "/connection", "/revoke"):
        method = "POST" if suffix == "/revoke" else "GET"
        answers = [
            await client.request(method, f"/v1/grants/{grant_id}{suffix}", headers=other)
            for grant_id in (theirs, missing)
        ]
        shapes = [
            (r.status_code, r.text.replace(i, "ID")) for r, i in zip(answers, (theirs, missing), strict=True)
        ]
        assert shapes[0] == shapes[1], suffix
        assert answers[0].status_code == 404
        assert answers[0].json()["error"]["code"] == "not_found"
    # The owner still gets the details.
    assert (await client.get(f"/v1/grants/{theirs}/connection", headers=robot)).status_code == 200


async def test_audit_for_readers_newest_first_with_filters(client: httpx.AsyncClient, broker: Broker) -> None:
    clock = broker.clock
    assert isinstance(clock, FakeClock)
    robot = bearer(broker, "robot", ("ci",))
    user = add_user(broker, "alice", ("sre",))
    assert (await request(client, robot, ttl="10m")).status_code == 201
    clock.advance(timedelta(hours=2))  # access tokens live 15 minutes: sign in again
    alice = {"authorization": f"Bearer {login(broker, user).access_token}"}
    assert (await request(client, alice, ttl="2h")).status_code == 403

    page = AuditPage.model_validate((await client.get("/v1/audit", headers=alice)).json())
    seqs = [e.seq for e in page.entries]
    assert seqs == sorted(seqs, reverse=True)
    assert [e.action for e in page.entries][:2] == ["grant.deny", "grant.request"]

    response = await client.get(
        "/v1/audit", params={"service": "svc-payments", "actor": "robot"}, headers=alice
    )
    assert [(e["actor"], e["action"]) for e in response.json()["entries"]] == [
        ("robot", "grant.issue"),
        ("robot", "grant.request"),
    ]
    response = await client.get("/v1/audit", params={"since": "1h", "service": "svc-payments"}, headers=alice)
    assert [e["action"] for e in response.json()["entries"]] == ["grant.deny", "grant.request"]
    response = await client.get("/v1/audit", params={"limit": "1"}, headers=alice)
    assert len(response.json()["entries"]) == 1


async def test_audit_is_forbidden_to_others(client: httpx.AsyncClient, robot: dict[str, str]) -> None:
    response = await client.get("/v1/audit", headers=robot)
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "forbidden"
    assert "audit.readers" in error["hint"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"since": "last tuesday"}, "bad since"),
        ({"limit": "0"}, "limit"),
        ({"service": "Bad_Name"}, "bad service name"),
    ],
)
async def test_audit_bad_filters(
    client: httpx.AsyncClient, alice: dict[str, str], params: dict[str, str], message: str
) -> None:
    response = await client.get("/v1/audit", params=params, headers=alice)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]
