"""A database that hangs costs a request a few seconds and a 503, never the whole hang.

PostgreSQL is reached through ``FreezableProxy`` (tests/fakes/dbproxy.py), which the tests freeze
as a SIGSTOP would: sockets stay open, no byte comes back. The shared server itself is never
stopped. The timeouts are short here (1 s statements, 2 s connects, libpq's least).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.errors import Unavailable
from access.broker.runtime import Broker
from access.broker.store.engine import DatabaseTimeouts
from access.broker.tunnel.registry import TunnelWatch, registry_for
from tests.broker.conftest import add_user, login
from tests.broker.tunnel.test_registry import FakeTunnel
from tests.fakes.dbproxy import FreezableProxy

pytestmark = pytest.mark.anyio

STATEMENT, CONNECT = 1.0, 2.0
ANSWER = STATEMENT + DatabaseTimeouts.ANSWER_GRACE  # how long a statement's answer is waited for
# A frozen database costs a request at most: the check of its pooled connection (bounded like a
# connect), then one new connection; plus a second for the test's own steps on two shared cores.
WINDOW = CONNECT + CONNECT + 1.0


@pytest.fixture
def statement_timeout() -> float:
    return STATEMENT


@pytest.fixture
def broker(make_proxied_broker: Callable[..., Broker], statement_timeout: float) -> Broker:
    """An in-process broker (and, through conftest's ``client``, its app) reaching PostgreSQL
    through the proxy, with short timeouts."""
    return make_proxied_broker(db_statement_timeout=statement_timeout, db_connect_timeout=CONNECT)


@pytest.fixture
def alice(broker: Broker) -> dict[str, str]:
    tokens = login(broker, add_user(broker, "alice", ("sre",)))
    return {"authorization": f"Bearer {tokens.access_token}"}


GRANT = {"service": "svc-payments", "scope": "read", "ttl": "30m", "reason": "INC-9"}


async def timed(work: Any) -> tuple[Any, float]:
    """``work``'s result (or what it raised) and how long it took; given up on after twice the
    window, so that a missing bound fails the test instead of hanging it."""
    started = time.monotonic()
    try:
        result = await asyncio.wait_for(work, 2 * WINDOW)
    except Exception as exc:  # a background caller's failure is its result here
        result = exc
    return result, time.monotonic() - started


@pytest.mark.parametrize("statement_timeout", [4.0])  # longer than the window: pings wait less
async def test_a_frozen_database_answers_503_within_seconds_then_recovers(
    client: httpx.AsyncClient, broker: Broker, alice: dict[str, str], proxy: FreezableProxy
) -> None:
    """Requests, the tunnel watcher and a ledger append all give up in the window, then work."""
    assert (await client.get("/v1/services", headers=alice)).status_code == 200
    registry_for(broker).add(FakeTunnel("g-watched", None))
    watch = TunnelWatch(broker)
    opened = [broker.engine.connect() for _ in range(8)]  # each caller below finds an open one
    for conn in opened:
        conn.close()

    proxy.freeze()
    try:
        results = await asyncio.gather(
            timed(client.get("/v1/services", headers=alice)),
            timed(client.get("/v1/grants", headers=alice)),
            timed(client.post("/v1/grants", json=GRANT, headers=alice)),
            timed(watch.step()),
            timed(
                asyncio.to_thread(
                    ledger.record, broker, actor="test", action=Action.CONNECTION_CLOSE, target="grant:g"
                )
            ),
        )
        (*answers, (watched, watch_took), (appended, append_took)) = results
        for response, took in answers:
            assert isinstance(response, httpx.Response), f"no answer after {took:.1f} s: {response!r}"
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert error["code"] == "unavailable"
            assert "database is unavailable, so nothing was changed" in error["message"]
            assert "try again" in error["hint"]
            assert took < WINDOW, f"{response.request.url.path} took {took:.1f} s"
        assert watched is False and watch.failing and watch_took < WINDOW
        assert isinstance(appended, Unavailable) and append_took < WINDOW
    finally:
        proxy.thaw()  # (also frees what a missing bound left waiting)

    response, took = await timed(client.get("/v1/services", headers=alice))
    assert response.status_code == 200 and took < WINDOW
    assert (await client.post("/v1/grants", json=GRANT, headers=alice)).status_code == 201
    assert await watch.step() is True


async def test_a_commit_that_gets_no_answer_says_the_outcome_is_unknown(
    client: httpx.AsyncClient, alice: dict[str, str], proxy: FreezableProxy
) -> None:
    """The COMMIT reaches the server, its answer never comes back: the grant may exist (here it
    does), so "nothing was changed" would be a lie."""
    proxy.freeze_after(b"INSERT INTO grants", b"COMMIT")
    try:
        response, took = await timed(client.post("/v1/grants", json=GRANT, headers=alice))
        assert proxy.frozen
        assert isinstance(response, httpx.Response), f"no answer after {took:.1f} s: {response!r}"
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "unavailable"
        assert "the outcome is unknown" in error["message"] and "nothing was changed" not in error["message"]
        assert "`access grants`" in error["hint"]
        assert took < ANSWER + 1.0
    finally:
        proxy.thaw()

    listed = (await client.get("/v1/grants", headers=alice)).json()
    assert [g["reason"] for g in listed] == ["INC-9"]  # it did take effect


def test_a_lock_held_elsewhere_fails_after_the_lock_timeout(broker: Broker, pg_url: str) -> None:
    """Another transaction holds the ledger's append lock: an append gives up after 0.5 s."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        holder = sa.create_engine(sa.engine.make_url(pg_url).set(drivername="postgresql+psycopg"))
        with holder.connect() as conn, conn.begin():
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('access_audit_log'))")
            holding.set()
            release.wait(10)  # without a lock timeout the append waits this long
        holder.dispose()

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holding.wait(10)
        started = time.monotonic()
        with pytest.raises(Unavailable, match="nothing was changed"):
            ledger.record(broker, actor="test", action=Action.CONNECTION_CLOSE, target="grant:g")
        assert time.monotonic() - started < 0.5 + 1.0
    finally:
        release.set()
        thread.join(10)


def test_postgresql_connections_carry_every_bound(make_broker: Callable[..., Broker], pg_url: str) -> None:
    """The server's timeouts, the client's TCP bounds, and the URL's own options kept."""
    url = sa.engine.make_url(pg_url).update_query_dict({"options": "-c application_name=hung-test"})
    broker = make_broker(
        db_url=url.render_as_string(hide_password=False),
        db_statement_timeout=1.5,
        db_lock_timeout=0.25,
        db_connect_timeout=4,
        db_tcp_timeout=9,
    )
    with broker.transaction() as conn:
        shown = {
            name: conn.exec_driver_sql(f"SHOW {name}").scalar_one()
            for name in ("statement_timeout", "lock_timeout", "application_name")
        }
        params = conn.connection.dbapi_connection.info.get_parameters()  # type: ignore[union-attr]
    assert shown == {"statement_timeout": "1500ms", "lock_timeout": "250ms", "application_name": "hung-test"}
    assert {k: params.get(k) for k in ("connect_timeout", "keepalives", "tcp_user_timeout")} == {
        "connect_timeout": "4",
        "keepalives": "1",
        "tcp_user_timeout": "9000",
    }
    assert (params["keepalives_idle"], params["keepalives_interval"], params["keepalives_count"]) == (
        "3",
        "3",
        "2",
    )


def test_sqlite_waits_for_another_process_only_the_busy_timeout(
    make_broker: Callable[..., Broker], tmp_path: Any
) -> None:
    """An admin command (another process) holds SQLite's write lock: a request gives up after
    ``db_busy_timeout`` with a 503, instead of SQLite's old 10 s."""
    path = tmp_path / "busy.db"
    broker = make_broker(db_url=f"sqlite:///{path}", db_busy_timeout=0.3)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(Unavailable, match="nothing was changed"), broker.transaction() as conn:
            conn.execute(sa.text("SELECT 1"))
        assert time.monotonic() - started < 0.3 + 1.0
    finally:
        other.close()
