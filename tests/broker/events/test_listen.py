"""Ends decided by another broker reach this one's tunnels through PostgreSQL NOTIFY, not the poll.

Two in-process brokers share one PostgreSQL database, as two replicas do: ``there`` decides
(revoke, disable, extend, reload), ``here`` listens (``SignalListener``) and has the live tunnel
(a ``FakeTunnel`` in its registry). No ``TunnelWatch`` runs here, so only a notification can cut.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from access.broker import grants
from access.broker.auth.identity import disable_principal
from access.broker.auth.principal import AuthContext
from access.broker.auth.sessions import revoke_token
from access.broker.events.listen import SignalListener
from access.broker.grants.extend import extend_grant
from access.broker.rollout import reload_file
from access.broker.runtime import Broker
from access.broker.settings import Settings
from access.broker.store import signals
from access.broker.tunnel.registry import TunnelWatch, registry_for
from access.shared.models import ExtendRequest
from tests.broker.conftest import add_user, login
from tests.broker.tunnel.test_registry import FakeTunnel, live_grant_of
from tests.conftest import DEFAULT_POLICY, PG_ADMIN_URL, write_policy

pytestmark = pytest.mark.anyio

BOUND = 10.0  # a bound on waits that end far sooner when things work, not a timing claim


@pytest.fixture
def here(make_broker: Callable[..., Broker], pg_url: str) -> Broker:
    return make_broker(db_url=pg_url)


@pytest.fixture
def there(make_broker: Callable[..., Broker], pg_url: str) -> Broker:
    return make_broker(db_url=pg_url)


def _live(broker: Broker) -> tuple[AuthContext, grants.TunnelGrant]:
    return live_grant_of(broker, ttl="10m")


class Listening:
    """A ``SignalListener`` running in this event loop, and what it woke."""

    def __init__(self, broker: Broker) -> None:
        self.connected = asyncio.Event()
        self.resyncs = 0
        self.policy_changes = asyncio.Event()
        self.listener = SignalListener(
            broker, resync=[self._resynced], policy_changed=self.policy_changes.set
        )

    def _resynced(self) -> None:
        self.resyncs += 1
        self.connected.set()

    async def until_connected(self, count: int) -> None:
        """Until the listener has connected ``count`` times (each one wakes ``resync`` once)."""
        while self.resyncs < count:
            self.connected.clear()
            await asyncio.wait_for(self.connected.wait(), BOUND)


@contextlib.asynccontextmanager
async def listening(broker: Broker) -> AsyncIterator[Listening]:
    running = Listening(broker)
    task = asyncio.create_task(running.listener.run())
    try:
        await running.until_connected(1)
        yield running
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert running.listener.conn is None  # closed with the loop


def _tunnel(broker: Broker, grant: grants.TunnelGrant) -> FakeTunnel:
    tunnel = FakeTunnel(grant.grant_id, grant.principal_id)
    registry_for(broker).add(tunnel)
    return tunnel


async def test_a_revoke_on_another_broker_cuts_the_tunnel_here_at_once(here: Broker, there: Broker) -> None:
    ctx, grant = _live(there)
    async with listening(here):
        tunnel = _tunnel(here, grant)
        await asyncio.to_thread(grants.revoke_grant, there, ctx, grant.grant_id)
        await asyncio.wait_for(tunnel.cut_event.wait(), BOUND)
    assert [why for why, _ in tunnel.cuts] == ["revoked"]


async def test_disabling_a_user_on_another_broker_cuts_as_locked(here: Broker, there: Broker) -> None:
    ctx, grant = _live(there)
    async with listening(here):
        tunnel = _tunnel(here, grant)
        await asyncio.to_thread(disable_principal, there, ctx.name, "admin")
        await asyncio.wait_for(tunnel.cut_event.wait(), BOUND)
    # The principal's signal comes first (its row is written first): "locked", then the grant's.
    assert {why for why, _ in tunnel.cuts} == {"locked"}


async def test_a_sign_in_session_ended_on_another_broker_cuts_its_tunnels_here(
    here: Broker, there: Broker
) -> None:
    tokens = login(there, add_user(there, "bob"))
    _, grant = _live(there)
    async with listening(here):
        tunnel = FakeTunnel(grant.grant_id, None, session_id=tokens.session_id)
        registry_for(here).add(tunnel)
        registry_for(here).add_session(tunnel)
        assert tokens.refresh_token is not None
        assert await asyncio.to_thread(revoke_token, there, tokens.refresh_token)
        await asyncio.wait_for(tunnel.cut_event.wait(), BOUND)
    assert [why for why, _ in tunnel.cuts] == ["signed out"]


async def test_an_extension_on_another_broker_moves_the_cut_here(here: Broker, there: Broker) -> None:
    ctx, grant = _live(there)
    async with listening(here):
        registry = registry_for(here)
        _tunnel(here, grant)
        registry.schedule_expiry(grant)
        old = registry.expiry_timer(grant.grant_id)
        assert old is not None
        await asyncio.to_thread(extend_grant, there, ctx, grant.grant_id, ExtendRequest(ttl="25m"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BOUND
        while not old.cancelled():  # a bounded poll for the listener's move, not a synchronisation
            assert loop.time() < deadline, "the extension never reached this broker"
            await asyncio.sleep(0.01)
        new = registry.expiry_timer(grant.grant_id)
        assert new is not None and new.when() > old.when() + 500


async def test_a_policy_reload_on_another_broker_wakes_the_policy_watch_here(
    here: Broker, there: Broker, tmp_path: Path
) -> None:
    changed = {**DEFAULT_POLICY, "rules": DEFAULT_POLICY["rules"][:1]}
    path = write_policy(tmp_path / "new.yaml", changed)
    async with listening(here) as running:
        await asyncio.to_thread(reload_file, there, path, "admin")
        await asyncio.wait_for(running.policy_changes.wait(), BOUND)


async def test_the_listener_reconnects_by_itself_wakes_the_poll_and_hears_again(
    here: Broker, there: Broker
) -> None:
    ctx, grant = _live(there)
    async with listening(here) as running:
        conn = running.listener.conn
        assert conn is not None
        pid = conn.info.backend_pid
        admin = sa.create_engine(sa.engine.make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg"))
        try:
            with admin.connect() as db:
                assert db.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
        finally:
            admin.dispose()
        await running.until_connected(2)  # reconnected, and the poll woken for what was missed
        assert running.listener.conn is not None and running.listener.conn.info.backend_pid != pid
        tunnel = _tunnel(here, grant)
        await asyncio.to_thread(grants.revoke_grant, there, ctx, grant.grant_id)
        await asyncio.wait_for(tunnel.cut_event.wait(), BOUND)
    assert [why for why, _ in tunnel.cuts] == ["revoked"]


async def test_the_poll_is_quick_while_no_notification_can_be_heard(here: Broker) -> None:
    assert here.settings.watch_interval == 2.0  # PostgreSQL, listening: the safety net's interval
    running = Listening(here)
    watch = TunnelWatch(here, listener=running.listener)
    assert watch.next_delay(watch.interval) == 0.25  # not listening yet: the poll is the only way
    task = asyncio.create_task(running.listener.run())
    try:
        await running.until_connected(1)
        assert watch.next_delay(watch.interval) == 2.0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert watch.next_delay(watch.interval) == 0.25  # stopped listening: quick again
    assert TunnelWatch(here).next_delay(2.0) == 2.0  # no listener given: the interval as set


async def test_a_signal_is_heard_when_its_transaction_commits_and_never_when_it_rolls_back(
    there: Broker,
) -> None:
    timeouts = there.settings.db_timeouts
    conn = await signals.listen(there.settings.resolved_database_url, timeouts)
    try:
        rolled_back = signals.Signal(signals.GRANT_ENDED, "g-rolled-back", reason="revoked")
        committed = signals.Signal(signals.SESSION_ENDED, "s-committed", reason="logout")

        def decide() -> None:
            with contextlib.suppress(RuntimeError), there.transaction() as db:
                signals.send(db, rolled_back)
                raise RuntimeError("roll back")
            with there.transaction() as db:
                signals.send(db, committed)

        await asyncio.to_thread(decide)
        heard = [signals.Signal.decode(n.payload) async for n in conn.notifies(timeout=BOUND, stop_after=1)]
        assert heard == [committed]
    finally:
        await conn.close()


def test_signals_carry_ids_and_words_only_and_refuse_what_is_not_theirs() -> None:
    signal = signals.Signal(signals.GRANT_ENDED, "g-1", reason="revoked")
    assert signal.encode() == '{"k":"grant.ended","id":"g-1","r":"revoked"}'
    assert signals.Signal.decode(signal.encode()) == signal
    with pytest.raises(ValueError, match="too long"):
        signals.Signal(signals.GRANT_ENDED, "g" * 8000).encode()
    with pytest.raises(ValueError, match="unknown signal kind"):
        signals.Signal("grant.stolen", "g-1").encode()
    for payload in [
        "not json",
        '{"k":"grant.stolen","id":"g-1"}',
        '{"id":"g-1"}',
        '{"k":"grant.ended","id":1}',
    ]:
        with pytest.raises(ValueError, match="not a broker signal"):
            signals.Signal.decode(payload)


def test_sqlite_sends_nothing_and_listens_for_nothing(
    make_broker: Callable[..., Broker], tmp_path: Path
) -> None:
    from access.broker.app import _background_loops

    broker = make_broker()
    with broker.transaction() as db:
        signals.send(db, signals.Signal(signals.GRANT_ENDED, "g-1", reason="revoked"))  # no error, no-op
    assert not broker.settings.listens and broker.settings.watch_interval == 0.25
    assert not any(isinstance(loop, SignalListener) for loop in _background_loops(broker))
    on_pg = Settings(data_dir=tmp_path, database_url="postgresql://x@127.0.0.1/db")
    assert on_pg.listens and on_pg.watch_interval == 2.0
    assert (
        Settings(
            data_dir=tmp_path, database_url="postgresql://x@127.0.0.1/db", db_notify=False
        ).watch_interval
        == 0.25
    )
