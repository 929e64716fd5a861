"""The ledger's and checkpoints' SQL: the chain head, appends, keyset reads and the search.

The hash chain itself (what an entry's hash covers, verification) is ``access.broker.audit``'s;
this module only reads and writes rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from access.broker.store.deferred import DeferredInsert
from access.broker.store.pipeline import Pipeline
from access.broker.store.tables import audit_checkpoints, audit_log, audit_sink_cursor, grants

__all__ = [
    "ENTRIES",
    "chain_head",
    "chain_rows",
    "checkpoint_rows",
    "entries_after",
    "entry_row",
    "insert_checkpoint",
    "last_checkpoint_seq",
    "latest_checkpoint",
    "lock_chain",
    "lock_chain_and_head",
    "move_sink_cursor",
    "search",
    "search_after",
    "sink_cursor",
]


# Built once: every append runs these, and a statement made per call costs more CPU in
# SQLAlchemy's construction and cache-key walk than the database takes to run it (a module-level
# statement's cache key is computed once; benchmarks/grants.py).
_LOCK_CHAIN = sa.text("SELECT pg_advisory_xact_lock(hashtext('access_audit_log'))")
_HEAD = sa.select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
# Appends: at once, or at the end of a batch's block (``audit.ledger.deferred``).
ENTRIES = DeferredInsert(audit_log.insert())


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


def lock_chain_and_head(pipeline: Pipeline) -> Callable[[], tuple[int, str] | None]:
    """``lock_chain`` then ``chain_head``, queued on ``pipeline`` (the head is read once the lock
    is held: each statement of a pipeline has its own snapshot): the head, to call once it has run."""
    if pipeline.conn.dialect.name == "postgresql":
        pipeline.add(_LOCK_CHAIN)
    answer = pipeline.add(_HEAD)

    def head() -> tuple[int, str] | None:
        rows = answer.rows
        return (rows[0].seq, rows[0].hash) if rows else None

    return head


def entry_row(
    *,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    target: str,
    details_json: str,
    prev_hash: str,
    digest: str,
) -> dict[str, Any]:
    """One entry as ``ENTRIES.insert`` takes it."""
    return {
        "seq": seq,
        "at": at,
        "actor": actor,
        "action": action,
        "target": target,
        "details": details_json,
        "prev_hash": prev_hash,
        "hash": digest,
    }


def entries_after(
    conn: sa.Connection, after: int, limit: int, since: datetime | None = None
) -> Sequence[Any]:
    """Up to ``limit`` entries with seq > ``after``, oldest first (keyset pagination)."""
    query = sa.select(audit_log).where(audit_log.c.seq > after).order_by(audit_log.c.seq).limit(limit)
    if since is not None:
        query = query.where(audit_log.c.at >= since)
    return conn.execute(query).all()


def chain_rows(conn: sa.Connection, after: int, limit: int) -> list[tuple[Any, ...]]:
    """Up to ``limit`` entries with seq > ``after``, oldest first, as plain tuples of
    (seq, at, actor, action, target, details, prev_hash, hash) for verification.

    ``at`` comes as the driver gives it: SQLite's text (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC),
    a datetime on PostgreSQL. The rows come straight from the driver's cursor: parsing times and
    making result rows cost more per row than hashing the entry does (benchmarks/ledger.py).
    """
    compiled = _CHAIN_ROWS.compile(dialect=conn.dialect)
    values = compiled.construct_params({"after": after, "limit": limit})
    params: Any = [values[k] for k in compiled.positiontup or ()] if compiled.positional else values
    cursor = conn.connection.cursor()
    try:
        cursor.execute(str(compiled), params)
        return list(cursor.fetchall())
    finally:
        cursor.close()


_CHAIN_ROWS = (
    sa.select(
        audit_log.c.seq,
        sa.type_coerce(audit_log.c.at, sa.String),  # no result processing: the driver's value
        audit_log.c.actor,
        audit_log.c.action,
        audit_log.c.target,
        audit_log.c.details,
        audit_log.c.prev_hash,
        audit_log.c.hash,
    )
    .where(audit_log.c.seq > sa.bindparam("after"))
    .order_by(audit_log.c.seq)
    .limit(sa.bindparam("limit"))
)


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
    query = _filtered(sa.select(audit_log), service, actor, start, _grant_filter(conn, grant), action)
    return conn.execute(query.order_by(audit_log.c.seq.desc()).limit(limit)).all()


def search_after(
    conn: sa.Connection,
    *,
    after: int,
    upto: int,
    limit: int,
    service: str | None = None,
    actor: str | None = None,
    start: datetime | None = None,
    grant: str | None = None,
    action: str | None = None,
) -> Sequence[Any]:
    """Entries with ``after`` < seq <= ``upto`` matching the filters of ``search``; oldest
    first, at most ``limit`` (what a follower reads next)."""
    query = sa.select(audit_log).where(audit_log.c.seq > after, audit_log.c.seq <= upto)
    query = _filtered(query, service, actor, start, _grant_filter(conn, grant), action)
    return conn.execute(query.order_by(audit_log.c.seq).limit(limit)).all()


_GRANT_SERVICE = sa.select(grants.c.service).where(grants.c.id == sa.bindparam("grant_id"))


def _grant_filter(conn: sa.Connection, grant: str | None) -> sa.ColumnElement[bool] | None:
    """Which entries are about ``grant``: those whose target is the grant's
    (``service:NAME/GRANT``, grants.grant_target), and the tunnel's refusals of a connection to
    it (``grant:GRANT``: the grant asked for may not exist), found through the index on ``target``.

    Only for a grant the grants table does not hold (grants are never deleted: a ledger carried
    over from elsewhere) are the first every target ending ``/GRANT``, a scan of the whole ledger.
    """
    if not grant:
        return None
    refused = f"grant:{grant}"
    service = conn.execute(_GRANT_SERVICE, {"grant_id": grant}).scalar()
    if service is None:
        return sa.or_(
            audit_log.c.target == refused, audit_log.c.target.endswith(f"/{grant}", autoescape=True)
        )
    return audit_log.c.target.in_([f"service:{service}/{grant}", refused])


def _filtered(
    query: sa.Select[Any],
    service: str | None,
    actor: str | None,
    start: datetime | None,
    about_grant: sa.ColumnElement[bool] | None,
    action: str | None,
) -> sa.Select[Any]:
    if about_grant is not None:
        query = query.where(about_grant)
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
        query = query.where(audit_log.c.at >= start, audit_log.c.seq >= _first_seq_since(start))
    return query


def _first_seq_since(start: datetime) -> Any:
    """The lowest seq of an entry at or after ``start`` (a subquery over the index on ``at``).

    Every entry the time bound keeps has a seq at least this, so adding ``seq >= it`` changes
    nothing found (times need not rise with seq: brokers' clocks differ); it lets the database
    walk seq from the head down to it instead of the whole ledger for one that matches.
    ``seq + 0``: SQLite would otherwise find the minimum by walking seq up from the first
    entry, not the index on ``at``.
    """
    return (
        sa.select(sa.func.coalesce(sa.func.min(audit_log.c.seq + 0), 0))
        .where(audit_log.c.at >= start)
        .scalar_subquery()
    )


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


def sink_cursor(conn: sa.Connection, name: str) -> int:
    """The last seq the sink ``name`` delivered; 0 before its first delivery."""
    value = conn.execute(
        sa.select(audit_sink_cursor.c.last_seq).where(audit_sink_cursor.c.name == name)
    ).scalar()
    return 0 if value is None else int(value)


def move_sink_cursor(conn: sa.Connection, name: str, was: int, now: int, at: datetime) -> bool:
    """Move the sink's cursor from ``was`` to ``now`` if it is still at ``was`` (another replica
    may have delivered meanwhile); True if it moved."""
    if was == 0:
        exists = conn.execute(
            sa.select(audit_sink_cursor.c.name).where(audit_sink_cursor.c.name == name)
        ).first()
        if exists is None:
            conn.execute(audit_sink_cursor.insert().values(name=name, last_seq=now, updated_at=at))
            return True
    moved = conn.execute(
        audit_sink_cursor.update()
        .where(audit_sink_cursor.c.name == name, audit_sink_cursor.c.last_seq == was)
        .values(last_seq=now, updated_at=at)
    )
    return moved.rowcount == 1
