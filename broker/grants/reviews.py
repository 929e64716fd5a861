"""Where a request that needs approval stands, and who may review it. Reads only: the votes
themselves are cast in ``approvals``.

Reviewers are always those of the grant's rule **in the policy in force now**
(``broker.policy.rule``): a reload that drops a reviewer takes their say away at once, and a
rule that is gone, or no longer asks for approval, has no reviewers (fail closed). Approvals are
tallied against that rule with each approver's groups of today in the directory; a disabled
approver counts for nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa

from access.broker.auth.principal import AuthContext
from access.broker.policy import ApprovalRule, Policy, Subject, Tally, evaluate, tally
from access.broker.store import principals
from access.broker.store.approvals import APPROVE, Vote
from access.broker.store.grants import GrantRecord
from access.shared.models import Approval, Review, ReviewClause

__all__ = [
    "approvers",
    "current_tally",
    "describe_missing",
    "is_reviewer",
    "no_longer_allowed",
    "not_a_reviewer",
    "review_of",
    "reviewers_of",
]


def reviewers_of(policy: Policy, record: GrantRecord) -> ApprovalRule | None:
    """The reviewers of ``record``'s rule in ``policy``; None when the rule is gone or no longer
    asks for approval."""
    rule = policy.rule(record.rule) if record.rule else None
    if rule is None or rule.require != "approval":
        return None
    return rule.approval


def is_reviewer(policy: Policy, ctx: AuthContext, record: GrantRecord) -> bool:
    """``ctx`` is named by a clause of the grant's rule now, and did not request it (may see it)."""
    approval = reviewers_of(policy, record)
    return approval is not None and record.principal_id != ctx.principal_id and approval.may_review(ctx)


def not_a_reviewer(conn: sa.Connection, policy: Policy, ctx: AuthContext, record: GrantRecord) -> str | None:
    """Why ``ctx`` may not review ``record`` under ``policy`` (None: they may). The owner of a
    requesting service account counts as the requester: nobody approves their own request."""
    approval = reviewers_of(policy, record)
    if approval is None:
        return f"rule {record.rule} no longer asks for approval in the policy in force"
    if record.principal_id == ctx.principal_id:
        return "nobody reviews their own request"
    requester = principals.by_id(conn, record.principal_id)
    if requester is not None and requester.owner is not None and requester.owner == ctx.name:
        return f"{record.subject} is a service account you own: nobody reviews their own request"
    if not approval.may_review(ctx):
        return f"you are not among its reviewers ({approval.describe()}, rule {record.rule})"
    return None


def no_longer_allowed(conn: sa.Connection, policy: Policy, record: GrantRecord) -> str | None:
    """Why ``policy`` would no longer let this request be approved as asked (its TTL over a
    lowered maximum, its reason no longer fitting, its owner gone), or None when it would.
    Checked at each approval: a reload between the request and the approval can change it."""
    who = principals.by_id(conn, record.principal_id)
    if who is None or who.disabled:
        return f"{record.subject} is no longer in the directory or is disabled"
    subject = Subject(who.name, who.kind, who.groups)
    ttl = timedelta(seconds=record.ttl_seconds or 0)
    # The requester's second factor was judged when they asked (a rule's ``mfa:`` is about the
    # request); what counts now is the rest of the rule, and the reviewer's own (``approve``).
    decision = evaluate(
        policy, subject, record.service, record.scope, ttl, record.reason, second_factor=timedelta(0)
    )
    if not decision.allowed:
        return decision.reason
    if decision.requirement != "approval" or decision.rule != record.rule:
        return f"the policy in force decides it by rule {decision.rule} now; ask again"
    return None


def approvers(conn: sa.Connection, votes: Sequence[Vote]) -> list[Subject]:
    """Who approved, in order, as they are in the directory today (disabled ones left out)."""
    found = []
    for vote in votes:
        if vote.decision != APPROVE:
            continue
        who = principals.by_id(conn, vote.reviewer_id)
        if who is not None and not who.disabled:
            found.append(Subject(who.name, who.kind, who.groups))
    return found


def current_tally(conn: sa.Connection, approval: ApprovalRule, votes: Sequence[Vote]) -> Tally:
    """``votes`` counted against ``approval`` (each approver once, in one clause)."""
    return tally(approval, approvers(conn, votes))


def describe_missing(approval: ApprovalRule, counted: Tally) -> str:
    """``1 more of group:leads and 1 more of group:security`` ("" when met)."""
    parts = [
        f"{missing} more of {clause.describe().partition(' of ')[2]}"
        for clause, missing in zip(approval.reviewers, counted.missing, strict=True)
        if missing
    ]
    return " and ".join(parts)


def review_of(
    conn: sa.Connection,
    policy: Policy,
    ctx: AuthContext,
    record: GrantRecord,
    votes: Sequence[Vote],
    state: str,
    now: datetime,
) -> Review:
    """The ``review`` of a grant that needs approval, as ``ctx`` sees it at ``now`` (``state``:
    its effective state)."""
    approval = reviewers_of(policy, record)
    clauses: list[ReviewClause] = []
    missing = ""
    if approval is not None:
        counted = current_tally(conn, approval, votes)
        missing = describe_missing(approval, counted)
        for clause, names, short in zip(approval.reviewers, counted.counted, counted.missing, strict=True):
            reviewers = [f"group:{g}" for g in sorted(clause.groups)] + [
                f"user:{u}" for u in sorted(clause.users)
            ]
            clauses.append(
                ReviewClause(count=clause.count, reviewers=reviewers, approved_by=list(names), missing=short)
            )
    pending = state == "pending"
    decided = record.approved_at or record.ended_at or record.expires_at
    deadline = record.expires_at if pending else decided
    can = (
        pending
        and all(vote.reviewer_id != ctx.principal_id for vote in votes)
        and not_a_reviewer(conn, policy, ctx, record) is None
    )
    return Review(
        clauses=clauses,
        approvals=[
            Approval(reviewer=v.reviewer, decision=v.decision, comment=v.comment, at=v.at) for v in votes
        ],
        review_expires_at=deadline,
        seconds_left=max(0, int((record.expires_at - now).total_seconds())) if pending else 0,
        missing=missing if pending else "",
        can_review=can,
    )
