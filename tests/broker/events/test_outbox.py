"""The outbox on SQLite and PostgreSQL: rows exist only if their transaction commits, failures are
retried with backoff, replicas never run one row at once, done rows are pruned."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from access.broker import grants
from access.broker.auth.principal import AuthContext
from access.broker.clock import FakeClock
from access.broker.events import outbox
from access.broker.events.bus import Event, GrantEnded
from access.broker.runtime import Broker
from access.broker.store import outbox as store
from access.broker.store.tables import outbox as outbox_table
from access.broker.store.tables import principals
from access.shared.models import GrantRequest


@pytest.fixture
def broker(make_broker: Callable[..., Broker], db_url: str) -> Broker:
    return make_broker(db_url=db_url)


def clock_of(broker: Broker) -> FakeClock:
    assert isinstance(broker.clock, FakeClock)
    return broker.clock


def rows(broker: Broker) -> list[Any]:
    with broker.transaction() as conn:
        return list(conn.execute(sa.select(outbox_table).order_by(outbox_table.c.id)))


class Recorder:
    """Handlers that record what they ran, and fail as many times as told first."""

    def __init__(self, failures: int = 0) -> None:
        self.ran: list[Mapping[str, Any]] = []
        self.failures = failures
        self.lock = threading.Lock()

    def __call__(self, _broker: Broker, payload: Mapping[str, Any]) -> None:
        with self.lock:
            if self.failures:
                self.failures -= 1
                raise RuntimeError("the webhook said 502")
            self.ran.append(payload)


def loop_for(broker: Broker, kind: str, handler: outbox.Handler) -> outbox.OutboxLoop:
    handlers = outbox.Handlers()
    handlers.register(kind, handler)
    return outbox.OutboxLoop(broker, handlers)


def test_a_row_of_a_committed_transaction_runs_once(broker: Broker) -> None:
    recorder = Recorder()
    loop = loop_for(broker, "test.work", recorder)
    with broker.transaction() as conn:
        outbox.enqueue(conn, broker.clock, "test.work", {"n": 1})
    asyncio.run(loop.tick())
    asyncio.run(loop.tick())
    assert recorder.ran == [{"n": 1}]
    [row] = rows(broker)
    assert (row.attempts, row.done_at, row.last_error) == (1, broker.clock.now(), None)


def test_a_row_written_in_a_rolled_back_transaction_never_runs(broker: Broker) -> None:
    recorder = Recorder()
    loop = loop_for(broker, "test.work", recorder)
    with pytest.raises(RuntimeError), broker.transaction() as conn:
        outbox.enqueue(conn, broker.clock, "test.work", {"n": 1})
        raise RuntimeError("the decision failed after the row was written")
    asyncio.run(loop.tick())
    assert recorder.ran == []
    assert rows(broker) == []


def test_a_failing_handler_is_retried_with_backoff_and_its_error_recorded(broker: Broker) -> None:
    clock = clock_of(broker)
    recorder = Recorder(failures=2)
    loop = loop_for(broker, "test.work", recorder)
    with broker.transaction() as conn:
        outbox.enqueue(conn, broker.clock, "test.work", {"n": 1})
    start = clock.now()
    assert loop.run_due() == 0
    [row] = rows(broker)
    assert (row.attempts, row.last_error, row.done_at) == (1, "RuntimeError: the webhook said 502", None)
    assert row.available_at == start + timedelta(seconds=1)
    assert loop.run_due() == 0 and recorder.failures == 1  # not due yet: the handler did not run
    clock.advance(timedelta(seconds=1))
    assert loop.run_due() == 0
    [row] = rows(broker)
    assert (row.attempts, row.available_at) == (2, clock.now() + timedelta(seconds=2))  # doubled
    clock.advance(timedelta(seconds=1.9))
    assert loop.run_due() == 0 and recorder.ran == []
    clock.advance(timedelta(seconds=0.1))
    assert loop.run_due() == 1
    [row] = rows(broker)
    assert (row.attempts, row.done_at, row.last_error) == (3, clock.now(), None)
    assert recorder.ran == [{"n": 1}]


def test_backoff_doubles_and_is_capped() -> None:
    assert [outbox.backoff(n).total_seconds() for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert outbox.backoff(9) == timedelta(seconds=256)
    assert outbox.backoff(10) == outbox.backoff(10_000) == timedelta(minutes=5)


def test_a_kind_without_a_handler_is_kept_and_retried(broker: Broker) -> None:
    loop = loop_for(broker, "test.work", Recorder())
    with broker.transaction() as conn:
        outbox.enqueue(conn, broker.clock, "approvals.notify", {"grant_id": "g-1"})
    assert loop.run_due() == 0
    [row] = rows(broker)
    assert (
        row.done_at is None and row.last_error == "LookupError: no handler for outbox kind 'approvals.notify'"
    )


def test_done_rows_are_pruned_after_the_retention(broker: Broker) -> None:
    clock = clock_of(broker)
    loop = loop_for(broker, "test.work", Recorder())
    with broker.transaction() as conn:
        outbox.enqueue(conn, broker.clock, "test.work", {"n": "old"})
        outbox.enqueue(conn, broker.clock, "other.kind", {"n": "never done"})
    loop.run_due()
    clock.advance(outbox.RETENTION - timedelta(days=1))
    with broker.transaction() as conn:
        outbox.enqueue(conn, broker.clock, "test.work", {"n": "new"})
    loop.run_due()
    assert [row.payload["n"] for row in rows(broker)] == ["old", "never done", "new"]
    clock.advance(timedelta(days=1, seconds=1))  # "old" was done a retention and a second ago
    loop.run_due()
    assert [row.payload["n"] for row in rows(broker)] == ["never done", "new"]


def test_a_claim_lost_to_another_replica_is_not_overwritten(broker: Broker) -> None:
    clock = clock_of(broker)
    with broker.transaction() as conn:
        outbox.enqueue(conn, broker.clock, "test.work", {"n": 1})
    now = clock.now()
    with broker.transaction() as conn:
        [first] = store.claim_due(conn, now=now, lease_until=now + outbox.LEASE, limit=10)
    clock.advance(outbox.LEASE)  # the first worker stalled past its lease: the row is due again
    now = clock.now()
    with broker.transaction() as conn:
        [second] = store.claim_due(conn, now=now, lease_until=now + outbox.LEASE, limit=10)
    with broker.transaction() as conn:
        assert not store.done(conn, first, now)
        assert not store.failed(conn, first, "late", now)
        assert store.done(conn, second, now)
    [row] = rows(broker)
    assert (row.attempts, row.done_at, row.last_error) == (2, now, None)


def _alice(broker: Broker) -> AuthContext:
    principal_id = str(uuid.uuid4())
    with broker.transaction() as conn:
        conn.execute(
            principals.insert().values(
                id=principal_id, name="alice", kind="user", groups=["sre"], created_at=broker.clock.now()
            )
        )
    return AuthContext(
        principal_id=principal_id,
        name="alice",
        kind="user",
        groups=("sre",),
        session_id="s-test",
        token_id="t-test",
        expires_at=broker.clock.now() + timedelta(minutes=15),
    )


def test_a_grant_ended_in_another_process_reaches_this_process_bus(
    make_broker: Callable[..., Broker], db_url: str
) -> None:
    serving = make_broker(db_url=db_url)  # the broker with tunnels and loops
    admin = make_broker(db_url=db_url)  # an admin command: its own bus, no subscribers, no loops
    alice = _alice(admin)
    grant = grants.request_grant(admin, alice, GrantRequest(service="svc-payments", scope="read", ttl="30m"))
    heard: list[Event] = []
    serving.events.subscribe(heard.append)
    with admin.transaction() as conn:
        grants.end_grants_for_principal(conn, admin, alice.principal_id, "locked", "admin:ops")
    assert heard == []
    asyncio.run(outbox.OutboxLoop(serving).tick())
    assert heard == [GrantEnded(grant.id, "locked")]
    asyncio.run(outbox.OutboxLoop(serving).tick())
    assert heard == [GrantEnded(grant.id, "locked")]  # once: the row is done


def test_racing_replicas_on_postgresql_never_run_one_row_twice(
    make_broker: Callable[..., Broker], pg_url: str
) -> None:
    replicas = [make_broker(db_url=pg_url), make_broker(db_url=pg_url)]
    count = 4 * 50  # four claims' worth
    with replicas[0].transaction() as conn:
        for n in range(count):
            outbox.enqueue(conn, replicas[0].clock, "test.work", {"n": n})
    ran: list[int] = []
    lock = threading.Lock()
    # Each replica's first row waits until the other replica also holds a claim: both are working
    # at the same moment, so the test fails if a claim handed the same rows to both.
    both_working = threading.Barrier(2, timeout=10)
    first = [True, True]

    def handler_for(index: int) -> outbox.Handler:
        def handler(_broker: Broker, payload: Mapping[str, Any]) -> None:
            if first[index]:
                first[index] = False
                both_working.wait()
            with lock:
                ran.append(int(payload["n"]))

        return handler

    loops = [loop_for(broker, "test.work", handler_for(i)) for i, broker in enumerate(replicas)]
    errors: list[BaseException] = []

    def work(loop: outbox.OutboxLoop) -> None:
        try:
            for _ in range(8):  # more ticks than there are claims' worth of rows
                asyncio.run(loop.tick())
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(loop,)) for loop in loops]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert Counter(ran) == Counter(range(count))  # every row once, none twice
    assert all(row.done_at is not None and row.attempts == 1 for row in rows(replicas[0]))


def test_postgresql_claims_skip_rows_another_transaction_holds(
    make_broker: Callable[..., Broker], pg_url: str
) -> None:
    broker = make_broker(db_url=pg_url)
    with broker.transaction() as conn:
        for n in range(5):
            outbox.enqueue(conn, broker.clock, "test.work", {"n": n})
    now = broker.clock.now()
    lease = now + outbox.LEASE
    with broker.engine.connect() as holder, broker.engine.connect() as other, holder.begin():
        held = store.claim_due(holder, now=now, lease_until=lease, limit=2)
        with other.begin():
            # Without SKIP LOCKED this would wait for the holder (and fail after 2 s).
            other.exec_driver_sql("SET LOCAL lock_timeout = '2s'")
            taken = store.claim_due(other, now=now, lease_until=lease, limit=10)
    assert len(held) == 2 and len(taken) == 3
    assert {e.id for e in held}.isdisjoint({e.id for e in taken})
