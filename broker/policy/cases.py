"""A policy's tests: expected decisions kept beside the policy, run by ``access-broker policy test``.

Format (``policy-tests.yaml``)::

    policy: policy.yaml              # optional: relative to this file (``--policy`` wins)
    cases:
      - {user: alice, groups: [sre], service: svc-payments, scope: read, expect: auto}
      - {user: bob, service: svc-payments, scope: read, expect: deny}
      - {service_account: deploy-bot, service: svc-payments, scope: write, ttl: 2h, expect: deny}
      - {user: alice, groups: [sre], service: svc-payments, scope: write, expect: approval,
         rule: sre-write,        # optional: the rule that must decide
         reviewers: "2 of group:leads and 1 of group:security"}   # optional: who must approve
      - {user: carol, groups: [sre], service: svc-payments, scope: write, break_glass: true,
         reason: INC-1, expect: auto}   # asked as ``access request --break-glass`` asks
      - {user: alice, groups: [sre], service: svc-ledger, scope: write, mfa: false, expect: deny}
      - {user: alice, groups: [sre], service: svc-ledger, scope: write, mfa: 20m, expect: auto}

``expect`` is what ``explain`` calls the outcome: ``auto`` (issued at once), ``approval`` (allowed
once approved) or ``deny``. Without ``ttl`` a case asks about the scope whatever the TTL; with
one, a TTL over the maximum is a ``deny``. A case naming a service or scope the policy does not
have fails whatever it expects: a typo in a test must not pass as a denial. ``reviewers`` is
compared clause by clause, whatever the order of the clauses and of the names in each.
``mfa`` is the asker's second factor: ``true`` (presented just now, the default, so a rule's
``mfa:`` window is met), ``false`` (the sign-in had none) or how long ago it was (``20m``).

Pure, like ``evaluate``: the file is read by ``load.py``'s functions, the decision is
``evaluate``'s, and nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from pydantic import Field as PydanticField

from access.broker.policy.evaluate import Decision, evaluate
from access.broker.policy.fields import OptionalDuration, PrincipalNames, Text
from access.broker.policy.model import Policy, Subject, UnknownScope, UnknownService
from access.broker.policy.review import Candidates, parse_terms, terms
from access.shared.durations import format_duration

__all__ = ["OUTCOMES", "Case", "CaseFile", "Explanation", "Mismatch", "explain", "outcome", "run_cases"]

Outcome = Literal["auto", "approval", "deny"]
OUTCOMES = ("auto", "approval", "deny")
# Asked "whatever the TTL", a case is decided at one second: every rule's maximum is longer.
_ANY_TTL = timedelta(seconds=1)
_MAX_CASES = 10_000


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Case(_Model):
    """One expected decision: who (a user or a service account, with groups) asks for what."""

    user: Text | None = None
    service_account: Text | None = None
    groups: PrincipalNames = frozenset()
    service: Text
    scope: Text
    ttl: OptionalDuration = None
    reason: Text | None = None
    break_glass: bool = False  # asks as ``access request --break-glass`` does
    mfa: bool | OptionalDuration = True  # the asker's second factor: now, none, or this long ago
    expect: Outcome
    rule: Text | None = None
    reviewers: Text | None = None

    @field_validator("reviewers")
    @classmethod
    def _reviewers_read(cls, text: str | None) -> str | None:
        if text is not None:
            parse_terms(text)
        return text

    @model_validator(mode="after")
    def _one_subject(self) -> Case:
        if (self.user is None) == (self.service_account is None):
            raise ValueError("name the user or the service_account who asks (one of them)")
        return self

    @property
    def second_factor(self) -> timedelta | None:
        """How long ago the asker presented a second factor, as ``evaluate`` takes it."""
        if self.mfa is True:
            return timedelta(0)
        return None if self.mfa is False else self.mfa

    @property
    def subject(self) -> Subject:
        if self.user is not None:
            return Subject(self.user, "user", tuple(sorted(self.groups)))
        assert self.service_account is not None  # checked by _one_subject
        return Subject(self.service_account, "service_account", tuple(sorted(self.groups)))


class CaseFile(_Model):
    policy: Text | None = None
    cases: Annotated[tuple[Case, ...], PydanticField(min_length=1, max_length=_MAX_CASES)]


@dataclass(frozen=True)
class Explanation:
    """What the policy decides for one question, and why (``access-broker policy explain``)."""

    outcome: Outcome
    decision: Decision
    # Who could approve now (from a directory), when the decision needs approval and one was read.
    candidates: Candidates | None = None

    def as_dict(self) -> dict[str, object]:
        d = self.decision
        approval: dict[str, object] | None = None
        if d.approval is not None:
            people = self.candidates.people if self.candidates is not None else None
            approval = {
                "reviewers": d.approval.describe(),
                "wait": format_duration(d.approval.wait),
                "clauses": [
                    {
                        "count": clause.count,
                        "groups": sorted(clause.groups),
                        "users": sorted(clause.users),
                        "candidates": None if people is None else list(people[i]),
                    }
                    for i, clause in enumerate(d.approval.reviewers)
                ],
                "approvable": None if self.candidates is None else self.candidates.enough,
            }
        return {
            "outcome": self.outcome,
            "allowed": d.allowed,
            "service": d.service,
            "scope": d.scope,
            "rule": d.rule,
            "requirement": d.requirement,
            "max_ttl": None if d.max_ttl is None else format_duration(d.max_ttl),
            "reason": d.reason,
            "break_glass": d.break_glass,
            "mfa": None if d.mfa is None else format_duration(d.mfa),
            "approval": approval,
        }


@dataclass(frozen=True)
class Mismatch:
    """A case whose decision is not the expected one: which case, its line, what happened."""

    index: int
    line: int | None
    message: str


def outcome(decision: Decision) -> Outcome:
    """``auto``, ``approval`` or ``deny``: what a request decided so would get."""
    if not decision.allowed:
        return "deny"
    return "auto" if decision.requirement == "auto" else "approval"


def explain(
    policy: Policy,
    subject: Subject,
    service: str,
    scope: str,
    ttl: timedelta | None = None,
    reason: str | None = None,
    *,
    break_glass: bool = False,
    second_factor: timedelta | None = timedelta(0),
) -> Explanation:
    """The decision for ``subject`` asking for ``scope`` on ``service`` (for ``ttl``, or whatever
    the TTL when None; with ``reason``; as a break-glass request when ``break_glass``; with a
    second factor presented ``second_factor`` ago, by default just now, None for none), with
    the rule that made it. No I/O.

    Raises:
        UnknownService: the policy has no such service.
        UnknownScope: the service does not offer ``scope``.
    """
    wanted = _ANY_TTL if ttl is None else ttl
    decision = evaluate(
        policy, subject, service, scope, wanted, reason, break_glass=break_glass, second_factor=second_factor
    )
    return Explanation(outcome(decision), decision)


def run_cases(policy: Policy, cases: CaseFile, lines: tuple[int | None, ...] = ()) -> list[Mismatch]:
    """Every case whose decision differs from what it expects (empty: all pass). No I/O.

    ``lines`` are the cases' lines in their file, to name them in the mismatches.
    """
    mismatches: list[Mismatch] = []
    for i, case in enumerate(cases.cases):
        who = case.user or case.service_account
        asked = f"{who} {case.scope} on {case.service}"
        line = lines[i] if i < len(lines) else None
        try:
            found = explain(
                policy,
                case.subject,
                case.service,
                case.scope,
                case.ttl,
                case.reason,
                break_glass=case.break_glass,
                second_factor=case.second_factor,
            )
        except (UnknownService, UnknownScope) as exc:
            mismatches.append(Mismatch(i, line, f"{asked}: expected {case.expect}, but {exc}"))
            continue
        decision = found.decision
        if found.outcome != case.expect:
            got = f"got {found.outcome} ({decision.reason})"
            mismatches.append(Mismatch(i, line, f"{asked}: expected {case.expect}, {got}"))
        elif case.rule is not None and decision.rule != case.rule:
            got = "no rule" if decision.rule is None else f"rule {decision.rule}"
            mismatches.append(Mismatch(i, line, f"{asked}: expected rule {case.rule}, decided by {got}"))
        elif case.reviewers is not None and (
            decision.approval is None or terms(decision.approval) != parse_terms(case.reviewers)
        ):
            got = f"none ({found.outcome})" if decision.approval is None else decision.approval.describe()
            message = f"{asked}: expected reviewers {case.reviewers}, got {got}"
            mismatches.append(Mismatch(i, line, message))
    return mismatches
