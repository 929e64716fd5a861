"""Rate-limit events (the ``rate_events`` table): one row per counted failure or start."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from access.broker.store.tables import rate_events

__all__ = ["count_since", "delete_before", "delete_for_key_before", "insert"]


def count_since(conn: sa.Connection, key: str, since: datetime) -> int:
    """Events recorded for ``key`` strictly after ``since``."""
    query = (
        sa.select(sa.func.count())
        .select_from(rate_events)
        .where(rate_events.c.key == key, rate_events.c.at > since)
    )
    return int(conn.execute(query).scalar_one())


def insert(conn: sa.Connection, key: str, at: datetime) -> None:
    """Record one event for ``key`` at ``at``."""
    conn.execute(rate_events.insert().values(key=key, at=at))


def delete_for_key_before(conn: sa.Connection, key: str, before: datetime) -> None:
    """Drop the events of ``key`` at or before ``before``."""
    conn.execute(rate_events.delete().where(rate_events.c.key == key, rate_events.c.at <= before))


def delete_before(conn: sa.Connection, before: datetime) -> None:
    """Drop every event at or before ``before``."""
    conn.execute(rate_events.delete().where(rate_events.c.at <= before))
