"""The ``identities`` table: one row per grant of a dynamic service, and its state.

::

    intended --made--> created --end begins--> ending --dropped--> dropped
        '----------------- creation refused ----------------------> failed

``intend`` writes the row in the transaction that issues the grant, BEFORE the target sees
anything, with the issuing request's attempt (``attempt_at``); ``created`` records the name and
the sealed password once the target made it, and only for the attempt that still holds the row:
``take_over`` gives an ``intended`` row whose attempt is stale to a new one (a reconcile after a
crash). Every update is conditional on the states it may come from, so of two replicas (or a
replica's outbox and its reconcile) exactly one moves a row, and only that one audits it;
``lost`` is the same for an identity the store never had a row for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from access.broker.store.tables import identities

__all__ = [
    "CREATED",
    "INTENDED",
    "LIVE",
    "IdentityRecord",
    "created",
    "dropped",
    "ending",
    "failed",
    "get",
    "intend",
    "live",
    "lost",
    "note_error",
    "take_over",
]

INTENDED, CREATED, ENDING, DROPPED, FAILED = "intended", "created", "ending", "dropped", "failed"
LIVE = (INTENDED, CREATED, ENDING)  # may have (or get) something on the target
_ERROR_LENGTH = 500


@dataclass(frozen=True)
class IdentityRecord:
    grant_id: str
    service: str
    target_name: str | None
    state: str
    created_at: datetime
    ended_at: datetime | None
    sealed_password: bytes | None = field(repr=False)
    error: str | None
    attempt_at: datetime | None = None  # None: a row written before the column existed

    @property
    def attempt(self) -> datetime:
        """When the latest attempt to make it began (a row older than the column: its creation)."""
        return self.attempt_at or self.created_at


def _record(row: sa.Row[tuple[object, ...]]) -> IdentityRecord:
    return IdentityRecord(
        grant_id=row.grant_id,
        service=row.service,
        target_name=row.target_name,
        state=row.state,
        created_at=row.created_at,
        ended_at=row.ended_at,
        sealed_password=row.password,
        error=row.error,
        attempt_at=row.attempt_at,
    )


def intend(conn: sa.Connection, grant_id: str, service: str, now: datetime) -> None:
    """Record that ``grant_id`` will get an identity on ``service`` (before it is made), by the
    attempt that begins at ``now``."""
    conn.execute(
        identities.insert().values(
            grant_id=grant_id, service=service, state=INTENDED, created_at=now, attempt_at=now
        )
    )


def _attempt_began() -> sa.ColumnElement[datetime]:
    return sa.func.coalesce(identities.c.attempt_at, identities.c.created_at)


def take_over(conn: sa.Connection, grant_id: str, now: datetime, stale_before: datetime) -> bool:
    """Give the ``intended`` row to a new attempt beginning at ``now`` if its attempt began before
    ``stale_before``; False when it is not ``intended`` or another attempt is recent (of two
    replicas taking it over at once, one wins)."""
    result = conn.execute(
        identities.update()
        .where(
            identities.c.grant_id == grant_id, identities.c.state == INTENDED, _attempt_began() < stale_before
        )
        .values(attempt_at=now)
    )
    return result.rowcount == 1


def get(conn: sa.Connection, grant_id: str) -> IdentityRecord | None:
    row = conn.execute(sa.select(identities).where(identities.c.grant_id == grant_id)).first()
    return None if row is None else _record(row)


def live(conn: sa.Connection, service: str | None = None, limit: int = 1000) -> list[IdentityRecord]:
    """Rows that may still have an identity on the target, oldest first."""
    query = sa.select(identities).where(identities.c.state.in_(LIVE))
    if service is not None:
        query = query.where(identities.c.service == service)
    rows = conn.execute(query.order_by(identities.c.created_at).limit(limit)).all()
    return [_record(row) for row in rows]


def _move(conn: sa.Connection, grant_id: str, from_states: tuple[str, ...], **values: object) -> bool:
    result = conn.execute(
        identities.update()
        .where(identities.c.grant_id == grant_id, identities.c.state.in_(from_states))
        .values(**values)
    )
    return result.rowcount == 1


def created(conn: sa.Connection, grant_id: str, name: str, sealed_password: bytes, attempt: datetime) -> bool:
    """The target made ``name`` for the attempt that began at ``attempt``; False when the row is
    no longer ``intended`` (ended meanwhile) or another attempt took it over."""
    result = conn.execute(
        identities.update()
        .where(identities.c.grant_id == grant_id, identities.c.state == INTENDED, _attempt_began() == attempt)
        .values(state=CREATED, target_name=name, password=sealed_password, error=None)
    )
    return result.rowcount == 1


def ending(conn: sa.Connection, grant_id: str, name: str | None = None) -> bool:
    """The end begins: the password is forgotten at once (nobody may log in with it again)."""
    values: dict[str, object] = {"state": ENDING, "password": None}
    if name is not None:
        values["target_name"] = name
    return _move(conn, grant_id, (INTENDED, CREATED, ENDING), **values)


def dropped(conn: sa.Connection, grant_id: str, now: datetime) -> bool:
    """The identity is gone from the target; False when the row was not live (someone else
    closed it first: theirs is the audit entry)."""
    return _move(conn, grant_id, LIVE, state=DROPPED, ended_at=now, password=None, error=None)


def lost(conn: sa.Connection, grant_id: str, service: str, name: str, now: datetime) -> bool:
    """Close, as ``dropped``, an identity found on the target for which the store had no row;
    False when a row exists (another replica closed it first, or the grant has one after all).

    A grant id longer than the column (a tag's may be 64 characters; the broker's own are 18)
    cannot be recorded: True, so its end is still audited."""
    if len(grant_id) > identities.c.grant_id.type.length:  # type: ignore[attr-defined]
        return True
    values = {
        "grant_id": grant_id,
        "service": service,
        "target_name": name,
        "state": DROPPED,
        "created_at": now,
        "ended_at": now,
    }
    insert = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(identities)
    return conn.execute(insert.values(**values).on_conflict_do_nothing()).rowcount == 1


def failed(conn: sa.Connection, grant_id: str, error: str, now: datetime) -> bool:
    """Creation was refused; what the target made (if anything) is ended like any other."""
    return _move(conn, grant_id, LIVE, state=FAILED, ended_at=now, password=None, error=error[:_ERROR_LENGTH])


def note_error(conn: sa.Connection, grant_id: str, error: str) -> bool:
    """An end that failed (it is retried): why, for operators."""
    return _move(conn, grant_id, LIVE, error=error[:_ERROR_LENGTH])
