"""``/metrics``: the names and labels are there and the values move with what the broker does;
a scrape while the database is gone still answers."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from access.broker.app import create_app
from access.broker.runtime import Broker
from access.broker.server import serve_metrics
from tests.broker.conftest import BASE_URL, add_user, login
from tests.conftest import PG_ADMIN_URL, REVIEWED_POLICY

pytestmark = pytest.mark.anyio

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def scrape(http: httpx.AsyncClient) -> Samples:
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


@pytest.fixture
async def http(broker: Broker) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(broker, background=False))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        yield client


GRANT = {"service": "svc-payments", "scope": "read", "ttl": "5m", "reason": "INC-1"}


async def test_requests_grants_and_the_database_are_counted(http: httpx.AsyncClient, broker: Broker) -> None:
    auth = {"authorization": f"Bearer {login(broker, add_user(broker)).access_token}"}
    before = await scrape(http)
    created = await http.post("/v1/grants", json=GRANT, headers=auth)
    assert created.status_code == 201, created.text
    grant_id = created.json()["id"]
    assert (await http.get(f"/v1/grants/{grant_id}", headers=auth)).status_code == 200
    assert (await http.get("/no/such/thing")).status_code == 404
    after = await scrape(http)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("access_http_requests_total", route="/v1/grants", method="POST", status="201") == 1
    # The route's template, never the raw path: one series however many grants there are.
    assert moved("access_http_requests_total", route="/v1/grants/{grant_id}", method="GET", status="200") == 1
    assert not any(grant_id in dict(labels).get("route", "") for _, labels in after)
    assert moved("access_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert moved("access_http_request_duration_seconds_count", route="/v1/grants", method="POST") == 1
    assert moved("access_grant_decisions_total", decision="active") == 1
    assert value(after, "access_grants", state="active") == 1
    assert value(after, "access_grants", state="revoked") == 0  # every state, even when none is in it
    assert value(after, "access_approvals_pending") == 0
    assert value(after, "access_database_up") == 1
    assert moved("access_ledger_entries") >= 1
    assert moved("access_ledger_append_seconds_count") >= 1
    assert value(after, "access_database_pool_size") >= 1
    assert value(after, "access_outbox_oldest_age_seconds") >= 0
    assert ("access_outbox_depth", frozenset()) in after
    assert ("access_tunnels_open", frozenset()) in after
    assert ("access_tunnel_cut_seconds_count", frozenset()) in after

    revoked = await http.post(f"/v1/grants/{grant_id}/revoke", headers=auth)
    assert revoked.status_code == 200, revoked.text
    final = await scrape(http)
    assert value(final, "access_grants", state="active") == 0
    assert value(final, "access_grants", state="revoked") == 1
    assert (
        value(final, "access_grant_ends_total", reason="revoked")
        - value(after, "access_grant_ends_total", reason="revoked")
        == 1
    )


async def test_a_pending_grant_is_an_approval_waiting(make_broker: Callable[..., Broker]) -> None:
    broker = make_broker(policy=REVIEWED_POLICY)
    auth = {"authorization": f"Bearer {login(broker, add_user(broker, 'dana', ('dev',))).access_token}"}
    transport = httpx.ASGITransport(app=create_app(broker, background=False))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
        created = await http.post("/v1/grants", json={**GRANT, "scope": "write"}, headers=auth)
        assert created.status_code in (201, 202), created.text
        assert created.json()["state"] == "pending", created.json()
        found = await scrape(http)
    assert value(found, "access_approvals_pending") == 1
    assert value(found, "access_grants", state="pending") == 1
    assert value(found, "access_grant_decisions_total", decision="pending") == 1


async def test_rate_limit_hits_are_counted(http: httpx.AsyncClient, broker: Broker) -> None:
    for _ in range(40):
        response = await http.post(
            "/oauth/device_authorization", data={"client_id": "access-cli", "client_host": "laptop"}
        )
        if response.status_code == 429:
            break
    assert response.status_code == 429
    found = await scrape(http)
    assert value(found, "access_rate_limited_total", limit="device_start") == 1
    assert (
        value(
            found,
            "access_http_requests_total",
            route="/oauth/device_authorization",
            method="POST",
            status="429",
        )
        == 1
    )


async def test_a_scrape_answers_while_the_database_is_gone(
    make_broker: Callable[..., Broker], pg_url: str
) -> None:
    broker = make_broker(db_url=pg_url)
    transport = httpx.ASGITransport(app=create_app(broker, background=False))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
        assert value(await scrape(http), "access_database_up") == 1
        name = sa.engine.make_url(pg_url).database
        admin = sa.create_engine(
            sa.engine.make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg"),
            isolation_level="AUTOCOMMIT",
            poolclass=sa.pool.NullPool,
        )
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()
        found = await scrape(http)
    assert value(found, "access_database_up") == 0
    assert value(found, "access_database_errors_total") >= 1
    assert ("access_grants", frozenset({("state", "active")})) not in found  # absent, not a made-up 0
    assert ("access_tunnels_open", frozenset()) in found


async def test_every_broker_counts_for_itself(make_broker: Callable[..., Broker]) -> None:
    first, second = make_broker(), make_broker()
    for broker, calls in ((first, 3), (second, 1)):
        transport = httpx.ASGITransport(app=create_app(broker, background=False))
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
            for _ in range(calls):
                assert (await http.get("/healthz")).status_code == 200
            found = await scrape(http)
        assert (
            value(found, "access_http_requests_total", route="/healthz", method="GET", status="200") == calls
        )


async def test_metrics_moved_to_their_own_address_are_gone_from_the_main_port(
    make_broker: Callable[..., Broker],
) -> None:
    broker = make_broker(metrics_listen="127.0.0.1:9464")
    transport = httpx.ASGITransport(app=create_app(broker, background=False))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
        assert (await http.get("/metrics")).status_code == 404


def test_the_metrics_address_serves_until_stopped_and_is_then_free(
    make_broker: Callable[..., Broker],
) -> None:
    with socket.socket() as probe:  # a free port, given back before the server takes it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    broker = make_broker(metrics_listen=f"127.0.0.1:{port}")
    stop = serve_metrics(broker, broker.settings.metrics_listen or "")
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert answer.status_code == 200 and "access_" in answer.text
    finally:
        stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    with socket.socket() as again:  # no listener holds it any more (a scrape's TIME_WAIT may)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))


async def test_an_invented_method_makes_no_new_series(http: httpx.AsyncClient) -> None:
    for method in ("BREW", "PROPFIND", "GET"):
        await http.request(method, "/healthz")
    found = await scrape(http)
    methods = {dict(labels)["method"] for name, labels in found if name == "access_http_requests_total"}
    assert methods == {"GET", "OTHER"}
    assert value(found, "access_http_requests_total", route="/healthz", method="OTHER", status="405") == 2
