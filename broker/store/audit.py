"""The ledger's and checkpoints' SQL: the chain head, appends, keyset reads and the search.

The hash chain itself (what an entry's hash covers, verification) is ``access.broker.audit``'s;
this module only reads and writes rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from access.broker.store.tables import audit_checkpoints, audit_log

__all__ = [
    "chain_head",
    "checkpoint_rows",
    "entries_after",
    "insert_checkpoint",
    "insert_entry",
    "last_checkpoint_seq",
    "latest_checkpoint",
    "lock_chain",
    "search",
]


# Built once: every append runs these, and a statement made per call costs more CPU in
# SQLAlchemy's construction and cache-key walk than the database takes to run it (a module-level
# statement's cache key is computed once; benchmarks/grants.py).
_LOCK_CHAIN = sa.text("SELECT pg_advisory_xact_lock(hashtext('access_audit_log'))")
_HEAD = sa.select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
_INSERT_ENTRY = audit_log.insert()


def lock_chain(conn: sa.Connection) -> None:
    """Serialise appenders for the rest of the transaction.

    PostgreSQL: a transaction-scoped advisory lock; SQLite: BEGIN IMMEDIATE already holds the
    one write lock (store.engine), so there is nothing to take.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(_LOCK_CHAIN)


def chain_head(conn: sa.Connection) -> tuple[int, str] | None:
    """The newest entry's (seq, hash), or None for an empty ledger."""
    head = conn.execute(_HEAD).first()
    return None if head is None else (head.seq, head.hash)


def insert_entry(
    conn: sa.Connection,
    *,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    target: str,
    details_json: str,
    prev_hash: str,
    digest: str,
) -> None:
    conn.execute(
        _INSERT_ENTRY,
        {
            "seq": seq,
            "at": at,
            "actor": actor,
            "action": action,
            "target": target,
            "details": details_json,
            "prev_hash": prev_hash,
            "hash": digest,
        },
    )


def entries_after(
    conn: sa.Connection, after: int, limit: int, since: datetime | None = None
) -> Sequence[Any]:
    """Up to ``limit`` entries with seq > ``after``, oldest first (keyset pagination)."""
    query = sa.select(audit_log).where(audit_log.c.seq > after).order_by(audit_log.c.seq).limit(limit)
    if since is not None:
        query = query.where(audit_log.c.at >= since)
    return conn.execute(query).all()


def search(
    conn: sa.Connection,
    *,
    service: str | None,
    actor: str | None,
    start: datetime | None,
    limit: int,
    grant: str | None = None,
    action: str | None = None,
) -> Sequence[Any]:
    """Entries about ``service`` (its grants and connections too), about ``grant``, by ``actor``,
    of ``action``, since ``start``; newest first, at most ``limit``."""
    query = sa.select(audit_log)
    if grant:
        query = query.where(audit_log.c.target.endswith(f"/{grant}", autoescape=True))
    if action:
        query = query.where(audit_log.c.action == action)
    if service:
        # Grant and connection entries target "service:NAME/GRANT" (grants.grant_target).
        query = query.where(
            sa.or_(
                audit_log.c.target == f"service:{service}",
                audit_log.c.target.startswith(f"service:{service}/"),
            )
        )
    if actor:
        query = query.where(audit_log.c.actor == actor)
    if start is not None:
        query = query.where(audit_log.c.at >= start)
    return conn.execute(query.order_by(audit_log.c.seq.desc()).limit(limit)).all()


def last_checkpoint_seq(conn: sa.Connection) -> int | None:
    value = conn.execute(sa.select(sa.func.max(audit_checkpoints.c.seq))).scalar()
    return None if value is None else int(value)


def latest_checkpoint(conn: sa.Connection) -> Any | None:
    """The stored checkpoint with the highest seq (the newest of those), or None."""
    return conn.execute(
        sa.select(audit_checkpoints)
        .order_by(audit_checkpoints.c.seq.desc(), audit_checkpoints.c.id.desc())
        .limit(1)
    ).first()


def insert_checkpoint(
    conn: sa.Connection, *, seq: int, head_hash: str, at: datetime, key_id: str, signature: str
) -> None:
    conn.execute(
        audit_checkpoints.insert().values(
            seq=seq, head_hash=head_hash, at=at, key_id=key_id, signature=signature
        )
    )


def checkpoint_rows(conn: sa.Connection) -> Sequence[Any]:
    """Every stored checkpoint, by seq."""
    return conn.execute(
        sa.select(audit_checkpoints).order_by(audit_checkpoints.c.seq, audit_checkpoints.c.id)
    ).all()
