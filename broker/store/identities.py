"""The ``identities`` table: one row per grant of a dynamic service, and its state.

::

    intended --made--> created --end begins--> ending --dropped--> dropped
        '----------------- creation refused ----------------------> failed

``intend`` writes the row in the transaction that issues the grant, BEFORE the target sees
anything; ``created`` records the name and the sealed password once the target made it. Every
update is conditional on the states it may come from, so of two replicas one wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa

from access.broker.store.tables import identities

__all__ = [
    "CREATED",
    "LIVE",
    "IdentityRecord",
    "created",
    "dropped",
    "ending",
    "failed",
    "get",
    "intend",
    "live",
    "note_error",
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
    )


def intend(conn: sa.Connection, grant_id: str, service: str, now: datetime) -> None:
    """Record that ``grant_id`` will get an identity on ``service`` (before it is made)."""
    conn.execute(
        identities.insert().values(grant_id=grant_id, service=service, state=INTENDED, created_at=now)
    )


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


def created(conn: sa.Connection, grant_id: str, name: str, sealed_password: bytes) -> bool:
    """The target made ``name``; False when the row is no longer ``intended`` (ended meanwhile)."""
    return _move(conn, grant_id, (INTENDED,), state=CREATED, target_name=name, password=sealed_password)


def ending(conn: sa.Connection, grant_id: str, name: str | None = None) -> bool:
    """The end begins: the password is forgotten at once (nobody may log in with it again)."""
    values: dict[str, object] = {"state": ENDING, "password": None}
    if name is not None:
        values["target_name"] = name
    return _move(conn, grant_id, (INTENDED, CREATED, ENDING), **values)


def dropped(conn: sa.Connection, grant_id: str, now: datetime) -> bool:
    return _move(conn, grant_id, LIVE, state=DROPPED, ended_at=now, password=None, error=None)


def failed(conn: sa.Connection, grant_id: str, error: str, now: datetime) -> bool:
    """Creation was refused; what the target made (if anything) is ended like any other."""
    return _move(conn, grant_id, LIVE, state=FAILED, ended_at=now, password=None, error=error[:_ERROR_LENGTH])


def note_error(conn: sa.Connection, grant_id: str, error: str) -> bool:
    """An end that failed (it is retried): why, for operators."""
    return _move(conn, grant_id, LIVE, error=error[:_ERROR_LENGTH])
