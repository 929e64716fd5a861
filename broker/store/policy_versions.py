"""The policy_versions table: every policy put in force, newest last (``access.broker.rollout``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from access.broker.store import signals
from access.broker.store.tables import policy_versions

__all__ = ["PolicyVersion", "insert", "latest", "latest_number"]


@dataclass(frozen=True)
class PolicyVersion:
    version: int
    sha256: str
    source: str
    text: str
    recorded_at: datetime
    recorded_by: str


def latest_number(conn: sa.Connection) -> int | None:
    """The newest version's number (a cheap poll: no text), or None before the first."""
    number = conn.execute(sa.select(sa.func.max(policy_versions.c.version))).scalar()
    return None if number is None else int(number)


def latest(conn: sa.Connection) -> PolicyVersion | None:
    """The newest version, with its text, or None before the first."""
    row = conn.execute(sa.select(policy_versions).order_by(policy_versions.c.version.desc()).limit(1)).first()
    if row is None:
        return None
    return PolicyVersion(row.version, row.sha256, row.source, row.text, row.recorded_at, row.recorded_by)


def insert(conn: sa.Connection, *, sha256: str, source: str, text: str, at: datetime, by: str) -> int:
    """Record a new version; return its number (one more than any before, on every database).
    Every replica is told at commit (``signals``), and applies it."""
    result = conn.execute(
        policy_versions.insert().values(
            sha256=sha256, source=source[:1024], text=text, recorded_at=at, recorded_by=by[:64]
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    signals.send(conn, signals.Signal(signals.POLICY_VERSION, str(key[0])))
    return int(key[0])
