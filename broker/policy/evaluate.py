"""Deciding a request against a policy. Pure: no I/O, no clock, so it is tested as a table.

Deny by default: a request is allowed only when an allow rule (``require: auto`` or
``approval``) matches its subject, service (by name or by labels) and scope, no ``require:
deny`` rule matches (by name or by labels: an explicit deny wins), and
the TTL is within the smaller of the service's and the rule's ``max_ttl``, and the subject's
sign-in presented a second factor recently enough for a rule with ``mfa:``. ``approval``
decisions are allowed but not ``issuable``: the grants service refuses them until reviewers
exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from access.broker.policy.model import (
    ApprovalRule,
    Policy,
    ReasonRule,
    Requirement,
    Rule,
    ServiceConfig,
    SubjectLike,
)
from access.shared.durations import format_duration

__all__ = [
    "Decision",
    "ServiceAccess",
    "allowed_services",
    "can_read_audit",
    "evaluate",
    "mfa_met",
    "second_factor_age",
]


@dataclass(frozen=True)
class Decision:
    """The outcome of one evaluation: a value, so later approvals can build on it.

    ``allowed`` says the policy permits the request (perhaps after approval: see
    ``requirement``); ``issuable`` says a grant may be issued right now.
    """

    allowed: bool
    service: str
    scope: str
    max_ttl: timedelta | None
    requirement: Requirement
    rule: str | None
    reason: str
    # The deciding rule's reviewers (``require: approval``), and whether it is a break-glass rule.
    approval: ApprovalRule | None = None
    break_glass: bool = False
    # The deciding rule's ``mfa`` window (None: it asks for no second factor), and whether the
    # request was denied only for want of one that recent (``access login --mfa`` would do).
    mfa: timedelta | None = None
    mfa_missing: bool = False

    @property
    def needs_mfa(self) -> timedelta | None:
        """The window of the second factor that would have let it through, when that is all
        it lacked; None otherwise."""
        return self.mfa if self.mfa_missing else None

    @property
    def issuable(self) -> bool:
        return self.allowed and self.requirement == "auto"


class ServiceAccess(NamedTuple):
    """One scope of one service that a subject may request (``GET /v1/services``)."""

    service: ServiceConfig
    scope: str
    max_ttl: timedelta
    requirement: Requirement
    approval: ApprovalRule | None = None  # the reviewers, for ``require: approval``
    mfa: timedelta | None = None  # the rule's second-factor window


def evaluate(
    policy: Policy,
    subject: SubjectLike,
    service: str,
    scope: str,
    ttl: timedelta,
    reason: str | None = None,
    *,
    break_glass: bool = False,
    second_factor: timedelta | None = None,
) -> Decision:
    """Decide whether ``subject`` may get ``scope`` on ``service`` for ``ttl`` with ``reason``.
    No I/O. ``second_factor``: how long ago the subject's sign-in presented a second factor
    (None: it did not, which no rule with ``mfa:`` accepts).

    A break-glass request (``break_glass``) is decided by the ``break_glass: true`` rules only,
    and an ordinary request by the others only: break-glass is asked for, never fallen into.
    ``require: deny`` rules apply to both.

    A matching ``require: deny`` rule wins over any allow rule. An allow rule counts only if the
    TTL is within its maximum and the reason is what it asks for (``Rule.reason``: none given
    does not do for a rule that asks for one) and its ``mfa`` window is met. Among those,
    ``auto`` beats ``approval``, then the longer effective maximum wins, then the earlier rule.

    Raises:
        UnknownService: the policy has no such service.
        UnknownScope: the service does not offer ``scope``.
    """
    svc = policy.lookup(service, scope)
    what = f"{scope} on {service}"
    matching = [rule for rule in policy.rules if rule.matches(subject, svc, scope)]
    for rule in matching:
        if rule.require == "deny":
            return Decision(
                False, service, scope, None, "deny", rule.name, f"{what} is denied by rule {rule.name}"
            )
    matching = [rule for rule in matching if rule.break_glass == break_glass]
    if not matching:
        kind = "break-glass rule" if break_glass else "policy rule"
        reason = f"no {kind} gives {subject.name} {what}"
        return Decision(False, service, scope, None, "deny", None, reason, break_glass=break_glass)
    fitting = [rule for rule in matching if ttl <= _effective_max(svc, rule)]
    if not fitting:
        best = _best(svc, matching)
        limit = _effective_max(svc, best)
        reason = f"ttl {format_duration(ttl)} is over the maximum {format_duration(limit)} for {what}"
        return Decision(False, service, scope, limit, best.require, best.name, reason)
    reasoned = [rule for rule in fitting if _reason_rule(rule).refuses(reason) is None]
    if not reasoned:
        best = _best(svc, fitting)
        wanted = _reason_rule(best).refuses(reason)
        given = f'the reason "{reason}"' if reason else "no reason"
        why = f"{what} needs {wanted} (rule {best.name}); {given} was given"
        return Decision(False, service, scope, _effective_max(svc, best), best.require, best.name, why)
    strong = [rule for rule in reasoned if mfa_met(rule.mfa, second_factor)]
    if not strong:
        best = _best(svc, reasoned)
        assert best.mfa is not None  # only a rule with a window can fail this
        had = "had none" if second_factor is None else f"was {format_duration(second_factor)} ago"
        why = (
            f"{what} needs a sign-in with a second factor within {format_duration(best.mfa)} "
            f"(rule {best.name}); yours {had}"
        )
        limit = _effective_max(svc, best)
        return Decision(
            False, service, scope, limit, best.require, best.name, why, mfa=best.mfa, mfa_missing=True
        )
    best = _best(svc, strong)
    if best.require == "approval":
        assert best.approval is not None
        reviewers = best.approval.describe() + best.approval.describe_mfa()
        reason = f"{what} needs approval by {reviewers} (rule {best.name})"
    elif best.break_glass:
        reason = f"{what} allowed as break-glass by rule {best.name}"
    else:
        reason = f"{what} allowed by rule {best.name}"
    limit = _effective_max(svc, best)
    return Decision(
        True,
        service,
        scope,
        limit,
        best.require,
        best.name,
        reason,
        best.approval,
        best.break_glass,
        best.mfa,
    )


def allowed_services(policy: Policy, subject: SubjectLike) -> list[ServiceAccess]:
    """Every (service, scope) that ``subject`` may request, with its maximum TTL. No I/O."""
    result: list[ServiceAccess] = []
    for svc in sorted(policy.services.values(), key=lambda s: s.name):
        for scope in svc.scopes:
            matching = [rule for rule in policy.rules if rule.matches(subject, svc, scope)]
            if any(rule.require == "deny" for rule in matching):
                continue
            # Break-glass rules are not what a subject "may request" day to day.
            matching = [rule for rule in matching if not rule.break_glass]
            if not matching:
                continue
            best = _best(svc, matching)
            limit = _effective_max(svc, best)
            result.append(ServiceAccess(svc, scope, limit, best.require, best.approval, best.mfa))
    return result


def mfa_met(window: timedelta | None, second_factor: timedelta | None) -> bool:
    """A second factor presented ``second_factor`` ago meets a rule's ``mfa`` window (None: the
    rule asks for none). Fails closed: none presented meets no window. A slightly negative age
    (another replica's clock a little ahead wrote ``mfa_at``) is recent, not refused: only the
    broker ever writes that time."""
    if window is None:
        return True
    return second_factor is not None and second_factor <= window


def second_factor_age(mfa_at: datetime | None, now: datetime) -> timedelta | None:
    """How long before ``now`` a sign-in's second factor was presented (``AuthContext.mfa_at``),
    for ``evaluate``; None when it presented none."""
    return None if mfa_at is None else now - mfa_at


def can_read_audit(policy: Policy, who: SubjectLike) -> bool:
    """True when the policy's ``audit.readers`` include ``who``. Fails closed: no readers, no one."""
    return policy.can_read_audit(who)


_ANY_REASON = ReasonRule(required=False)
_SOME_REASON = ReasonRule(required=True)


def _reason_rule(rule: Rule) -> ReasonRule:
    """What ``rule`` asks of a reason: its own ``reason:``; a break-glass rule always asks for one."""
    if rule.reason is not None:
        return rule.reason
    return _SOME_REASON if rule.break_glass else _ANY_REASON


def _effective_max(svc: ServiceConfig, rule: Rule) -> timedelta:
    return svc.max_ttl if rule.max_ttl is None else min(svc.max_ttl, rule.max_ttl)


def _best(svc: ServiceConfig, rules: list[Rule]) -> Rule:
    # Stable sort: on a tie the rule written first wins.
    return sorted(rules, key=lambda r: (r.require != "auto", -_effective_max(svc, r).total_seconds()))[0]
