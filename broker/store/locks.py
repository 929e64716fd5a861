"""The locks table (``access.broker.locks``): every statement the kill switch runs.

A lock is in force at ``now`` iff it was not lifted and ``until`` is null or later than ``now``
(``IN_FORCE``): an expired lock lifts itself with no write, on every replica at once.

``hold`` serialises a lock against the requests it covers on PostgreSQL (READ COMMITTED would
otherwise let a request that checked before the lock committed issue a grant the lock's sweep
never saw). SQLite needs nothing: every transaction there holds the one write lock.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from access.broker.store.pipeline import Pipeline
from access.broker.store.tables import locks

__all__ = [
    "KINDS",
    "LockRecord",
    "covering",
    "covering_queued",
    "hold",
    "hold_queued",
    "in_force_on",
    "insert",
    "lift",
    "listed",
]

# The values of ``locks.kind``: what a lock is put on.
KINDS = ("user", "service", "grant")
_LIST_LIMIT = 500


@dataclass(frozen=True)
class LockRecord:
    """One row of ``locks``."""

    id: str
    kind: str
    value: str
    reason: str | None
    created_by: str
    created_at: datetime
    until: datetime | None = None
    lifted_at: datetime | None = None
    lifted_by: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> LockRecord:
        return cls(**{name: getattr(row, name) for name in cls.__dataclass_fields__})

    def in_force(self, now: datetime) -> bool:
        """Not lifted, and no ``until`` or one still ahead (the same rule as ``IN_FORCE``)."""
        return self.lifted_at is None and (self.until is None or self.until > now)


def _in_force(now: datetime | sa.BindParameter[datetime]) -> sa.ColumnElement[bool]:
    return sa.and_(locks.c.lifted_at.is_(None), sa.or_(locks.c.until.is_(None), locks.c.until > now))


def hold(conn: sa.Connection, targets: Sequence[tuple[str, str]], *, exclusive: bool) -> None:
    """Hold the (kind, value) targets until the caller's transaction ends (PostgreSQL advisory
    locks): a lock holds its target exclusively, whatever checks it holds it shared, so each
    waits for the other's commit and then sees what it wrote. Take them before the first ledger
    append of the transaction (the ledger's own lock comes second, always), or two transactions
    can wait on each other."""
    held = _hold(conn.dialect.name, targets, exclusive=exclusive)
    if held is not None:
        conn.execute(*held)


def hold_queued(pipeline: Pipeline, targets: Sequence[tuple[str, str]], *, exclusive: bool) -> None:
    """``hold``, queued on ``pipeline``: held once it has run."""
    held = _hold(pipeline.conn.dialect.name, targets, exclusive=exclusive)
    if held is not None:
        pipeline.add(*held)


def _hold(
    dialect: str, targets: Sequence[tuple[str, str]], *, exclusive: bool
) -> tuple[sa.TextClause, dict[str, str]] | None:
    """The statement that holds ``targets`` and its parameters; None when there is nothing to hold."""
    if dialect != "postgresql" or not targets:
        return None
    keys = sorted({f"access_lock:{kind}:{value}" for kind, value in targets})
    return _hold_statement(len(keys), exclusive), {f"k{i}": key for i, key in enumerate(keys)}


@functools.cache
def _hold_statement(count: int, exclusive: bool) -> sa.TextClause:
    """Built once per count (see ``_covering_query``): the keys are taken in the order given."""
    fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    return sa.text("SELECT " + ", ".join(f"{fn}(hashtextextended(:k{i}, 0))" for i in range(count)))


def insert(conn: sa.Connection, record: LockRecord) -> None:
    """Store a new lock. Raises: sqlalchemy.exc.IntegrityError: the id is taken."""
    conn.execute(locks.insert().values(**asdict(record)))


@functools.cache
def _covering_query(count: int) -> sa.Select[Any]:
    """The ``covering`` query for ``count`` targets, with bound parameters (built once per count:
    every grant request runs it, see store/audit.py's statements)."""
    on = sa.or_(
        *(
            sa.and_(locks.c.kind == sa.bindparam(f"kind{i}"), locks.c.value == sa.bindparam(f"value{i}"))
            for i in range(count)
        )
    )
    in_force = _in_force(sa.bindparam("now", type_=locks.c.until.type))
    return sa.select(locks).where(on, in_force).order_by(locks.c.created_at, locks.c.id)


def covering(conn: sa.Connection, now: datetime, targets: Sequence[tuple[str, str]]) -> list[LockRecord]:
    """The locks in force at ``now`` on any of the (kind, value) targets, oldest first."""
    if not targets:
        return []
    return [LockRecord.from_row(row) for row in conn.execute(*_covering(now, targets))]


def covering_queued(
    pipeline: Pipeline, now: datetime, targets: Sequence[tuple[str, str]]
) -> Callable[[], list[LockRecord]]:
    """``covering``, queued on ``pipeline``: what it answers, to call once the pipeline has run."""
    if not targets:
        return list
    answer = pipeline.add(*_covering(now, targets))
    return lambda: [LockRecord.from_row(row) for row in answer.rows]


def _covering(now: datetime, targets: Sequence[tuple[str, str]]) -> tuple[sa.Select[Any], dict[str, Any]]:
    params: dict[str, Any] = {"now": now}
    for i, (kind, value) in enumerate(targets):
        params[f"kind{i}"] = kind
        params[f"value{i}"] = value
    return _covering_query(len(targets)), params


def in_force_on(conn: sa.Connection, kind: str, value: str, now: datetime) -> list[LockRecord]:
    """The locks in force at ``now`` on exactly this target, oldest first."""
    return covering(conn, now, [(kind, value)])


def lift(conn: sa.Connection, lock_ids: Sequence[str], *, now: datetime, by: str) -> int:
    """Mark the locks lifted (only those not lifted yet); return how many were."""
    if not lock_ids:
        return 0
    result = conn.execute(
        locks.update()
        .where(locks.c.id.in_(list(lock_ids)), locks.c.lifted_at.is_(None))
        .values(lifted_at=now, lifted_by=by[:64])
    )
    return int(result.rowcount)


def listed(conn: sa.Connection, now: datetime, *, include_ended: bool) -> list[LockRecord]:
    """Locks newest first (at most 500): those in force at ``now``, or all of them."""
    query = sa.select(locks)
    if not include_ended:
        query = query.where(_in_force(now))
    query = query.order_by(locks.c.created_at.desc(), locks.c.id).limit(_LIST_LIMIT)
    return [LockRecord.from_row(row) for row in conn.execute(query)]
