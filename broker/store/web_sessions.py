"""The approvals inbox's browser sign-ins (the ``web_sessions`` table, beside ``sessions``)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from access.broker.store.tables import web_sessions

__all__ = ["insert", "session_of"]


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
