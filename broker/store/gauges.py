"""What the metrics scrape reads from the database (``observe.collector``): counts and ages.

Every statement is an aggregate over an indexed column or a small table, and runs under the
engine's own bounds (PostgreSQL ``statement_timeout``, SQLite's busy timeout, the pool's wait),
so a scrape cannot hang on a slow database: it fails, and the scrape says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from access.broker.store.tables import audit_checkpoints, audit_log, grants, outbox

__all__ = ["DatabaseGauges", "read_gauges"]


@dataclass(frozen=True)
class DatabaseGauges:
    grants_by_state: dict[str, int]  # every state present, with its count
    outbox_depth: int  # rows not done
    outbox_oldest: datetime | None  # created_at of the oldest row not done
    ledger_entries: int  # the ledger's last sequence number
    checkpoint_seq: int  # the last signed checkpoint's sequence number (0: none yet)
    checkpoint_at: datetime | None


def read_gauges(conn: sa.Connection) -> DatabaseGauges:
    """Read them all on ``conn`` (a handful of aggregates)."""
    states = conn.execute(sa.select(grants.c.state, sa.func.count()).group_by(grants.c.state)).all()
    depth, oldest = conn.execute(
        sa.select(sa.func.count(), sa.func.min(outbox.c.created_at)).where(outbox.c.done_at.is_(None))
    ).one()
    entries = conn.execute(sa.select(sa.func.max(audit_log.c.seq))).scalar_one()
    checkpoint = conn.execute(
        sa.select(audit_checkpoints.c.seq, audit_checkpoints.c.at)
        .order_by(audit_checkpoints.c.id.desc())
        .limit(1)
    ).first()
    return DatabaseGauges(
        grants_by_state={str(state): int(count) for state, count in states},
        outbox_depth=int(depth),
        outbox_oldest=oldest,  # min() keeps the column's type: an aware UTC datetime
        ledger_entries=int(entries or 0),
        checkpoint_seq=int(checkpoint[0]) if checkpoint else 0,
        checkpoint_at=checkpoint[1] if checkpoint else None,
    )
