"""POST /v1/grants checks the token's session inside the grant's own transaction
(``grants.request_grant_for``): a revoked session, a disabled principal or a forged token is
refused with 401 and nothing is written: no grant, no ledger entry."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import sqlalchemy as sa

from access.broker.auth import identity
from access.broker.auth.sessions import revoke_session
from access.broker.runtime import Broker
from access.broker.store.tables import audit_log, grants
from tests.broker.conftest import BASE_URL, add_user, login

pytestmark = pytest.mark.anyio

BODY = {"service": "svc-payments", "scope": "read", "ttl": "30m", "reason": "INC-123"}


@pytest.fixture
async def any_client(any_broker: Broker) -> AsyncIterator[httpx.AsyncClient]:
    from access.broker.app import create_app

    app = create_app(any_broker, background=False)
    transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
        yield http


def written(broker: Broker) -> tuple[int, int]:
    """(grants, ledger entries) in the database."""
    with broker.transaction() as conn:
        count = sa.select(sa.func.count())
        return (
            conn.execute(count.select_from(grants)).scalar_one(),
            conn.execute(count.select_from(audit_log)).scalar_one(),
        )


async def refused(
    client: httpx.AsyncClient, broker: Broker, token: str, says: str, body: object = BODY
) -> None:
    before = written(broker)
    answer = await client.post("/v1/grants", json=body, headers={"authorization": f"Bearer {token}"})
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"]["code"] == "unauthenticated"
    assert says in answer.json()["error"]["message"]
    assert written(broker) == before


async def test_a_live_session_gets_its_grant(any_client: httpx.AsyncClient, any_broker: Broker) -> None:
    issued = login(any_broker, add_user(any_broker, "alice", ("sre",)))
    before = written(any_broker)
    answer = await any_client.post(
        "/v1/grants", json=BODY, headers={"authorization": f"Bearer {issued.access_token}"}
    )
    assert answer.status_code == 201, answer.text
    assert (answer.json()["subject"], answer.json()["state"]) == ("alice", "active")
    assert answer.headers["content-type"] == "application/json"
    assert written(any_broker) == (before[0] + 1, before[1] + 2)  # grant.request, grant.issue


async def test_a_revoked_session_is_refused_and_nothing_is_written(
    any_client: httpx.AsyncClient, any_broker: Broker
) -> None:
    issued = login(any_broker, add_user(any_broker, "alice", ("sre",)))
    first = await any_client.post(
        "/v1/grants", json=BODY, headers={"authorization": f"Bearer {issued.access_token}"}
    )
    assert first.status_code == 201  # the token's signature is now kept (auth.tokencache)
    with any_broker.transaction() as conn:
        revoke_session(conn, any_broker.clock, issued.session_id, "logout")
    await refused(any_client, any_broker, issued.access_token, "signed out or revoked")


async def test_a_disabled_principal_is_refused_and_nothing_is_written(
    any_client: httpx.AsyncClient, any_broker: Broker
) -> None:
    issued = login(any_broker, add_user(any_broker, "alice", ("sre",)))
    identity.disable_principal(any_broker, "alice", "admin:test")
    await refused(any_client, any_broker, issued.access_token, "signed out or revoked")


async def test_a_forged_token_is_refused_before_its_body_is_read(
    any_client: httpx.AsyncClient, any_broker: Broker
) -> None:
    issued = login(any_broker, add_user(any_broker, "alice", ("sre",)))
    head, claims, _signature = issued.access_token.split(".")
    forged = f"{head}.{claims}.{'A' * 86}"
    await refused(any_client, any_broker, forged, "invalid or forged")
    await refused(any_client, any_broker, forged, "invalid or forged", body={"service": 5})  # 401, not 422
