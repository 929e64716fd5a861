"""``GET /v1/services`` with a policy that selects by labels through a role: the caller sees the
services the role's entries give, each with its labels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from access.broker.app import create_app
from access.broker.runtime import Broker
from tests.broker.conftest import BASE_URL, add_user, login

pytestmark = pytest.mark.anyio


def _svc(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "tcp",
        "target": f"{name}:7000",
        "labels": labels,
        "scopes": ["read"],
        "max_ttl": "1h",
    }


POLICY = {
    "services": [
        _svc("pay-prod", {"env": "prod", "team": "payments"}),
        _svc("pay-dev", {"env": "dev", "team": "payments"}),
        _svc("ledger", {"team": "ledger"}),
    ],
    "roles": [
        {
            "name": "payments-oncall",
            "members": {"groups": ["oncall"]},
            "allow": [
                {"labels": {"team": "payments"}, "scopes": ["read"], "max_ttl": "30m"},
                {"labels": {"env": "prod"}, "scopes": ["read"], "require": "deny"},
            ],
        }
    ],
}


async def test_services_come_with_their_labels_and_a_deny_by_label_hides_one(
    make_broker: Callable[..., Broker],
) -> None:
    broker = make_broker(policy=POLICY)
    tokens = login(broker, add_user(broker, "alice", ("oncall",)))
    transport = httpx.ASGITransport(app=create_app(broker, background=False))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
        response = await http.get("/v1/services", headers={"authorization": f"Bearer {tokens.access_token}"})
    assert response.status_code == 200
    assert [(s["name"], s["labels"], s["scopes"][0]["max_ttl_seconds"]) for s in response.json()] == [
        ("pay-dev", {"env": "dev", "team": "payments"}, 1800)
    ]
