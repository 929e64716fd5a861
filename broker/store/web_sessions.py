"""The approvals inbox's browser sign-ins (the ``web_sessions`` table, beside ``sessions``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa

from access.broker.store.tables import web_sessions

__all__ = ["count_for_sessions", "insert", "session_of"]

_ID_BATCH = 500  # ids per IN (...): well under every backend's bound-parameter limit


def insert(conn: sa.Connection, *, token_hash: str, session_id: str, created_at: datetime) -> None:
    """Tie a cookie token (its hash) to a session."""
    conn.execute(
        web_sessions.insert().values(token_hash=token_hash, session_id=session_id, created_at=created_at)
    )


def session_of(conn: sa.Connection, token_hash: str) -> str | None:
    """The id of the session a cookie token belongs to, or None for an unknown token."""
    session_id = conn.execute(
        sa.select(web_sessions.c.session_id).where(web_sessions.c.token_hash == token_hash)
    ).scalar_one_or_none()
    return None if session_id is None else str(session_id)


def count_for_sessions(conn: sa.Connection, session_ids: Sequence[str]) -> int:
    """How many browser sign-ins sit on the sessions ``session_ids`` (one per session at most).
    One query per 500 ids."""
    ids = list(dict.fromkeys(session_ids))
    total = 0
    for start in range(0, len(ids), _ID_BATCH):
        query = sa.select(sa.func.count()).where(
            web_sessions.c.session_id.in_(ids[start : start + _ID_BATCH])
        )
        total += int(conn.execute(query).scalar_one())
    return total
