"""What the inbox page shows of a request that waits for review, worded for people. Pure.

The template gets plain strings only (escaped there): a grant becomes an :class:`InboxItem`,
and each clause of its reviewers one line saying whether it is met and, if not, whom it still
needs (``"needs 1 more of group:security"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from access.shared.durations import format_duration
from access.shared.models import Grant, GrantState, ReviewClause

__all__ = ["InboxItem", "clause_text", "item", "outcome_text", "state_text", "when"]


@dataclass(frozen=True)
class InboxItem:
    id: str
    subject: str
    service: str
    scope: str
    ttl: str
    reason: str
    age: str
    asked_at: str
    state: str
    pending: bool
    clauses: tuple[str, ...]
    approvals: tuple[str, ...]
    can_review: bool
    break_glass: bool


def when(moment: datetime) -> str:
    """``2026-12-02 06:25 UTC``: how the page shows a time."""
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def clause_text(clause: ReviewClause) -> str:
    """One clause as a sentence: met (by whom) or what it still needs."""
    among = ", ".join(clause.reviewers) or "(nobody)"
    by = f" (approved by {', '.join(clause.approved_by)})" if clause.approved_by else ""
    if clause.missing <= 0:
        return f"met: {clause.count} of {among}{by}"
    return f"needs {clause.missing} more of {among}{by}"


def state_text(grant: Grant) -> str:
    """Where the request stands: waiting (until when), granted (until when), or how it ended."""
    if grant.state is GrantState.PENDING:
        review = grant.review
        return f"waits for review until {when(review.review_expires_at)}" if review else "waits for review"
    if grant.state is GrantState.ACTIVE:
        return f"granted, active until {when(grant.expires_at)}"
    why = grant.ended_reason
    return f"{grant.state.value} ({why})" if why and why != grant.state.value else grant.state.value


def item(grant: Grant, now: datetime) -> InboxItem:
    """The facts of pending ``grant`` as the list shows them at ``now``."""
    review = grant.review
    ttl = format_duration(grant.ttl_seconds) if grant.ttl_seconds else format_duration(grant.seconds_left)
    return InboxItem(
        id=grant.id,
        subject=grant.subject,
        service=grant.service,
        scope=grant.scope,
        ttl=ttl,
        reason=grant.reason or "(none given)",
        age=format_duration(now - grant.created_at),
        asked_at=when(grant.created_at),
        state=state_text(grant),
        pending=grant.state is GrantState.PENDING,
        clauses=tuple(clause_text(c) for c in review.clauses) if review else (),
        approvals=tuple(
            f"{a.reviewer} {'approved' if a.decision == 'approve' else 'denied'}"
            + (f": {a.comment}" if a.comment else "")
            for a in (review.approvals if review else [])
        ),
        can_review=bool(review and review.can_review),
        break_glass=grant.break_glass,
    )


def outcome_text(grant: Grant, action: str) -> str:
    """What a reviewer is told after ``action`` ("approve" or "deny") on ``grant``, as it now is."""
    whose = f"{grant.subject}'s request for {grant.scope} on {grant.service} ({grant.id})"
    if action == "deny":
        return f"You denied {whose}."
    if grant.state is GrantState.ACTIVE:
        return f"You approved {whose}. It is granted: active until {when(grant.expires_at)}."
    if grant.state is GrantState.PENDING and grant.review is not None:
        still = [clause_text(c) for c in grant.review.clauses if c.missing > 0]
        return f"You approved {whose}. It still waits: " + "; ".join(still) + "."
    return f"You approved {whose}. It is now {grant.state.value}."
