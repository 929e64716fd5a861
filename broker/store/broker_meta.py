"""The broker's identity on this database (the ``broker_meta`` row): what replicas must share."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from access.broker.store.tables import broker_meta

__all__ = ["Identity", "forget", "insert", "read", "set_issuer", "set_keys"]

_ROW = 1


@dataclass(frozen=True)
class Identity:
    """``issuer`` is None until a broker with a stable public URL has started."""

    issuer: str | None
    token_key_id: str
    audit_key_id: str
    broker_id: str | None = None  # None: this row is being written (insert takes token_key_id)


def read(conn: sa.Connection) -> Identity | None:
    """The recorded identity, or None before the first ``serve``."""
    row = conn.execute(sa.select(broker_meta).where(broker_meta.c.id == _ROW)).first()
    if row is None:
        return None
    return Identity(row.issuer, row.token_key_id, row.audit_key_id, row.broker_id or row.token_key_id)


def insert(conn: sa.Connection, identity: Identity, at: datetime) -> None:
    """Record ``identity``. Raises ``IntegrityError`` when another broker recorded one first."""
    conn.execute(
        broker_meta.insert().values(
            id=_ROW,
            issuer=identity.issuer,
            token_key_id=identity.token_key_id,
            audit_key_id=identity.audit_key_id,
            recorded_at=at,
            broker_id=identity.broker_id or identity.token_key_id,
        )
    )


def set_keys(conn: sa.Connection, token_key_id: str, audit_key_id: str, at: datetime) -> None:
    """Record the keys that sign now, after a rotation (the broker id stays as it is)."""
    conn.execute(
        broker_meta.update()
        .where(broker_meta.c.id == _ROW)
        .values(token_key_id=token_key_id, audit_key_id=audit_key_id, recorded_at=at)
    )


def set_issuer(conn: sa.Connection, issuer: str, at: datetime) -> None:
    """Record the issuer where none was recorded yet (conditional: the first one wins)."""
    conn.execute(
        broker_meta.update()
        .where(broker_meta.c.id == _ROW, broker_meta.c.issuer.is_(None))
        .values(issuer=issuer, recorded_at=at)
    )


def forget(conn: sa.Connection) -> bool:
    """Drop the recorded identity (the next ``serve`` records its own). True if there was one."""
    return conn.execute(broker_meta.delete().where(broker_meta.c.id == _ROW)).rowcount > 0
