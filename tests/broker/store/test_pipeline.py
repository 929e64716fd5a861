"""Statements sent together (``store.pipeline``): on PostgreSQL one round trip, in order, each with
its own snapshot; on SQLite one call each. The answers are SQLAlchemy's, errors are SQLAlchemy's,
and a connection found dead is dropped from the pool."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from access.broker.runtime import Broker
from access.broker.store import audit, locks
from access.broker.store import engine as store_engine
from access.broker.store.locks import LockRecord
from access.broker.store.pipeline import Pipeline
from access.broker.store.tables import locks as locks_table
from tests.fakes.dbproxy import FreezableProxy

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(make_broker: Callable[..., Broker], db_url: str) -> sa.Engine:
    """The engine of a broker on a fresh database (SQLite and PostgreSQL), at the migrations' head."""
    return make_broker(db_url=db_url).engine


def lock(i: int, kind: str = "user", value: str = "alice", **fields: object) -> LockRecord:
    given: dict[str, object] = {
        "id": f"l-{i:04}",
        "kind": kind,
        "value": value,
        "reason": "INC-1 100% sure",  # a literal % in a value is no placeholder
        "created_by": "admin:test",
        # Any aware time goes in; UTC comes out.
        "created_at": (NOW + timedelta(seconds=i)).astimezone(timezone(timedelta(hours=2))),
        **fields,
    }
    return LockRecord(**given)  # type: ignore[arg-type]


def test_queued_statements_run_in_order_and_answer_as_sqlalchemy_does(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        locks.insert(conn, lock(1))
        locks.insert(conn, lock(2, kind="service", value="svc-payments", until=NOW + timedelta(hours=1)))
        locks.insert(conn, lock(3, value="bob", lifted_at=NOW, lifted_by="admin:test"))
    targets = [("user", "alice"), ("service", "svc-payments"), ("user", "bob")]
    with engine.begin() as conn:
        with Pipeline(conn) as pipeline:
            in_force = locks.covering_queued(pipeline, NOW, targets)
            inserted = pipeline.add(locks_table.insert(), {**lock(4, value="bob").__dict__})
            after = locks.covering_queued(pipeline, NOW, targets)  # sees the insert queued before it
            head = audit.lock_chain_and_head(pipeline)
            with pytest.raises(RuntimeError, match="once its pipeline has run"):
                in_force()
        expected = locks.covering(conn, NOW, targets)
    assert (
        in_force()
        == expected[:2]
        == [lock(1), lock(2, kind="service", value="svc-payments", until=NOW + timedelta(hours=1))]
    )
    assert all(one.created_at.tzinfo == UTC for one in in_force())
    assert inserted.rows == []
    assert after() == expected == [*in_force(), lock(4, value="bob")]
    assert head() is None  # an empty ledger


def test_rows_inserted_together_are_all_stored(engine: sa.Engine) -> None:
    """On PostgreSQL the rows go in as few statements as parameters allow (1,000 rows each)."""
    rows = [lock(i, value=f"user-{i}").__dict__ for i in range(1, 2502)]
    with engine.begin() as conn, Pipeline(conn) as pipeline:
        pipeline.add_many(locks_table.insert(), rows)
        pipeline.add_many(locks_table.insert(), [])  # nothing to insert: nothing queued
    with engine.connect() as conn:
        stored = [
            LockRecord.from_row(row)
            for row in conn.execute(sa.select(locks_table).order_by(locks_table.c.id))
        ]
    assert stored == [LockRecord(**row) for row in rows]


def test_a_refused_statement_raises_as_sqlalchemy_does_and_nothing_after_it_runs(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        locks.insert(conn, lock(1))
    with engine.connect() as conn:
        with pytest.raises(sa.exc.IntegrityError), conn.begin(), Pipeline(conn) as pipeline:
            pipeline.add(locks_table.insert(), lock(1).__dict__)  # the id is taken
            later = pipeline.add(sa.select(locks_table.c.id))
        assert not conn.invalidated  # a refusal: the connection is good
        with pytest.raises(RuntimeError):
            _ = later.rows
        assert conn.execute(sa.select(sa.func.count()).select_from(locks_table)).scalar_one() == 1


def test_a_read_queued_after_a_lock_reads_what_its_holder_committed(
    make_broker: Callable[..., Broker], pg_url: str
) -> None:
    """The safety of sending a lock and the read after it together (READ COMMITTED): the read's
    snapshot is taken once the lock is held, so a lock put meanwhile, whose transaction held the
    target until its commit, is seen."""
    engine = make_broker(db_url=pg_url).engine
    holder = engine.connect()
    holding = holder.begin()
    locks.hold(holder, [("user", "alice")], exclusive=True)
    locks.insert(holder, lock(1))
    found: list[list[LockRecord]] = []

    def check() -> None:
        with engine.begin() as conn:
            with Pipeline(conn) as pipeline:
                locks.hold_queued(pipeline, [("user", "alice")], exclusive=False)
                answer = locks.covering_queued(pipeline, NOW, [("user", "alice")])
            found.append(answer())

    checker = threading.Thread(target=check)
    checker.start()
    try:
        wait_for(lambda: _waiting_for_advisory_lock(engine), "the checker waits for the target")
    finally:
        holding.commit()
        holder.close()
        checker.join(10)
    assert found == [[lock(1)]]


def _waiting_for_advisory_lock(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        return bool(conn.exec_driver_sql(query).scalar_one())


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Until ``condition()`` holds, asked every 10 ms, at most ``timeout`` seconds."""
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError(f"timed out: {what}")


def test_a_database_that_stops_answering_fails_the_pipeline_and_its_connection_is_dropped(
    pg_url: str, proxy: FreezableProxy
) -> None:
    through = sa.engine.make_url(pg_url).set(host="127.0.0.1", port=proxy.port)
    timeouts = store_engine.DatabaseTimeouts(statement=0.5, connect=2.0)
    engine = store_engine.create_engine(through.render_as_string(hide_password=False), timeouts=timeouts)
    try:
        with engine.connect() as conn:
            conn.begin()
            proxy.freeze()
            with pytest.raises(sa.exc.OperationalError) as raised, Pipeline(conn) as pipeline:
                pipeline.add(sa.select(locks_table.c.id))
            assert raised.value.connection_invalidated
            assert conn.invalidated
        proxy.thaw()
        with engine.connect() as conn:  # a new connection: the dead one left the pool
            assert conn.execute(sa.select(sa.literal(1))).scalar_one() == 1
    finally:
        proxy.thaw()
        engine.dispose()
