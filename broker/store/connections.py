"""Broker instances (heartbeats) and the tunnel connections each owes a ``connection.close``.

An instance is one running broker process. It upserts its row every few seconds; one whose
heartbeat is older than the lease is dead. ``open_connections`` has a row per connection whose
open is in the ledger and whose close is not: the close deletes it, in its own transaction, so
what a dead instance left open is exactly its remaining rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from access.broker.store.tables import broker_instances, open_connections

__all__ = [
    "add_open",
    "count_open",
    "dead_instances",
    "heartbeat",
    "open_of",
    "remove_instance",
    "remove_open",
]


def heartbeat(conn: sa.Connection, instance_id: str, *, host: str, pid: int, now: datetime) -> None:
    """Record that ``instance_id`` is alive at ``now`` (its row is created the first time, and
    again should another replica have taken it for dead and removed it)."""
    updated = conn.execute(
        broker_instances.update().where(broker_instances.c.id == instance_id).values(heartbeat_at=now)
    )
    if updated.rowcount == 0:
        conn.execute(
            broker_instances.insert().values(
                id=instance_id, host=host[:255], pid=pid, started_at=now, heartbeat_at=now
            )
        )


def remove_instance(conn: sa.Connection, instance_id: str) -> None:
    conn.execute(broker_instances.delete().where(broker_instances.c.id == instance_id))


def dead_instances(conn: sa.Connection, *, now: datetime, lease: timedelta, alive: str) -> list[Any]:
    """Instances (other than ``alive``) with open connections and no sign of life within
    ``lease``: no heartbeat and no connection opened since. Rows of (instance_id, host, pid,
    heartbeat_at), the last three None when its row is gone.

    An open counts as a sign of life: a process whose first heartbeat failed, or whose row a
    replica removed during an outage, is alive as long as it opens connections."""
    cutoff = now - lease
    owners = (
        sa.select(
            open_connections.c.instance_id, sa.func.max(open_connections.c.opened_at).label("last_open")
        )
        .group_by(open_connections.c.instance_id)
        .subquery()
    )
    query = (
        sa.select(
            owners.c.instance_id,
            broker_instances.c.host,
            broker_instances.c.pid,
            broker_instances.c.heartbeat_at,
        )
        .select_from(owners.outerjoin(broker_instances, broker_instances.c.id == owners.c.instance_id))
        .where(owners.c.instance_id != alive)
        .where(owners.c.last_open < cutoff)
        .where(sa.or_(broker_instances.c.id.is_(None), broker_instances.c.heartbeat_at < cutoff))
    )
    return list(conn.execute(query).all())


def add_open(
    conn: sa.Connection,
    connection_id: str,
    *,
    instance_id: str,
    actor: str,
    target: str,
    details: Mapping[str, Any],
    now: datetime,
) -> None:
    conn.execute(
        open_connections.insert().values(
            id=connection_id,
            instance_id=instance_id,
            actor=actor,
            target=target,
            details=dict(details),
            opened_at=now,
        )
    )


def remove_open(conn: sa.Connection, connection_id: str) -> bool:
    """Delete a connection's row; False when there was none (another replica closed it)."""
    return conn.execute(open_connections.delete().where(open_connections.c.id == connection_id)).rowcount > 0


def count_open(conn: sa.Connection, target: str) -> int:
    """How many connections to ``target`` (a grant's audit target) are open, on every instance."""
    query = (
        sa.select(sa.func.count()).select_from(open_connections).where(open_connections.c.target == target)
    )
    return int(conn.execute(query).scalar_one())


def open_of(conn: sa.Connection, instance_id: str, limit: int) -> Sequence[Any]:
    """Up to ``limit`` open connections of ``instance_id``, oldest first."""
    return conn.execute(
        sa.select(open_connections)
        .where(open_connections.c.instance_id == instance_id)
        .order_by(open_connections.c.opened_at, open_connections.c.id)
        .limit(limit)
    ).all()
