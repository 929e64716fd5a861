"""The grants table: every statement ``access.broker.grants`` runs, one small function each.

Each takes the caller's connection, so it runs in the caller's transaction. State changes are
conditional on the state the caller read (``end``): with several replicas, or a replica and an
admin command, exactly one of them moves a grant, and only that one audits it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from access.broker.store import signals
from access.broker.store.deferred import DeferredInsert
from access.broker.store.tables import grants

__all__ = [
    "GrantRecord",
    "activate",
    "deferred",
    "due_for_expiry",
    "end",
    "extend",
    "get",
    "insert",
    "list_for_principal",
    "live",
    "lock",
    "pending",
    "states",
    "usable",
]

# Lists of ids are sent in chunks: databases bound the number of parameters of one statement.
_ID_BATCH = 500


@dataclass(frozen=True)
class GrantRecord:
    """One row of ``grants``, as stored (``state`` is the column; see ``effective_state``)."""

    id: str
    principal_id: str
    subject: str
    service: str
    kind: str
    scope: str
    reason: str
    state: str
    rule: str | None
    requirement: str
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None = None
    ended_reason: str | None = None
    ended_by: str | None = None
    ttl_seconds: int | None = None  # the TTL asked for (a pending grant's clock starts at approval)
    approved_at: datetime | None = None
    break_glass: bool = False

    @classmethod
    def from_row(cls, row: Any) -> GrantRecord:
        return cls(**{name: getattr(row, name) for name in cls.__dataclass_fields__})


# Built once (issuing a grant runs it): see store/audit.py's statements. New grants are inserted
# at once, or at the end of a batch's block (``deferred``: a batch of grant requests).
_NEW = DeferredInsert(grants.insert())


def insert(conn: sa.Connection, record: GrantRecord) -> None:
    """Store a new grant (at the end of the ``deferred`` block the transaction is in, if any).

    Raises: sqlalchemy.exc.IntegrityError: the id is taken.
    """
    # Every field is a scalar: a shallow dict is what ``asdict`` would give, without its deep copy.
    _NEW.insert(conn, {name: getattr(record, name) for name in record.__dataclass_fields__})


def deferred(conn: sa.Connection) -> AbstractContextManager[None]:
    """New grants stored on ``conn`` in the block are inserted together when it ends, in one
    statement (``store.deferred``); nothing in the block may read them back."""
    return _NEW.block(conn)


def get(conn: sa.Connection, grant_id: str) -> GrantRecord | None:
    """The grant with this id, or None."""
    row = conn.execute(sa.select(grants).where(grants.c.id == grant_id)).first()
    return None if row is None else GrantRecord.from_row(row)


def lock(conn: sa.Connection, grant_id: str) -> None:
    """Hold the grant's row until the caller's transaction ends (PostgreSQL ``FOR UPDATE``), so
    what the caller counts for it cannot change meanwhile, whichever replica counts. SQLite needs
    nothing: every transaction there already holds the one write lock (``BEGIN IMMEDIATE``)."""
    conn.execute(sa.select(grants.c.id).where(grants.c.id == grant_id).with_for_update())


def list_for_principal(
    conn: sa.Connection, principal_id: str, *, usable_at: datetime | None, limit: int
) -> list[GrantRecord]:
    """A principal's grants, newest first; only those usable at ``usable_at`` unless it is None."""
    query = sa.select(grants).where(grants.c.principal_id == principal_id)
    if usable_at is not None:
        # Usable, or still waiting for review (a pending grant's expiry is its review deadline).
        query = query.where(grants.c.state.in_(("active", "pending")), grants.c.expires_at > usable_at)
    query = query.order_by(grants.c.created_at.desc(), grants.c.id).limit(limit)
    return [GrantRecord.from_row(row) for row in conn.execute(query)]


def list_break_glass(conn: sa.Connection, principal_id: str | None, *, limit: int) -> list[GrantRecord]:
    """Grants issued through break-glass rules, newest first, whatever their state: one
    principal's, or everyone's when ``principal_id`` is None."""
    query = sa.select(grants).where(grants.c.break_glass.is_(True))
    if principal_id is not None:
        query = query.where(grants.c.principal_id == principal_id)
    query = query.order_by(grants.c.created_at.desc(), grants.c.id).limit(limit)
    return [GrantRecord.from_row(row) for row in conn.execute(query)]


def live(
    conn: sa.Connection,
    now: datetime,
    *,
    states: tuple[str, ...] = ("active", "pending"),
    principal_id: str | None = None,
    service: str | None = None,
) -> list[GrantRecord]:
    """Grants in ``states`` not past their expiry at ``now`` (a pending one's expiry is its review
    deadline), of one principal and/or on one service, oldest first."""
    query = sa.select(grants).where(grants.c.state.in_(states), grants.c.expires_at > now)
    if principal_id is not None:
        query = query.where(grants.c.principal_id == principal_id)
    if service is not None:
        query = query.where(grants.c.service == service)
    query = query.order_by(grants.c.created_at, grants.c.id)
    return [GrantRecord.from_row(row) for row in conn.execute(query)]


def usable(conn: sa.Connection, now: datetime) -> list[GrantRecord]:
    """Every grant that is active and not past its expiry at ``now``, oldest first."""
    query = (
        sa.select(grants)
        .where(grants.c.state == "active", grants.c.expires_at > now)
        .order_by(grants.c.created_at, grants.c.id)
    )
    return [GrantRecord.from_row(row) for row in conn.execute(query)]


def pending(conn: sa.Connection, now: datetime, limit: int | None = None) -> list[GrantRecord]:
    """Grants waiting for review at ``now`` (pending, before their review deadline), oldest
    first; at most ``limit`` (None: all)."""
    query = (
        sa.select(grants)
        .where(grants.c.state == "pending", grants.c.expires_at > now)
        .order_by(grants.c.created_at, grants.c.id)
    )
    if limit is not None:
        query = query.limit(limit)
    return [GrantRecord.from_row(row) for row in conn.execute(query)]


def due_for_expiry(conn: sa.Connection, now: datetime, limit: int) -> list[GrantRecord]:
    """Active grants past their expiry and pending ones past their review deadline (at or before
    ``now``), the oldest first."""
    query = (
        sa.select(grants)
        .where(grants.c.state.in_(("active", "pending")), grants.c.expires_at <= now)
        .order_by(grants.c.expires_at)
        .limit(limit)
    )
    return [GrantRecord.from_row(row) for row in conn.execute(query)]


def states(conn: sa.Connection, grant_ids: Sequence[str]) -> dict[str, tuple[str, datetime, str | None]]:
    """The state column, expiry and ended reason of each known id (unknown ids are left out)."""
    ids = list(dict.fromkeys(grant_ids))
    found: dict[str, tuple[str, datetime, str | None]] = {}
    for start in range(0, len(ids), _ID_BATCH):
        query = sa.select(grants.c.id, grants.c.state, grants.c.expires_at, grants.c.ended_reason).where(
            grants.c.id.in_(ids[start : start + _ID_BATCH])
        )
        for row in conn.execute(query):
            found[row.id] = (row.state, row.expires_at, row.ended_reason)
    return found


def end(
    conn: sa.Connection,
    grant_id: str,
    *,
    from_state: str,
    to_state: str,
    now: datetime,
    reason: str,
    actor: str,
) -> bool:
    """Move a grant from ``from_state`` to ``to_state``; False when it was no longer in ``from_state``
    (someone else moved it first), and then nothing changed. Every replica is told at commit
    (``signals``), so each cuts the grant's tunnels."""
    result = conn.execute(
        grants.update()
        .where(grants.c.id == grant_id, grants.c.state == from_state)
        .values(state=to_state, ended_at=now, ended_reason=reason, ended_by=actor)
    )
    if result.rowcount != 1:
        return False
    signals.send(conn, signals.Signal(signals.GRANT_ENDED, grant_id, reason=reason))
    return True


def extend(
    conn: sa.Connection, grant_id: str, *, old_expiry: datetime, new_expiry: datetime, now: datetime
) -> bool:
    """Move an active grant's expiry from ``old_expiry`` to ``new_expiry``; False when the grant
    is no longer active with that expiry and time left at ``now`` (another request extended, revoked
    or expired it first), and then nothing changed. Every replica is told at commit, so each
    moves the cut of the grant's tunnels."""
    result = conn.execute(
        grants.update()
        .where(
            grants.c.id == grant_id,
            grants.c.state == "active",
            grants.c.expires_at == old_expiry,
            grants.c.expires_at > now,
        )
        .values(expires_at=new_expiry)
    )
    if result.rowcount != 1:
        return False
    signals.send(conn, signals.Signal(signals.GRANT_EXTENDED, grant_id, expires_at=new_expiry))
    return True


def activate(conn: sa.Connection, grant_id: str, *, approved_at: datetime, expires_at: datetime) -> bool:
    """Move a pending grant to active as of ``approved_at``, usable until ``expires_at``; False
    when it was no longer pending (denied, cancelled or expired first), and then nothing changed."""
    result = conn.execute(
        grants.update()
        .where(grants.c.id == grant_id, grants.c.state == "pending")
        .values(state="active", approved_at=approved_at, expires_at=expires_at)
    )
    return result.rowcount == 1
