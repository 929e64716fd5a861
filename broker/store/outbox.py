"""The outbox table: add work, claim what is due, mark it done or failed, prune what is done.

A claim is a lease: the claimed rows' ``available_at`` moves to the end of the lease and their
``attempts`` goes up by one, in the claiming transaction. ``attempts`` is then the claim's token:
``done``, ``failed`` and ``abandon`` only touch a row still at that count, so a worker whose lease
ran out (and whose row another replica claimed again) cannot overwrite the newer claim's result.
A row given up on (``abandon``) is closed like a done one but keeps its ``last_error``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from access.broker.store.tables import outbox

__all__ = ["OutboxEntry", "abandon", "add", "claim_due", "done", "failed", "prune_done"]


@dataclass(frozen=True)
class OutboxEntry:
    """A claimed row: ``attempts`` counts this claim."""

    id: int
    kind: str
    payload: Mapping[str, Any]
    attempts: int


def add(conn: sa.Connection, kind: str, payload: Mapping[str, Any], now: datetime) -> int:
    """Write a row due at ``now``, in the caller's transaction; return its id."""
    result = conn.execute(
        outbox.insert().values(kind=kind, payload=dict(payload), created_at=now, available_at=now, attempts=0)
    )
    key = result.inserted_primary_key
    assert key is not None  # an insert of one row always has one
    return int(key[0])


def claim_due(
    conn: sa.Connection,
    *,
    now: datetime,
    lease_until: datetime,
    limit: int,
    only: Collection[str] | None = None,
    skip: Collection[str] = (),
) -> list[OutboxEntry]:
    """Claim up to ``limit`` rows due at ``now`` until ``lease_until``, oldest first; of the kinds
    in ``only`` (None: every kind) and not in ``skip``.

    On PostgreSQL the rows are locked ``FOR UPDATE SKIP LOCKED``: a replica claiming at the same
    moment skips them rather than waiting, and never gets them. SQLite has no row locks and needs
    none: every transaction begins IMMEDIATE, so claims run one after another.
    """
    query = (
        sa.select(outbox.c.id, outbox.c.kind, outbox.c.payload, outbox.c.attempts)
        .where(outbox.c.done_at.is_(None), outbox.c.available_at <= now)
        .order_by(outbox.c.available_at, outbox.c.id)
        .limit(limit)
    )
    if only is not None:
        query = query.where(outbox.c.kind.in_(sorted(only)))
    if skip:
        query = query.where(outbox.c.kind.not_in(sorted(skip)))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = conn.execute(query).all()
    if not rows:
        return []
    conn.execute(
        outbox.update()
        .where(outbox.c.id.in_([row.id for row in rows]))
        .values(available_at=lease_until, attempts=outbox.c.attempts + 1)
    )
    return [OutboxEntry(row.id, row.kind, row.payload, row.attempts + 1) for row in rows]


def done(conn: sa.Connection, entry: OutboxEntry, now: datetime) -> bool:
    """Mark a claimed row done; False if the claim was lost (the lease ran out and it was reclaimed)."""
    result = conn.execute(
        outbox.update()
        .where(outbox.c.id == entry.id, outbox.c.attempts == entry.attempts, outbox.c.done_at.is_(None))
        .values(done_at=now, last_error=None)
    )
    return result.rowcount == 1


def failed(conn: sa.Connection, entry: OutboxEntry, error: str, retry_at: datetime) -> bool:
    """Record a claimed row's failure and make it due again at ``retry_at``; False if the claim was lost."""
    result = conn.execute(
        outbox.update()
        .where(outbox.c.id == entry.id, outbox.c.attempts == entry.attempts, outbox.c.done_at.is_(None))
        .values(available_at=retry_at, last_error=error)
    )
    return result.rowcount == 1


def abandon(conn: sa.Connection, entry: OutboxEntry, error: str, now: datetime) -> bool:
    """Close a claimed row that will not be tried again, keeping ``error``; False if the claim was lost."""
    result = conn.execute(
        outbox.update()
        .where(outbox.c.id == entry.id, outbox.c.attempts == entry.attempts, outbox.c.done_at.is_(None))
        .values(done_at=now, last_error=error)
    )
    return result.rowcount == 1


def prune_done(conn: sa.Connection, before: datetime) -> int:
    """Delete rows done before ``before``; return how many. Rows not done are never pruned."""
    result = conn.execute(outbox.delete().where(outbox.c.done_at.is_not(None), outbox.c.done_at < before))
    return int(result.rowcount)
