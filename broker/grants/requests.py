"""Requesting a grant: check the request, let the (pure) policy decide, record the outcome.

A lock in force on the user or the service (``access.broker.locks``) refuses the request
whatever the policy says. The request is audited (``grant.request``), then the decision is
applied as a lifecycle transition (``issue``, ``park`` or ``deny``, each with its audit entry),
all in one transaction. A denied request is stored as a grant in state ``denied``, so
``access grants --all`` shows it. A request under a ``require: approval`` rule is parked
``pending`` until its reviewers decide (``approvals``): its ``expires_at`` is the review
deadline, and the TTL asked for is kept in ``ttl_seconds`` to start counting at the approval.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.auth import tokens
from access.broker.auth.principal import AuthContext
from access.broker.auth.tokencache import AccessClaims
from access.broker.errors import (
    BrokerError,
    GrantDenied,
    InvalidRequest,
    Locked,
    MfaRequired,
    NotFound,
    Unavailable,
)
from access.broker.grants import lifecycle
from access.broker.grants.lifecycle import GrantEvent, grant_target
from access.broker.grants.queries import to_model, to_model_reviewed
from access.broker.identities import lifecycle as identities
from access.broker.locks import guard as locks
from access.broker.notifications.emit import notify
from access.broker.notifications.kinds import Notice
from access.broker.policy import Decision, Policy, UnknownScope, UnknownService, evaluate, second_factor_age
from access.broker.runtime import Broker
from access.broker.store.grants import GrantRecord
from access.broker.store.locks import LockRecord
from access.broker.store.pipeline import Pipeline
from access.shared.durations import DurationError, format_duration, parse_duration
from access.shared.models import MAX_REASON_LENGTH, Grant, GrantRequest
from access.shared.names import NAME_RULE, is_dns_label, is_scope

__all__ = [
    "MFA_HINT",
    "Asked",
    "Outcome",
    "ask",
    "ask_each",
    "caller_of",
    "make_identity",
    "record_asked",
    "request_grant",
    "request_grant_for",
    "settle",
]

# What to do when the policy asks for a more recent second factor (step-up).
MFA_HINT = "run `access login --mfa` to sign in again with your second factor, then ask again"


def request_grant(broker: Broker, ctx: AuthContext, request: GrantRequest) -> Grant:
    """Decide ``request`` by the policy and record it; return the active grant, or the pending
    one when the rule needs approval (its ``review`` says by whom).

    The request and the decision are audited (``grant.request`` then ``grant.issue``,
    ``grant.pending`` or ``grant.deny``); a denied request is stored as a grant in state
    ``denied``.

    Raises:
        InvalidRequest: bad service name, scope, TTL or reason (nothing is recorded).
        NotFound: the policy has no such service (nothing is recorded).
        GrantDenied: the policy said no (recorded as denied).
        MfaRequired: the policy would say yes to a sign-in with a more recent second factor
            (recorded as denied; ``access login --mfa`` and asking again would do).
        Locked: a lock is in force on the user or the service (recorded as denied, with its id).
        Unavailable: the database or the ledger could not be written; nothing changed.
    """
    return _request(broker, lambda _conn: ctx, request)


def request_grant_for(
    broker: Broker,
    claims: AccessClaims,
    request: GrantRequest,
    *,
    seen: Callable[[AuthContext], None] | None = None,
) -> Grant:
    """``request_grant`` for the bearer of a verified access token (``tokens.verify_access_token``):
    its session is checked (live, principal enabled: ``tokens.session_context``) inside the
    grant's own transaction, before anything else in it, instead of in one of its own (a
    checkout, a BEGIN and a COMMIT fewer; four round trips on PostgreSQL). ``seen`` is told the
    caller once the session checked (the request's log line names it).

    Raises:
        Unauthenticated: the session was revoked or has expired, or the principal is disabled
            (nothing is recorded).
        everything ``request_grant`` raises.
    """

    return _request(broker, caller_of(broker, claims, seen), request)


def caller_of(
    broker: Broker, claims: AccessClaims, seen: Callable[[AuthContext], None] | None = None
) -> Callable[[sa.Connection], AuthContext]:
    """The caller of ``request_grant_for``'s request, found in the transaction given: the bearer
    of ``claims`` with its session checked (``tokens.session_context``); ``seen`` is told it."""

    def caller(conn: sa.Connection) -> AuthContext:
        ctx = tokens.session_context(broker, claims, conn)
        if seen is not None:
            seen(ctx)
        return ctx

    return caller


def _request(broker: Broker, caller: Callable[[sa.Connection], AuthContext], request: GrantRequest) -> Grant:
    # One policy for the whole request: a reload swaps ``broker.policy`` from another thread.
    policy = broker.policy
    now = broker.clock.now()
    with lifecycle.transaction(broker) as tx:
        outcome = record_asked(tx, ask(tx, policy, caller, request, now))
    return settle(broker, outcome)


@dataclass(frozen=True)
class Asked:
    """A request decided and checked, nothing written yet (``ask``): who asks, what the policy
    said, and the lock in force on the user or the service if there is one."""

    policy: Policy
    ctx: AuthContext
    decision: Decision
    ttl: timedelta
    reason: str
    now: datetime
    lock: LockRecord | None


@dataclass(frozen=True)
class Outcome:
    """A request recorded in its transaction (``record_asked``), to be answered once that
    transaction has committed (``settle``)."""

    record: GrantRecord
    decision: Decision
    ttl: timedelta
    now: datetime
    denial: str | None
    refusal: Locked | None
    dynamic: bool  # its identity is made on the target after the commit (``make_identity``)
    pending: Grant | None  # a parked request: the pending grant with its review, as answered

    @property
    def blocking(self) -> bool:
        """``settle`` talks to the target (a dynamic identity): not on the event loop."""
        return self.dynamic


def ask(
    tx: lifecycle.GrantTx,
    policy: Policy,
    caller: Callable[[sa.Connection], AuthContext],
    request: GrantRequest,
    now: datetime,
) -> Asked:
    """Who asks, what the policy says, the lock in force: reads only, so a refusal here (an
    ``Unauthenticated``, ``InvalidRequest`` or ``NotFound``) raises before anything is written.

    Raises:
        Unauthenticated, InvalidRequest, NotFound: as ``request_grant`` (nothing is recorded).
        sqlalchemy.exc.SQLAlchemyError: the database failed; the transaction must fail.
    """
    ctx = caller(tx.conn)
    decision, ttl, reason = _decide(policy, ctx, request, now)
    # First, before any ledger append: a lock on the user or the service wins over the policy.
    lock = locks.covering(tx.conn, now, user=ctx.name, service=decision.service, grant_id=None)
    return Asked(policy, ctx, decision, ttl, reason, now, lock)


def ask_each(
    tx: lifecycle.GrantTx,
    policy: Policy,
    asks: Sequence[tuple[AccessClaims, GrantRequest, Callable[[AuthContext], None] | None]],
    now: datetime,
) -> list[Asked | Exception]:
    """``ask`` for several requests of bearers of verified tokens (claims, request, who to tell
    the caller), with their sessions read in one statement and the locks in force held and read
    in one each: for each, in order, what was asked or why it is refused (nothing written).
    When any is decided, the ledger's lock is taken and its head read in the same round trip as
    the locks' (``ledger.take_chain``, after them: the order every writer takes them in), for
    the recording that follows (``record_asked``).

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database failed; the transaction must fail.
    """
    contexts = tokens.contexts_of(tx.broker, [claims for claims, _request, _seen in asks], tx.conn)
    answers: list[Asked | Exception | None] = [None] * len(asks)
    decided: list[tuple[int, AuthContext, Decision, timedelta, str]] = []
    for i, (ctx, (_claims, request, seen)) in enumerate(zip(contexts, asks, strict=True)):
        if isinstance(ctx, Exception):
            answers[i] = ctx
            continue
        if seen is not None:
            seen(ctx)
        try:
            decision, ttl, reason = _decide(policy, ctx, request, now)
        except Exception as exc:  # refused (a bad service, scope, TTL or reason): this one's answer
            answers[i] = exc
            continue
        decided.append((i, ctx, decision, ttl, reason))
    # Before any ledger append: a lock on the user or the service wins over the policy. The
    # locks are held and read, then the ledger's lock taken and its head read for the recording
    # that follows, in one round trip (each statement still runs after the one before).
    with Pipeline(tx.conn) as pipeline:
        found = locks.covering_each(
            pipeline, now, [(ctx.name, decision.service) for _, ctx, decision, _, _ in decided]
        )
        chain = ledger.take_chain(pipeline) if decided else None
    if chain is not None:
        chain()
    for (i, ctx, decision, ttl, reason), lock in zip(decided, found(), strict=True):
        answers[i] = Asked(policy, ctx, decision, ttl, reason, now, lock)
    return [answer for answer in answers if answer is not None]


def record_asked(tx: lifecycle.GrantTx, asked: Asked) -> Outcome:
    """Record ``asked`` in ``tx``: its ``grant.request`` entry, then the decision as a lifecycle
    transition (issue, park or deny) with its entry, notices and, for a dynamic service, the
    identity's intent.

    Raises:
        LedgerUnsafe, ValueError, sqlalchemy.exc.SQLAlchemyError: the transaction must fail.
    """
    broker, policy, ctx, decision, now, lock = (
        tx.broker,
        asked.policy,
        asked.ctx,
        asked.decision,
        asked.now,
        asked.lock,
    )
    denial = _denial(decision)
    refusal = None if lock is None else locks.locked_error(lock)
    if refusal is not None:
        denial = refusal.message
    if denial is not None:
        event = GrantEvent.DENY
    else:
        event = GrantEvent.ISSUE if decision.issuable else GrantEvent.PARK
    record = _record(
        policy, ctx, decision, asked.reason, now, asked.ttl, event, by="lock" if lock else "policy"
    )
    target = grant_target(record.service, record.id)
    details = {
        "grant_id": record.id,
        "scope": record.scope,
        "ttl": format_duration(asked.ttl),
        "reason": asked.reason,
    }
    ledger.append(
        tx.conn, broker.clock, actor=ctx.name, action=Action.GRANT_REQUEST, target=target, details=details
    )
    details = _decision_details(record, decision, denial, policy.version)
    if lock is not None:
        details["lock_id"] = lock.id
    notice = None
    if event == GrantEvent.PARK:
        assert decision.approval is not None
        details["reviewers"] = decision.approval.describe()
        details["review_expires_at"] = ledger.format_time(record.expires_at)
        notice = {"reviewers": details["reviewers"], "review_expires_at": details["review_expires_at"]}
    lifecycle.apply(tx, record, event, actor=ctx.name, now=now, details=details, notice=notice)
    if event == GrantEvent.ISSUE and record.break_glass:
        _flag_break_glass(tx, record, decision, actor=ctx.name)
    dynamic = event == GrantEvent.ISSUE and policy.services[record.service].dynamic
    if dynamic:
        identities.intend(tx.conn, record, now)
    pending = to_model_reviewed(tx.conn, broker, ctx, record, now) if event == GrantEvent.PARK else None
    return Outcome(record, decision, asked.ttl, now, denial, refusal, dynamic, pending)


def settle(broker: Broker, outcome: Outcome) -> Grant:
    """The answer to a request recorded by ``record_asked``, once its transaction has committed:
    the grant, or the refusal raised. A dynamic grant's identity is made here (``make_identity``).

    Raises:
        GrantDenied, MfaRequired, Locked, Unavailable: as ``request_grant``.
    """
    if outcome.pending is not None:
        return outcome.pending
    if outcome.refusal is not None:
        raise outcome.refusal
    denial, decision = outcome.denial, outcome.decision
    if denial is not None and decision.needs_mfa is not None:
        raise MfaRequired(denial, hint=MFA_HINT, window=decision.needs_mfa)
    if denial is not None:
        raise GrantDenied(denial, hint=_denial_hint(decision, outcome.ttl))
    if outcome.dynamic:
        make_identity(broker, outcome.record, outcome.now)
    return to_model(outcome.record, outcome.now)


def _flag_break_glass(tx: lifecycle.GrantTx, record: GrantRecord, decision: Decision, *, actor: str) -> None:
    """A break-glass grant, flagged where it will be seen: its own ledger entry beside
    ``grant.issue`` (``access grants --break-glass`` and ``access audit --action grant.break_glass``
    list them for review) and the ``grant.break_glass`` notice, in the issuing transaction."""
    details = {
        "grant_id": record.id,
        "subject": record.subject,
        "scope": record.scope,
        "rule": decision.rule,
        "reason": record.reason,
        "expires_at": ledger.format_time(record.expires_at),
    }
    target = grant_target(record.service, record.id)
    ledger.append(
        tx.conn, tx.broker.clock, actor=actor, action=Action.GRANT_BREAK_GLASS, target=target, details=details
    )
    notify(tx.conn, tx.broker, Notice.BREAK_GLASS, actor=actor, grant=record, details={"rule": decision.rule})


def make_identity(broker: Broker, record: GrantRecord, attempt: datetime) -> None:
    """The grant's identity on the target, before the grant is returned (the attempt ``intend``
    began at ``attempt``); if the target refuses or does not answer, the grant is ended at once
    (its end cleans up) and the request fails (503). For a grant issued at once, and for one
    whose approvals just completed (``approvals``).

    Raises:
        Unavailable: the target did not make the identity; the grant was ended.
    """
    try:
        identities.make(broker, record, attempt)
    except BrokerError as exc:
        with lifecycle.transaction(broker) as tx:
            lifecycle.apply(
                tx,
                record,
                GrantEvent.REVOKE,
                actor="broker",
                now=broker.clock.now(),
                reason="identity_failed",
            )
        raise Unavailable(
            f"{record.service} could not make an identity for the grant: {exc.message}",
            hint=exc.hint or "try again later; the grant was not issued",
        ) from exc


def _denial(decision: Decision) -> str | None:
    """Why the decision refuses the request, or None when it issues or parks a grant."""
    return None if decision.allowed else decision.reason


def _decision_details(
    record: GrantRecord, decision: Decision, denial: str | None, policy_version: int | None
) -> dict[str, Any]:
    """The audit details of ``grant.issue`` (with the expiry) or ``grant.deny`` (with why), and
    the stored policy version that decided (None: a policy not stored, in tests)."""
    details: dict[str, Any] = {
        "grant_id": record.id,
        "rule": decision.rule,
        "requirement": decision.requirement,
        "policy_version": policy_version,
    }
    if decision.break_glass:
        details["break_glass"] = True
    if decision.mfa is not None:
        details["mfa"] = format_duration(decision.mfa)  # the rule's window for a second factor
    if denial is None:
        key = "expires_at" if record.state == "active" else "review_expires_at"
        details[key] = ledger.format_time(record.expires_at)
    else:
        details["why"] = denial
    return details


def _denial_hint(decision: Decision, ttl: timedelta) -> str:
    if decision.max_ttl is not None and ttl > decision.max_ttl:
        return f"ask for --ttl {format_duration(decision.max_ttl)} or less"
    if decision.break_glass and decision.rule is None:
        return "break-glass is only what a rule marked break_glass: true gives; ask without --break-glass"
    return "see `access services` for what you may request"


def _record(
    policy: Policy,
    ctx: AuthContext,
    decision: Decision,
    reason: str,
    now: datetime,
    ttl: timedelta,
    event: GrantEvent,
    *,
    by: str,
) -> GrantRecord:
    """The row the decision stores, in the state its transition leads to: a pending one expires
    (unreviewed) at its review deadline until approved; a denial is ended ``by`` the policy or a
    lock."""
    svc = policy.services[decision.service]
    denied = event == GrantEvent.DENY
    if denied:
        expires_at = now
    elif event == GrantEvent.PARK:
        assert decision.approval is not None
        expires_at = now + decision.approval.wait
    else:
        expires_at = now + ttl
    return GrantRecord(
        id="g-" + secrets.token_hex(8),
        principal_id=ctx.principal_id,
        subject=ctx.name,
        service=svc.name,
        kind=svc.kind,
        scope=decision.scope,
        reason=reason,
        state=lifecycle.next_state(None, event).to_state,
        rule=decision.rule,
        requirement=decision.requirement,
        created_at=now,
        expires_at=expires_at,
        ended_at=now if denied else None,
        ended_reason="denied" if denied else None,
        ended_by=by if denied else None,
        ttl_seconds=int(ttl.total_seconds()),
        break_glass=decision.break_glass,
    )


def _check_reason(reason: str) -> str:
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidRequest(f"reason is over {MAX_REASON_LENGTH} characters")
    if any(not ch.isprintable() for ch in reason):
        raise InvalidRequest("reason must be one line of printable text")
    return reason.strip()


def _parse_ttl(
    text: str, policy: Policy, ctx: AuthContext, service: str, scope: str, reason: str, break_glass: bool
) -> timedelta:
    try:
        ttl: timedelta = parse_duration(text)
    except DurationError as exc:
        probe = evaluate(policy, ctx, service, scope, timedelta(seconds=1), reason, break_glass=break_glass)
        limit = ""
        if probe.allowed and probe.max_ttl is not None:
            limit = f"; the maximum for {scope} on {service} is {format_duration(probe.max_ttl)}"
        raise InvalidRequest(f"{exc}{limit}", hint="write the ttl like 45s, 30m or 1h30m") from exc
    return ttl


def _decide(
    policy: Policy, ctx: AuthContext, request: GrantRequest, now: datetime
) -> tuple[Decision, timedelta, str]:
    service, scope = request.service, request.scope
    if not is_dns_label(service):
        raise InvalidRequest(f"bad service name {service[:63]!r}: {NAME_RULE}", hint="see `access services`")
    if not is_scope(scope):
        raise InvalidRequest(f"bad scope {scope[:32]!r}", hint="see `access services` for the scopes")
    reason = _check_reason(request.reason)
    try:
        policy.lookup(service, scope)
    except UnknownService as exc:
        raise NotFound(str(exc), hint="see `access services` for what you may request") from exc
    except UnknownScope as exc:
        raise InvalidRequest(str(exc), hint="see `access services`") from exc
    ttl = _parse_ttl(request.ttl, policy, ctx, service, scope, reason, request.break_glass)
    second_factor = second_factor_age(ctx.mfa_at, now)
    decision = evaluate(
        policy, ctx, service, scope, ttl, reason, break_glass=request.break_glass, second_factor=second_factor
    )
    return decision, ttl, reason
