"""Reviewers' votes on pending grants (the ``approvals`` table): one row per reviewer and grant."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from access.broker.store.tables import approvals

__all__ = ["APPROVE", "DENY", "Vote", "for_grant", "for_grants", "insert"]

APPROVE = "approve"
DENY = "deny"

_ID_BATCH = 500


@dataclass(frozen=True)
class Vote:
    """One reviewer's word on a grant."""

    grant_id: str
    reviewer_id: str
    reviewer: str
    decision: str  # approve | deny
    comment: str
    at: datetime

    @classmethod
    def from_row(cls, row: Any) -> Vote:
        return cls(**{name: getattr(row, name) for name in cls.__dataclass_fields__})


def insert(conn: sa.Connection, vote: Vote) -> None:
    """Record a vote. Raises: sqlalchemy.exc.IntegrityError: this reviewer already voted."""
    conn.execute(
        approvals.insert().values(
            grant_id=vote.grant_id,
            reviewer_id=vote.reviewer_id,
            reviewer=vote.reviewer,
            decision=vote.decision,
            comment=vote.comment,
            at=vote.at,
        )
    )


def for_grant(conn: sa.Connection, grant_id: str) -> list[Vote]:
    """The votes on a grant, in the order they were cast."""
    query = sa.select(approvals).where(approvals.c.grant_id == grant_id).order_by(approvals.c.id)
    return [Vote.from_row(row) for row in conn.execute(query)]


def for_grants(conn: sa.Connection, grant_ids: Sequence[str]) -> dict[str, list[Vote]]:
    """The votes on each of these grants, in the order cast (grants without votes are left out)."""
    ids = list(dict.fromkeys(grant_ids))
    found: dict[str, list[Vote]] = {}
    for start in range(0, len(ids), _ID_BATCH):
        query = (
            sa.select(approvals)
            .where(approvals.c.grant_id.in_(ids[start : start + _ID_BATCH]))
            .order_by(approvals.c.id)
        )
        for row in conn.execute(query):
            found.setdefault(row.grant_id, []).append(Vote.from_row(row))
    return found
