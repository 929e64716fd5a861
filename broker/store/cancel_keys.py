"""The PostgreSQL cancel keys the broker issued, shared by its replicas (``tables.cancel_keys``).

One row per logged-in postgres channel, keyed by the pid the client was given: written when the
channel's login is done, deleted when it ends, and the rows of a process removed when it stops
or its lease has run out. The values are already protected (``tunnel.cancels``): a keyed hash of
the issued secret, the target's key sealed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from access.broker.store.tables import broker_instances, cancel_keys

__all__ = ["CancelRow", "add", "find", "remove", "remove_of", "remove_stale"]


@dataclass(frozen=True, slots=True)
class CancelRow:
    pid: int
    secret_mac: bytes
    grant_id: str
    host: str
    port: int
    target_key: bytes  # sealed
    instance_id: str


def add(conn: sa.Connection, row: CancelRow, *, now: datetime) -> None:
    """Record one channel's key.

    Raises:
        sqlalchemy.exc.IntegrityError: another channel (of any replica) holds that pid.
    """
    conn.execute(
        cancel_keys.insert().values(
            pid=row.pid,
            secret_mac=row.secret_mac,
            grant_id=row.grant_id,
            host=row.host[:255],
            port=row.port,
            target_key=row.target_key,
            instance_id=row.instance_id,
            created_at=now,
        )
    )


def find(conn: sa.Connection, pid: int) -> CancelRow | None:
    found = conn.execute(sa.select(cancel_keys).where(cancel_keys.c.pid == pid)).first()
    if found is None:
        return None
    return CancelRow(
        found.pid,
        bytes(found.secret_mac),
        found.grant_id,
        found.host,
        found.port,
        bytes(found.target_key),
        found.instance_id,
    )


def remove(conn: sa.Connection, pid: int, instance_id: str) -> bool:
    """Delete the key of one of ``instance_id``'s channels; False when there was none."""
    deleted = conn.execute(
        cancel_keys.delete().where(cancel_keys.c.pid == pid).where(cancel_keys.c.instance_id == instance_id)
    )
    return deleted.rowcount > 0


def remove_of(conn: sa.Connection, instance_id: str) -> int:
    """Delete every key of ``instance_id`` (it stops); how many there were."""
    return conn.execute(cancel_keys.delete().where(cancel_keys.c.instance_id == instance_id)).rowcount


def remove_stale(conn: sa.Connection, *, now: datetime, lease: timedelta, alive: str) -> int:
    """Delete the keys of processes (other than ``alive``) with no heartbeat within ``lease``,
    written before that too (a process alive but not yet seen keeps its fresh keys); how many."""
    cutoff = now - lease
    live = sa.select(broker_instances.c.id).where(broker_instances.c.heartbeat_at >= cutoff)
    return conn.execute(
        cancel_keys.delete()
        .where(cancel_keys.c.instance_id != alive)
        .where(cancel_keys.c.instance_id.not_in(live))
        .where(cancel_keys.c.created_at < cutoff)
    ).rowcount
