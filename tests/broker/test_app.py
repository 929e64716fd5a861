"""The app's edges: oversized and malformed input, unknown endpoints, and failing closed when the
database or the ledger cannot be written. Every refusal changes nothing."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Callable

import httpx
import jwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from access.broker.clock import FakeClock
from access.broker.runtime import Broker
from access.broker.store.tables import audit_log, grants
from tests.broker.conftest import BASE_URL, add_user, login

pytestmark = pytest.mark.anyio


@pytest.fixture
def pg_broker(make_broker: Callable[..., Broker], db_url: str) -> Broker:
    return make_broker(db_url=db_url)


@pytest.fixture
async def http(pg_broker: Broker) -> AsyncIterator[httpx.AsyncClient]:
    from access.broker.app import create_app

    transport = httpx.ASGITransport(app=create_app(pg_broker, background=False))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        yield client


@pytest.fixture
def alice(pg_broker: Broker) -> dict[str, str]:
    tokens = login(pg_broker, add_user(pg_broker, "alice", ("sre",)))
    return {"authorization": f"Bearer {tokens.access_token}"}


def _counts(broker: Broker) -> tuple[int, int]:
    with broker.engine.connect() as conn:
        return (
            conn.execute(sa.select(sa.func.count()).select_from(grants)).scalar_one(),
            conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar_one(),
        )


async def test_oversized_body_is_refused_and_changes_nothing(
    http: httpx.AsyncClient, alice: dict[str, str], pg_broker: Broker
) -> None:
    before = _counts(pg_broker)
    body = {"service": "svc-payments", "scope": "read", "ttl": "5m", "reason": "x" * 200_000}
    response = await http.post("/v1/grants", json=body, headers=alice)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert _counts(pg_broker) == before


async def test_malformed_json_and_unknown_fields_get_clear_errors(
    http: httpx.AsyncClient, alice: dict[str, str], pg_broker: Broker
) -> None:
    before = _counts(pg_broker)
    cases: list[bytes] = [
        b"{not json",
        b"[]",
        b'{"service": "svc-payments"}',
        b'{"service": "svc-payments", "scope": "read", "ttl": "5m", "target": "10.0.0.1:22"}',
        b'{"service": 5, "scope": "read", "ttl": "5m"}',
    ]
    for raw in cases:
        response = await http.post(
            "/v1/grants", content=raw, headers={**alice, "content-type": "application/json"}
        )
        assert response.status_code == 400, (raw, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_request"
        assert error["message"].startswith("invalid request")
    assert _counts(pg_broker) == before


async def test_forged_or_expired_tokens_are_refused_and_change_nothing(
    http: httpx.AsyncClient, alice: dict[str, str], pg_broker: Broker
) -> None:
    genuine = alice["authorization"].removeprefix("Bearer ")
    claims = jwt.decode(genuine, options={"verify_signature": False})

    def unsigned(header: dict[str, str]) -> str:
        parts = [
            base64.urlsafe_b64encode(json.dumps(p).encode()).rstrip(b"=").decode() for p in (header, claims)
        ]
        return ".".join(parts) + "."

    def signed(key: Ed25519PrivateKey, **change: str) -> str:
        return jwt.encode({**claims, **change}, key, algorithm="EdDSA", headers={"typ": "at+jwt"})

    forged = {
        "alg none": unsigned({"alg": "none", "typ": "at+jwt"}),
        "another key": signed(Ed25519PrivateKey.generate()),
        "wrong audience": signed(pg_broker.token_key, aud="another-service"),
        "wrong issuer": signed(pg_broker.token_key, iss="https://evil.test"),
    }
    body = {"service": "svc-payments", "scope": "read", "ttl": "5m", "reason": "INC-1"}
    before = _counts(pg_broker)
    for what, token in forged.items():
        response = await http.post("/v1/grants", json=body, headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 401, what
        assert response.json()["error"]["hint"] == "run `access login`"
    assert isinstance(pg_broker.clock, FakeClock)
    pg_broker.clock.advance(pg_broker.settings.access_token_ttl)
    expired = await http.post("/v1/grants", json=body, headers=alice)
    assert expired.status_code == 401
    assert "expired" in expired.json()["error"]["message"]
    assert _counts(pg_broker) == before


async def test_unknown_endpoint_and_method(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    response = await http.delete("/v1/services")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "invalid_request"


async def test_ledger_failure_fails_the_action_closed(
    http: httpx.AsyncClient, alice: dict[str, str], pg_broker: Broker
) -> None:
    """If the audit entry cannot be written, the grant is not issued either."""
    dialect = pg_broker.engine.dialect.name
    with pg_broker.engine.begin() as conn:
        if dialect == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER ledger_down BEFORE INSERT ON audit_log "
                "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION ledger_down() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN RAISE EXCEPTION 'disk full' USING ERRCODE = 'disk_full'; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER ledger_down BEFORE INSERT ON audit_log "
                "FOR EACH ROW EXECUTE FUNCTION ledger_down()"
            )
    before = _counts(pg_broker)
    body = {"service": "svc-payments", "scope": "read", "ttl": "5m", "reason": "INC-1"}
    response = await http.post("/v1/grants", json=body, headers=alice)
    assert response.status_code in (500, 503), response.text
    assert "grant" not in response.text.lower() or response.json()["error"]["code"] in (
        "unavailable",
        "internal",
    )
    assert _counts(pg_broker) == before
    listed = await http.get("/v1/grants", headers=alice)
    assert listed.status_code == 200
    assert listed.json() == []


async def test_database_gone_is_refused_with_503(make_broker: Callable[..., Broker], pg_url: str) -> None:
    from access.broker.app import create_app
    from tests.conftest import _pg_admin_engine

    broker = make_broker(db_url=pg_url)
    tokens = login(broker, add_user(broker, "alice", ("sre",)))
    broker.engine.dispose()
    name = sa.engine.make_url(pg_url).database
    admin = _pg_admin_engine()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.dispose()
    transport = httpx.ASGITransport(app=create_app(broker, background=False))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        response = await client.post(
            "/v1/grants",
            json={"service": "svc-payments", "scope": "read", "ttl": "5m"},
            headers={"authorization": f"Bearer {tokens.access_token}"},
        )
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "unavailable"


async def test_an_unexpected_exception_is_a_json_500_logged_once(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    from access.broker.app import create_app

    app = create_app(broker, background=False)

    @app.get("/test/boom")
    async def boom() -> None:
        raise ValueError("secret-internal-detail")

    transport = httpx.ASGITransport(app=app)  # raises what the app lets escape: nothing should
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        with caplog.at_level(logging.ERROR, logger="access.broker.app"):
            response = await client.get("/test/boom")

    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "internal"
    assert error["message"] and "hint" in error
    assert "secret-internal-detail" not in response.text
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1
    assert isinstance(logged[0].exc_info[1], ValueError)  # type: ignore[index]
    assert "/test/boom" in logged[0].getMessage()
