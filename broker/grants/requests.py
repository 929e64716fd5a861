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
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.auth import tokens
from access.broker.auth.principal import AuthContext
from access.broker.auth.tokencache import AccessClaims
from access.broker.errors import BrokerError, GrantDenied, InvalidRequest, MfaRequired, NotFound, Unavailable
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
from access.shared.durations import DurationError, format_duration, parse_duration
from access.shared.models import MAX_REASON_LENGTH, Grant, GrantRequest
from access.shared.names import NAME_RULE, is_dns_label, is_scope

__all__ = ["MFA_HINT", "make_identity", "request_grant", "request_grant_for"]

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

    def caller(conn: sa.Connection) -> AuthContext:
        ctx = tokens.session_context(broker, claims, conn)
        if seen is not None:
            seen(ctx)
        return ctx

    return _request(broker, caller, request)


def _request(broker: Broker, caller: Callable[[sa.Connection], AuthContext], request: GrantRequest) -> Grant:
    # One policy for the whole request: a reload swaps ``broker.policy`` from another thread.
    policy = broker.policy
    now = broker.clock.now()
    with lifecycle.transaction(broker) as tx:
        # Who asks, then what the policy says: a refusal of either raises before anything is written.
        ctx = caller(tx.conn)
        decision, ttl, reason = _decide(policy, ctx, request, now)
        denial = _denial(decision)
        # First, before any ledger append: a lock on the user or the service wins over the policy.
        lock = locks.covering(tx.conn, now, user=ctx.name, service=decision.service, grant_id=None)
        refusal = None if lock is None else locks.locked_error(lock)
        if refusal is not None:
            denial = refusal.message
        if denial is not None:
            event = GrantEvent.DENY
        else:
            event = GrantEvent.ISSUE if decision.issuable else GrantEvent.PARK
        record = _record(policy, ctx, decision, reason, now, ttl, event, by="lock" if lock else "policy")
        target = grant_target(record.service, record.id)
        details = {
            "grant_id": record.id,
            "scope": record.scope,
            "ttl": format_duration(ttl),
            "reason": reason,
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
        if event == GrantEvent.PARK:
            return to_model_reviewed(tx.conn, broker, ctx, record, now)
    if refusal is not None:
        raise refusal
    if denial is not None and decision.needs_mfa is not None:
        raise MfaRequired(denial, hint=MFA_HINT, window=decision.needs_mfa)
    if denial is not None:
        raise GrantDenied(denial, hint=_denial_hint(decision, ttl))
    if dynamic:
        make_identity(broker, record, now)
    return to_model(record, now)


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
