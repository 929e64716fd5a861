"""Reviewing requests that need approval: what waits for me, approve, deny.

A vote is cast under the grant's row lock (``store.grants.lock``: PostgreSQL ``FOR UPDATE``;
SQLite's one write lock), and what it changes is conditional on the state read, so of two votes
racing, approve against approve or approve against deny, exactly one decides and the other is
answered 409 with what happened ("already approved by dana at …"). Votes are kept in the
``approvals`` table (one per reviewer and grant, UNIQUE) and audited:

- ``grant.approve`` (reviewer, comment, ``missing``: what the tally still needs), with a
  ``grant.approved`` notice; the vote that completes the tally moves the grant to active in the
  same transaction (``lifecycle``'s ``approve``: ``grant.issue``), its clock starting then, and
  for a dynamic service its per-grant identity is made after the commit, as for a grant issued at
  once (``requests.make_identity``);
- ``grant.reject`` (reviewer, reason): one reviewer's no denies the request.

Who may review: ``reviews.not_a_reviewer``, by the policy in force **now**. Nobody reviews their
own request, nor one of a service account they own; service accounts never review.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.auth.principal import AuthContext
from access.broker.errors import Conflict, Forbidden, InvalidRequest, MfaRequired
from access.broker.grants import lifecycle, reviews
from access.broker.grants.lifecycle import GrantEvent, GrantTx, grant_target
from access.broker.grants.queries import effective_state, fetch, may_view, not_found, to_model_reviewed
from access.broker.grants.requests import make_identity
from access.broker.identities import lifecycle as identities
from access.broker.locks import guard as locks
from access.broker.notifications.emit import notify
from access.broker.notifications.kinds import Notice
from access.broker.policy import ApprovalRule, mfa_met, second_factor_age
from access.broker.runtime import Broker
from access.broker.store import approvals as votes
from access.broker.store import grants as store
from access.broker.store.approvals import APPROVE, DENY, Vote
from access.broker.store.grants import GrantRecord
from access.shared.durations import format_duration
from access.shared.models import MAX_REASON_LENGTH, Grant, GrantState

__all__ = ["approve", "deny", "pending_for"]

_PENDING_LIMIT = 500


def pending_for(broker: Broker, ctx: AuthContext) -> list[Grant]:
    """What waits for ``ctx``'s review, oldest first: pending requests of others that ``ctx`` may
    review under the policy in force now and has not voted on yet, each with its ``review``.

    Raises:
        Unavailable: the database could not be reached.
    """
    policy = broker.policy
    now = broker.clock.now()
    if ctx.kind != "user":
        return []  # service accounts never review
    with broker.transaction() as conn:
        waiting = [r for r in store.pending(conn, now, _PENDING_LIMIT) if reviews.is_reviewer(policy, ctx, r)]
        cast = votes.for_grants(conn, [r.id for r in waiting])
        return [
            to_model_reviewed(conn, broker, ctx, record, now)
            for record in waiting
            if all(vote.reviewer_id != ctx.principal_id for vote in cast.get(record.id, ()))
            and reviews.not_a_reviewer(conn, policy, ctx, record) is None
        ]


def approve(broker: Broker, ctx: AuthContext, grant_id: str, comment: str = "") -> Grant:
    """``ctx`` approves the pending request ``grant_id``; return it as it is now (active when this
    vote completed its tally).

    Raises:
        InvalidRequest: the comment is not one line of printable text, or too long.
        NotFound: no such grant, or not the caller's to see.
        Locked: a lock is in force on the requester, the service or the request.
        Forbidden: the caller may not review it (their own, their service account's, not a
            reviewer by the policy in force, the rule gone), or the policy in force would no
            longer let it be approved as asked (its TTL over a lowered maximum, say).
        MfaRequired: the rule asks reviewers for a sign-in with a recent second factor, and
            the caller's had none or an older one (nothing is recorded).
        Conflict: it is no longer pending (approved, denied, cancelled, expired unreviewed: the
            message says by whom and when), or the caller already voted on it.
        Unavailable: the database could not be reached (nothing changed), or the target could
            not make the per-grant identity (the grant was ended).
    """
    text = _one_line(comment, "comment")
    with lifecycle.transaction(broker) as tx:
        record, cast, now = _locked_for_vote(tx, ctx, grant_id)
        # A lock on the requester, the service or the request refuses it, before any ledger entry.
        locks.check(tx.conn, now, user=record.subject, service=record.service, grant_id=record.id)
        why = reviews.no_longer_allowed(tx.conn, broker.policy, record)
        if why is not None:
            raise Forbidden(
                f"grant {record.id} cannot be approved as asked: {why}",
                hint="deny it with a reason, or let the requester ask again",
            )
        approval = reviews.reviewers_of(broker.policy, record)
        assert approval is not None  # _locked_for_vote checked the reviewer under this policy
        _check_second_factor(approval, ctx, record, now)
        vote = Vote(record.id, ctx.principal_id, ctx.name, APPROVE, text, now)
        cast = [*cast, _insert(tx.conn, vote)]
        counted = reviews.current_tally(tx.conn, approval, cast)
        missing = reviews.describe_missing(approval, counted)
        details = {"grant_id": record.id, "reviewer": ctx.name, "comment": text, "missing": missing}
        ledger.append(
            tx.conn,
            broker.clock,
            actor=ctx.name,
            action=Action.GRANT_APPROVE,
            target=grant_target(record.service, record.id),
            details=details,
        )
        told = {"reviewer": ctx.name, "comment": text, "missing": missing}
        notify(tx.conn, broker, Notice.GRANT_APPROVED, actor=ctx.name, grant=record, details=told)
        activated = None
        if counted.met:
            activated = _activate(tx, record, cast, actor=ctx.name, now=now)
        result = to_model_reviewed(tx.conn, broker, ctx, activated or record, now)
    if activated is not None and broker.policy.services[activated.service].dynamic:
        make_identity(broker, activated, now)
    return result


def deny(broker: Broker, ctx: AuthContext, grant_id: str, reason: str) -> Grant:
    """``ctx`` denies the pending request ``grant_id`` (``grant.reject``); return it, denied.

    Raises:
        InvalidRequest: no reason, or not one line of printable text, or too long.
        NotFound, Forbidden, Conflict, Unavailable: as ``approve``.
    """
    text = _one_line(reason, "reason")
    if not text:
        raise InvalidRequest("say why you deny it", hint="access deny GRANT_ID --reason TEXT")
    with lifecycle.transaction(broker) as tx:
        record, _, now = _locked_for_vote(tx, ctx, grant_id)
        _insert(tx.conn, Vote(record.id, ctx.principal_id, ctx.name, DENY, text, now))
        details = {"grant_id": record.id, "reviewer": ctx.name, "reason": text}
        notice = {"why": f"denied by {ctx.name}: {text}", "reviewer": ctx.name, "reason": text}
        denied = lifecycle.apply(
            tx,
            record,
            GrantEvent.REJECT,
            actor=ctx.name,
            now=now,
            reason="denied",
            details=details,
            notice=notice,
        )
        if denied is None:  # cannot happen under the row lock; fail closed if it does
            raise Conflict(f"grant {record.id} changed while it was being reviewed", hint="look again")
        return to_model_reviewed(tx.conn, broker, ctx, denied, now)


def _check_second_factor(
    approval: ApprovalRule, ctx: AuthContext, record: GrantRecord, now: datetime
) -> None:
    """An approval whose rule asks reviewers for a recent second factor (``approval.mfa``) needs
    one in the reviewer's sign-in; denying never does.

    Raises:
        MfaRequired: the reviewer's sign-in had no second factor, or too old a one.
    """
    if mfa_met(approval.mfa, second_factor_age(ctx.mfa_at, now)):
        return
    assert approval.mfa is not None
    had = "had none" if ctx.mfa_at is None else f"was {format_duration(now - ctx.mfa_at)} ago"
    raise MfaRequired(
        f"approving grant {record.id} needs a sign-in with a second factor within "
        f"{format_duration(approval.mfa)} (rule {record.rule}); yours {had}",
        hint="run `access login --mfa` (or sign in to the inbox again with your one-time code), then approve",
        window=approval.mfa,
    )


def _locked_for_vote(
    tx: GrantTx, ctx: AuthContext, grant_id: str
) -> tuple[GrantRecord, list[Vote], datetime]:
    """The grant, its row locked for this transaction, checked to be pending and reviewable by
    ``ctx`` now; its votes so far; and the time of this vote."""
    broker = tx.broker
    if not grant_id.startswith("g-") or len(grant_id) > 40:
        raise not_found(grant_id)
    store.lock(tx.conn, grant_id)
    record = fetch(tx.conn, grant_id)
    if record is None or not may_view(ctx, record, broker):
        raise not_found(grant_id)
    now = broker.clock.now()
    cast = votes.for_grant(tx.conn, record.id)
    state = effective_state(record.state, record.expires_at, now)
    if state != GrantState.PENDING:
        raise Conflict(_what_happened(record, cast, state), hint="see `access grants --pending`")
    why = reviews.not_a_reviewer(tx.conn, broker.policy, ctx, record)
    if why is not None:
        raise Forbidden(f"you may not review grant {record.id}: {why}", hint="see `access grants --pending`")
    mine = next((vote for vote in cast if vote.reviewer_id == ctx.principal_id), None)
    if mine is not None:
        raise Conflict(
            f"you already {_past(mine.decision)} grant {record.id} at {ledger.format_time(mine.at)}",
            hint="each reviewer has one say",
        )
    return record, cast, now


def _activate(
    tx: GrantTx, record: GrantRecord, cast: list[Vote], *, actor: str, now: datetime
) -> GrantRecord:
    """The vote that completes the tally: pending -> active from ``now`` (``grant.issue``)."""
    details = {
        "grant_id": record.id,
        "rule": record.rule,
        "requirement": record.requirement,
        "policy_version": tx.broker.policy.version,
        "approved_at": ledger.format_time(now),
        "approvers": [vote.reviewer for vote in cast if vote.decision == APPROVE],
    }
    activated = lifecycle.apply(tx, record, GrantEvent.APPROVE, actor=actor, now=now, details=details)
    if activated is None:  # cannot happen under the row lock; fail closed if it does
        raise Conflict(f"grant {record.id} changed while it was being reviewed", hint="look again")
    if tx.broker.policy.services[record.service].dynamic:
        identities.intend(tx.conn, activated, now)
    return activated


def _insert(conn: sa.Connection, vote: Vote) -> Vote:
    try:
        votes.insert(conn, vote)
    except sa.exc.IntegrityError as exc:
        # Only one reviewer's own second request can get here past the row lock.
        raise Conflict(
            f"you already voted on grant {vote.grant_id}", hint="each reviewer has one say"
        ) from exc
    return vote


def _what_happened(record: GrantRecord, cast: list[Vote], state: GrantState) -> str:
    """Why a grant that is no longer pending cannot be reviewed: who decided it, and when."""
    gid = record.id
    if state == GrantState.ACTIVE or (record.approved_at is not None and state != GrantState.DENIED):
        by = [vote.reviewer for vote in cast if vote.decision == APPROVE]
        when = ledger.format_time(record.approved_at) if record.approved_at else "?"
        return f"grant {gid} was already approved by {', '.join(by) or 'its reviewers'} at {when}"
    if state == GrantState.DENIED:
        no = next((vote for vote in cast if vote.decision == DENY), None)
        if no is not None:
            return f"grant {gid} was already denied by {no.reviewer} at {ledger.format_time(no.at)}"
        return f"grant {gid} was denied by the policy"
    if state == GrantState.EXPIRED:
        return (
            f"grant {gid} expired unreviewed at {ledger.format_time(record.expires_at)}: "
            "the requester must ask again"
        )
    ended = ledger.format_time(record.ended_at) if record.ended_at else "?"
    return f"grant {gid} was {record.ended_reason or state} by {record.ended_by or '?'} at {ended}"


def _past(decision: str) -> str:
    return "approved" if decision == APPROVE else "denied"


def _one_line(value: str, what: str) -> str:
    if len(value) > MAX_REASON_LENGTH:
        raise InvalidRequest(f"the {what} is over {MAX_REASON_LENGTH} characters")
    if any(not ch.isprintable() for ch in value):
        raise InvalidRequest(f"the {what} must be one line of printable text")
    return value.strip()
