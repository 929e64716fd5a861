"""More time for an active grant: ``access extend GRANT_ID --ttl 15m``.

The rule, as ``docs/cli.md`` states it for users:

* the new expiry is **now + ttl**, and must be later than the current one (an extension never
  shortens a grant: ``access revoke`` ends one early);
* only the grant's owner extends it, only while it is active (not pending, ended or expired);
* under the SAME rule and its maximum, in the policy in force now: the grant's rule must still
  exist and still allow the grant's subject, service, scope and reason (the pure ``evaluate``,
  run against that rule and the policy's deny rules), and the grant's whole lifetime, from its
  start to the new expiry, must be within that rule's effective maximum TTL. Past it the answer
  is a new grant (and, for a rule that needs approval, a new approval).

An extension is not a state change (the grant stays ``active``), so it is not in
``lifecycle.TRANSITIONS``; it uses that module's transaction, so its event is published only
after the commit. In one transaction: a conditional update (``WHERE state = 'active' AND
expires_at = <the expiry read>``), the ``grant.extend`` ledger entry with the old and new
expiry, the ``grant.extended`` notice, and an outbox row ``grant.extended`` that moves the
per-grant identity's own expiry on its target (``identities.lifecycle.follow_expiry``). Of two
concurrent extensions, or an extension and a revoke, the conditional update lets one win; the
loser changes nothing and gets a 409. After the commit ``GrantExtended`` moves this replica's
tunnel cut at once; other replicas move theirs on ``TunnelWatch``'s next poll.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.auth.principal import AuthContext
from access.broker.errors import Conflict, Expired, Forbidden, GrantDenied, InvalidRequest, MfaRequired
from access.broker.events import outbox
from access.broker.events.bus import GrantExtended
from access.broker.grants import lifecycle
from access.broker.grants.lifecycle import grant_target
from access.broker.grants.queries import effective_state, fetch, not_found, to_model, visible
from access.broker.notifications.emit import notify
from access.broker.notifications.kinds import Notice
from access.broker.policy import (
    Decision,
    Policy,
    UnknownScope,
    UnknownService,
    evaluate,
    second_factor_age,
)
from access.broker.runtime import Broker
from access.broker.store import grants as store
from access.broker.store.grants import GrantRecord
from access.shared.durations import DurationError, format_duration, parse_duration
from access.shared.models import ExtendRequest, Grant, GrantState

__all__ = ["extend_grant", "grant_start"]


def grant_start(record: GrantRecord) -> datetime:
    """When the grant's lifetime began: its approval for one that needed approval, else its issue.

    The maximum TTL bounds the time from here to the expiry, however many extensions there are.
    """
    return record.approved_at or record.created_at


def extend_grant(broker: Broker, ctx: AuthContext, grant_id: str, request: ExtendRequest) -> Grant:
    """Give the caller's active grant ``grant_id`` an expiry of now + ``request.ttl``, audited.

    Raises:
        InvalidRequest: a bad TTL, or one that would not make the grant last longer.
        NotFound: no such grant, or not the caller's to see.
        Forbidden: an audit reader's look at someone else's grant (only the owner extends).
        Conflict: the grant is pending or has ended, or another request extended or ended it
            while this one ran (nothing changed: read it again).
        Expired: the grant is past its expiry.
        GrantDenied: the policy in force no longer allows the grant under its rule, or the new
            expiry is past the rule's maximum (request a new grant).
        Unavailable: the database could not be reached; nothing changed.
    """
    ttl = _parse_ttl(request.ttl)
    policy = broker.policy  # one policy for the whole request: a reload swaps it from another thread
    with lifecycle.transaction(broker) as tx:
        record = _owned(tx.conn, broker, ctx, grant_id)
        now = broker.clock.now()
        _check_usable(record, now)
        new_expiry = now + ttl
        if new_expiry <= record.expires_at:
            left = format_duration(record.expires_at - now)
            raise InvalidRequest(
                f"grant {record.id} has {left} left already; --ttl {format_duration(ttl)} from now "
                "would not make it last longer (an extension never shortens a grant)",
                hint=f"ask for more than {left}, or end it early with `access revoke {record.id}`",
            )
        decision = _decide(policy, ctx, record, new_expiry, now)
        if not store.extend(tx.conn, record.id, old_expiry=record.expires_at, new_expiry=new_expiry, now=now):
            raise Conflict(
                f"grant {record.id} was extended or ended by another request meanwhile; nothing changed",
                hint=f"see `access grants`, then extend it again if it is still active: "
                f"`access extend {record.id} --ttl {format_duration(ttl)}`",
            )
        after = replace(record, expires_at=new_expiry)
        details = _details(record, new_expiry, ttl, decision, policy.version)
        ledger.append(
            tx.conn,
            broker.clock,
            actor=ctx.name,
            action=Action.GRANT_EXTEND,
            target=grant_target(record.service, record.id),
            details=details,
        )
        told = {"old_expires_at": details["old_expires_at"], "expires_at": details["expires_at"]}
        notify(tx.conn, broker, Notice.GRANT_EXTENDED, actor=ctx.name, grant=after, details=told)
        svc = policy.service(record.service)
        if svc is not None and svc.dynamic:
            outbox.enqueue(tx.conn, broker.clock, outbox.GRANT_EXTENDED, {"grant_id": record.id})
        tx.after_commit.append(GrantExtended(record.id, new_expiry))
    return to_model(after, now)


def _parse_ttl(text: str) -> timedelta:
    try:
        ttl: timedelta = parse_duration(text)
    except DurationError as exc:
        raise InvalidRequest(
            str(exc), hint="write the ttl like 45s, 15m or 1h30m (counted from now)"
        ) from exc
    return ttl


def _owned(conn: sa.Connection, broker: Broker, ctx: AuthContext, grant_id: str) -> GrantRecord:
    """The grant, if the caller owns it (an audit reader sees others' grants, but extends none)."""
    record = fetch(conn, grant_id)
    if record is None or not visible(ctx, record, broker):
        raise not_found(grant_id)
    if record.principal_id != ctx.principal_id:
        raise Forbidden(f"grant {grant_id} is {record.subject}'s: only its owner may extend it")
    return record


def _check_usable(record: GrantRecord, now: datetime) -> None:
    state = effective_state(record.state, record.expires_at, now)
    again = f"request a new grant: `access request {record.service} --scope {record.scope} --ttl ...`"
    if state == GrantState.EXPIRED:
        raise Expired(
            f"grant {record.id} expired at {ledger.format_time(record.expires_at)}: "
            "an ended grant cannot be extended",
            hint=again,
        )
    if state == GrantState.PENDING:
        raise Conflict(
            f"grant {record.id} is still pending: there is nothing to extend yet", hint="see `access grants`"
        )
    if state != GrantState.ACTIVE:
        raise Conflict(
            f"grant {record.id} has ended ({record.ended_reason or state}): "
            "an ended grant cannot be extended",
            hint=again,
        )


def _decide(
    policy: Policy, ctx: AuthContext, record: GrantRecord, new_expiry: datetime, now: datetime
) -> Decision:
    """The grant's own rule's decision, in the policy in force, for its whole new lifetime.

    Only that rule and the policy's deny rules are evaluated: an extension stays under the rule
    that allowed the grant (another rule would be a new grant, with its own terms).
    """
    what = f"{record.scope} on {record.service}"
    again = f"request a new grant: `access request {record.service} --scope {record.scope} --ttl ...`"
    rule = policy.rule(record.rule) if record.rule else None
    if rule is None or rule.require == "deny":
        raise GrantDenied(
            f"the rule that gave grant {record.id} ({record.rule or 'none'}) is no longer in the policy",
            hint=again,
        )
    only_its_rule = replace(policy, rules=tuple(r for r in policy.rules if r.require == "deny" or r is rule))
    lifetime = new_expiry - grant_start(record)
    try:
        decision = evaluate(
            only_its_rule,
            ctx,
            record.service,
            record.scope,
            lifetime,
            record.reason,
            break_glass=rule.break_glass,
            # A rule with ``mfa:`` asks for it again to extend: more time is a new ask.
            second_factor=second_factor_age(ctx.mfa_at, now),
        )
    except (UnknownService, UnknownScope) as exc:
        raise GrantDenied(
            f"{what} is no longer in the broker's policy", hint="see `access services`"
        ) from exc
    if decision.allowed:
        return decision
    if decision.needs_mfa is not None:
        raise MfaRequired(
            f"extending grant {record.id}: {decision.reason}",
            hint="run `access login --mfa` to sign in again with your second factor, then extend again",
            window=decision.needs_mfa,
        )
    if decision.max_ttl is not None and lifetime > decision.max_ttl:
        hint = again
        if decision.requirement == "approval":
            hint += "; it needs approval"
        raise GrantDenied(
            f"the maximum for {what} is {format_duration(decision.max_ttl)} (rule {rule.name}), and grant"
            f" {record.id} would last {format_duration(lifetime)} from its start",
            hint=hint,
        )
    raise GrantDenied(f"the policy no longer allows grant {record.id}: {decision.reason}", hint=again)


def _details(
    record: GrantRecord, new_expiry: datetime, ttl: timedelta, decision: Decision, version: int | None
) -> dict[str, Any]:
    return {
        "grant_id": record.id,
        "scope": record.scope,
        "old_expires_at": ledger.format_time(record.expires_at),
        "expires_at": ledger.format_time(new_expiry),
        "ttl": format_duration(ttl),
        "rule": decision.rule,
        "policy_version": version,
    }
