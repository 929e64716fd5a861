"""Every ``connection.open`` gets its ``connection.close``: a close that meets a database that is
down is written once it is back; what a dead broker process left open is closed
(``why: broker lost``) by the next one, and a live replica's connections are left alone.

The database outage is real: PostgreSQL is reached through a loopback TCP proxy this test owns
and cuts (the shared server itself is never touched).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from access.broker import grants
from access.broker.auth import tokens
from access.broker.clock import FakeClock
from access.broker.runtime import Broker
from access.broker.store import engine as db_engine
from access.broker.store.tables import broker_instances, open_connections
from access.broker.tunnel.closes import close_lost, heartbeat, pending_for, stop_instance
from access.cli.tunnel import Forwarder
from access.shared.models import GrantRequest
from tests.broker.conftest import add_user, audit_rows, login
from tests.broker.tunnel.test_protocol import (
    TIMEOUT,
    Setup,
    run,
    setup,  # noqa: F401 (the fixture, used by name)
    wrap_app,  # noqa: F401 (the fixture setup uses)
)
from tests.fakes.tcpproxy import TcpProxy

_PG = ("127.0.0.1", 5432)


class CuttableProxy(TcpProxy):
    """A loopback TCP proxy to PostgreSQL. ``cut()``: every connection through it is reset and new
    ones are closed at once (the database is "down" for the broker); ``restore()`` undoes it."""

    def __init__(self) -> None:
        self.down = threading.Event()
        super().__init__(lambda: None if self.down.is_set() else _PG)

    def cut(self) -> None:
        self.down.set()
        self.drop_all()

    def restore(self) -> None:
        self.down.clear()


@pytest.fixture
def proxy() -> Iterator[CuttableProxy]:
    proxy = CuttableProxy()
    yield proxy
    proxy.close()


@pytest.fixture
def broker_db_url(pg_url: str, proxy: CuttableProxy) -> str:
    """The tunnel tests' broker on a fresh PostgreSQL database, reached through ``proxy``."""
    url = sa.engine.make_url(pg_url).set(host="127.0.0.1", port=proxy.port)
    return url.render_as_string(hide_password=False)


def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_close_while_the_database_is_down_is_written_when_it_is_back(
    setup: Setup,  # noqa: F811
    proxy: CuttableProxy,
    pg_url: str,
) -> None:
    direct = db_engine.create_engine(pg_url)  # around the proxy: what the database really holds

    def closes() -> list[Any]:
        with direct.connect() as conn:
            return [
                r
                for r in conn.execute(sa.text("SELECT action, details FROM audit_log"))
                if r.action == "connection.close"
            ]

    grant_id = setup.grant()

    async def main() -> None:
        forwarder = Forwarder(setup.endpoint(grant_id))
        _, port = await forwarder.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"hello")
            assert await reader.readexactly(5) == b"hello"
            proxy.cut()  # the database goes away while the connection is open
            writer.close()
            await writer.wait_closed()
            queued = lambda: len(pending_for(setup.broker)) == 1  # noqa: E731
            await asyncio.to_thread(_wait_for, queued, "the close to be queued")
        finally:
            await forwarder.aclose()

    run(main())
    assert closes() == []  # not written: the database was down
    proxy.restore()
    _wait_for(lambda: len(closes()) == 1, "the queued connection.close")
    details = closes()[0].details
    assert '"why":"client closed"' in details and '"bytes_up":5' in details and '"closed_at":' in details
    with direct.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(open_connections)).scalar_one() == 0
    direct.dispose()


# ---------------------------------------------------------------- what a dead process left open


def _open(broker: Broker, ctx: Any, grant_id: str, connection_id: str) -> None:
    grants.open_connection(broker, ctx, grant_id, connection_id=connection_id, client="192.0.2.9")


def test_the_next_start_closes_what_a_dead_process_left_open_and_leaves_live_replicas_alone(
    make_broker: Callable[..., Broker], db_url: str, fake_clock: FakeClock
) -> None:
    dead = make_broker(db_url=db_url)  # the process that will crash
    live = make_broker(db_url=db_url)  # a replica that keeps running
    user = add_user(dead, "alice")
    ctx = tokens.authenticate(dead, login(dead, user).access_token)
    grant_id = grants.request_grant(
        dead, ctx, GrantRequest(service="svc-payments", scope="read", ttl="20m")
    ).id
    for broker in (dead, live):
        heartbeat(broker)
    _open(dead, ctx, grant_id, "c-dead1")
    _open(dead, ctx, grant_id, "c-dead2")
    _open(live, ctx, grant_id, "c-live1")

    starting = make_broker(db_url=db_url)  # a new process, started soon after the crash
    assert close_lost(starting) == 0  # the lease has not run out: the dead one might be alive
    fake_clock.advance(timedelta(seconds=starting.settings.instance_lease + 1))
    heartbeat(live)  # the replica is alive; `dead` wrote nothing since the crash
    assert close_lost(starting) == 2
    assert close_lost(starting) == 0  # each close is written once
    # A process whose heartbeat never made it is alive while it opens connections.
    _open(make_broker(db_url=db_url), ctx, grant_id, "c-new1")
    assert close_lost(starting) == 0

    closed = audit_rows(starting, "connection.close")
    assert sorted(row["details"]["connection"] for row in closed) == ["c-dead1", "c-dead2"]
    details = closed[0]["details"]
    assert details["why"] == "broker lost"
    assert details["broker"] == dead.instance_id
    assert (details["grant"], details["service"], details["client"]) == (
        grant_id,
        "svc-payments",
        "192.0.2.9",
    )
    assert {"opened_at", "last_heartbeat", "unknown"} <= set(details)
    assert closed[0]["actor"] == "alice"
    with starting.engine.connect() as conn:
        assert sorted(conn.execute(sa.select(open_connections.c.id)).scalars()) == ["c-live1", "c-new1"]
        assert dead.instance_id not in conn.execute(sa.select(broker_instances.c.id)).scalars().all()

    # The replica's own close, written normally; a graceful stop then removes its heartbeat.
    pending_for(live).add("c-live1", "alice", f"service:svc-payments/{grant_id}", {"connection": "c-live1"})
    stop_instance(live, time.monotonic() + TIMEOUT)
    assert [r["details"]["connection"] for r in audit_rows(live, "connection.close")][-1] == "c-live1"
    with live.engine.connect() as conn:
        assert conn.execute(sa.select(open_connections.c.id)).scalars().all() == ["c-new1"]
        assert live.instance_id not in conn.execute(sa.select(broker_instances.c.id)).scalars().all()


def test_serving_starts_by_closing_what_a_dead_process_left_open(
    make_broker: Callable[..., Broker], sqlite_url: str
) -> None:
    """The broker's start (its lifespan) does it before it serves, not one lease later."""
    from access.broker.app import create_app

    crashed = make_broker(db_url=sqlite_url, clock=FakeClock(datetime(2020, 1, 1, tzinfo=UTC)))
    user = add_user(crashed, "alice")
    ctx = tokens.authenticate(crashed, login(crashed, user).access_token)
    grant_id = grants.request_grant(
        crashed, ctx, GrantRequest(service="svc-payments", scope="read", ttl="20m")
    ).id
    heartbeat(crashed)
    _open(crashed, ctx, grant_id, "c-1")

    from access.broker.clock import SystemClock

    restarted = make_broker(db_url=sqlite_url, clock=SystemClock())
    app = create_app(restarted)

    async def start_and_stop() -> None:
        async with app.router.lifespan_context(app):
            assert [r["details"]["why"] for r in audit_rows(restarted, "connection.close")] == ["broker lost"]

    asyncio.run(start_and_stop())
