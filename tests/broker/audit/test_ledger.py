"""The ledger's hash chain: canonical hashing, linkage, the database's append-only guard, concurrency."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import rfc8785
import sqlalchemy as sa

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.audit.canonical import Plain
from access.broker.audit.checkpoints import verify_ledger
from access.broker.clock import SystemClock
from access.broker.runtime import Broker
from access.broker.store.tables import audit_log

AT = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def test_entry_hash_is_sha256_of_canonical_json() -> None:
    body: dict[str, Any] = {
        "seq": 7,
        "at": "2030-01-02T03:04:05.678901Z",
        "actor": "alice",
        "action": "grant.issue",
        "target": "service:svc-payments/g-1",
        "details": {"b": 1, "a": "é"},
        "prev_hash": ledger.GENESIS,
    }
    expected = hashlib.sha256(rfc8785.dumps(body)).hexdigest()
    got = ledger.entry_hash(
        seq=7,
        at=AT,
        actor="alice",
        action=Action.GRANT_ISSUE,
        target="service:svc-payments/g-1",
        details={"a": "é", "b": 1},  # key order does not matter
        prev_hash=ledger.GENESIS,
    )
    assert got == expected


@pytest.mark.parametrize(
    "change",
    [
        {"seq": 8},
        {"actor": "mallory"},
        {"action": "grant.deny"},
        {"target": "service:svc-other/g-1"},
        {"details": {"a": "é", "b": 2}},
        {"prev_hash": "1" * 64},
    ],
)
def test_every_field_is_covered_by_the_hash(change: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "seq": 7,
        "at": AT,
        "actor": "alice",
        "action": "grant.issue",
        "target": "service:svc-payments/g-1",
        "details": {"a": "é", "b": 1},
        "prev_hash": ledger.GENESIS,
    }
    base = ledger.entry_hash(**fields)  # type: ignore[arg-type]
    assert ledger.entry_hash(**{**fields, **change}) != base  # type: ignore[arg-type]


@pytest.fixture
def broker(make_broker: Callable[..., Broker], db_url: str) -> Broker:
    return make_broker(db_url=db_url)


def _append(broker: Broker, n: int, actor: str = "alice") -> None:
    for i in range(n):
        with broker.transaction() as conn:
            ledger.append(
                conn, broker.clock, actor=actor, action=Action.LOGOUT, target=f"thing:{i}", details={"i": i}
            )


def _as_replicas(brokers: list[Broker], work: Callable[[Broker, str], None]) -> list[BaseException]:
    """``work(broker, "replica-N")`` in a thread per broker (own engine, as separate replicas
    would be), started together; what they raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(brokers))

    def run(b: Broker, name: str) -> None:
        try:
            start.wait(timeout=30)
            work(b, name)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(b, f"replica-{i}")) for i, b in enumerate(brokers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return errors


def test_chain_links_every_entry(broker: Broker) -> None:
    _append(broker, 5)
    with broker.transaction() as conn:
        rows = conn.execute(sa.select(audit_log).order_by(audit_log.c.seq)).all()
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    prev = ledger.GENESIS
    for row in rows:
        assert row.prev_hash == prev
        digest = ledger.entry_hash(
            seq=row.seq,
            at=row.at,
            actor=row.actor,
            action=row.action,
            target=row.target,
            details=json.loads(row.details),
            prev_hash=row.prev_hash,
        )
        assert digest == row.hash  # the stored time round-trips exactly on both databases
        prev = row.hash


DETAILS: list[dict[str, Any]] = [
    {"i": 1},
    {"text": 'é 漢 🙂 \u2028 \x00\x1f " \\', "n": -(2**53 - 1), "none": None, "ok": True},
    {"ratio": 0.1, "big": 2**52, "nested": {"z": [1, {"y": []}], "a": ""}},  # a float: rfc8785's own path
    {"ключ": "a key beyond ASCII", "\U0001f642": 1, "\uffff": 2},
    {"statements": Plain([Plain((0, "query", "SELECT 'é'")), Plain((12, "parse", "SELECT $1", "s1"))])},
]


def test_stored_entries_hash_as_rfc8785_says(broker: Broker) -> None:
    """What append stores, hashed the slow, obvious way: rfc8785 over the whole entry."""
    for i, details in enumerate(DETAILS):
        with broker.transaction() as conn:
            ledger.append(
                conn, broker.clock, actor="alice", action=Action.LOGOUT, target=f"t:{i}", details=details
            )
    with broker.transaction() as conn:
        rows = conn.execute(sa.select(audit_log).order_by(audit_log.c.seq)).all()
    assert len(rows) == len(DETAILS)
    for row, details in zip(rows, DETAILS, strict=True):
        stored = json.loads(row.details)
        assert stored == json.loads(json.dumps(details))
        body = {
            "seq": row.seq,
            "at": ledger.format_time(row.at),
            "actor": row.actor,
            "action": row.action,
            "target": row.target,
            "details": stored,
            "prev_hash": row.prev_hash,
        }
        assert row.hash == hashlib.sha256(rfc8785.dumps(body)).hexdigest()
    assert verify_ledger(broker.engine, broker.audit_key.public_key()).ok


def test_secrets_are_refused_in_details(broker: Broker) -> None:
    with pytest.raises(ValueError, match="must not carry secrets"), broker.transaction() as conn:
        ledger.append(
            conn, broker.clock, actor="a", action=Action.LOGOUT, target="t", details={"password": "hunter2"}
        )
    with broker.transaction() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar_one() == 0


@pytest.mark.parametrize(
    "statement", ["UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log WHERE seq = 1"]
)
def test_database_refuses_update_and_delete(broker: Broker, statement: str) -> None:
    _append(broker, 2)
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), broker.engine.begin() as conn:
        conn.exec_driver_sql(statement)
    with broker.transaction() as conn:
        assert conn.execute(sa.select(audit_log.c.actor)).scalars().all() == ["alice", "alice"]


def test_postgresql_refuses_truncate(make_broker: Callable[..., Broker], pg_url: str) -> None:
    broker = make_broker(db_url=pg_url)
    _append(broker, 1)
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), broker.engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE audit_log")


def test_concurrent_appenders_extend_one_chain(make_broker: Callable[..., Broker], pg_url: str) -> None:
    """Several threads, each with its own broker (own engine, as separate replicas would be)."""
    brokers = [make_broker(db_url=pg_url, clock=SystemClock()) for _ in range(4)]
    per_thread = 25
    assert _as_replicas(brokers, lambda b, name: _append(b, per_thread, actor=name)) == []
    result = verify_ledger(brokers[0].engine, brokers[0].audit_key.public_key())
    assert result.ok, result.problems
    assert result.entries == per_thread * len(brokers)
    with brokers[0].transaction() as conn:
        actors = conn.execute(sa.select(audit_log.c.actor)).scalars().all()
    assert sorted(set(actors)) == [f"replica-{i}" for i in range(4)]


def _append_in_one(conn: sa.Connection, broker: Broker, n: int, actor: str) -> None:
    for i in range(n):
        ledger.append(
            conn, broker.clock, actor=actor, action=Action.LOGOUT, target=f"t:{i}", details={"i": i}
        )


def test_appends_in_one_transaction_read_the_head_once(broker: Broker) -> None:
    # The second and third appends of a transaction already hold the chain: they chain onto the
    # entry it appended without reading the head back.
    _append(broker, 1)
    reads: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM audit_log" in statement:
            reads.append(statement)

    sa.event.listen(broker.engine, "before_cursor_execute", count)
    try:
        with broker.transaction() as conn:
            _append_in_one(conn, broker, 3, "alice")
    finally:
        sa.event.remove(broker.engine, "before_cursor_execute", count)
    assert len(reads) == 1
    result = verify_ledger(broker.engine, broker.audit_key.public_key())
    assert result.ok and result.entries == 4, result.problems


def test_an_append_after_a_savepoint_reads_the_head_again(any_broker: Broker) -> None:
    broker = any_broker
    with broker.transaction() as conn:
        _append_in_one(conn, broker, 1, "alice")
        with conn.begin_nested():  # released: its entry stays, so the head moved inside it
            _append_in_one(conn, broker, 1, "bob")
        _append_in_one(conn, broker, 1, "carol")
        savepoint = conn.begin_nested()
        _append_in_one(conn, broker, 1, "dave")
        savepoint.rollback()  # its entry is gone: the head is carol's again
        _append_in_one(conn, broker, 1, "erin")
    result = verify_ledger(broker.engine, broker.audit_key.public_key())
    assert result.ok and result.entries == 4, result.problems
    with broker.transaction() as conn:
        actors = conn.execute(sa.select(audit_log.c.actor).order_by(audit_log.c.seq)).scalars().all()
    assert actors == ["alice", "bob", "carol", "erin"]


def test_concurrent_transactions_of_several_appends_extend_one_chain(
    make_broker: Callable[..., Broker], pg_url: str
) -> None:
    brokers = [make_broker(db_url=pg_url, clock=SystemClock()) for _ in range(3)]

    def work(b: Broker, name: str) -> None:
        for _ in range(10):
            with b.transaction() as conn:
                _append_in_one(conn, b, 3, name)

    assert _as_replicas(brokers, work) == []
    result = verify_ledger(brokers[0].engine, brokers[0].audit_key.public_key())
    assert result.ok and result.entries == 90, result.problems
