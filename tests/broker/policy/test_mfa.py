"""A rule's ``mfa:`` window and an approval's, as tables: what a second factor presented some
time ago (or never) gets; and the same in ``policy test`` cases."""

from __future__ import annotations

from datetime import timedelta

import pytest

from access.broker.policy import (
    PolicyError,
    Subject,
    evaluate,
    mfa_met,
    policy_from_data,
    run_cases,
)
from access.broker.policy.cases import CaseFile

M = timedelta(minutes=1)
ALICE = Subject("alice", "user", ("sre",))
POLICY_DATA = {
    "services": [
        {
            "name": "ledger",
            "kind": "postgres",
            "target": "db:5432",
            "scopes": ["read", "write"],
            "max_ttl": "1h",
        },
        {"name": "vault", "kind": "tcp", "target": "vault:8200", "scopes": ["admin"], "max_ttl": "1h"},
    ],
    "rules": [
        {"name": "read", "subjects": {"groups": ["sre"]}, "services": ["ledger"], "scopes": ["read"]},
        {
            "name": "write-strong",
            "subjects": {"groups": ["sre"]},
            "services": ["ledger"],
            "scopes": ["write"],
            "mfa": "30m",
        },
        {
            "name": "admin-reviewed",
            "subjects": {"groups": ["sre"]},
            "services": ["vault"],
            "scopes": ["admin"],
            "require": "approval",
            "approval": {"reviewers": [{"groups": ["leads"]}], "mfa": "15m"},
        },
    ],
}
POLICY = policy_from_data(POLICY_DATA)


@pytest.mark.parametrize(
    ("scope", "second_factor", "allowed", "needs_mfa"),
    [
        ("read", None, True, None),  # no window: any sign-in
        ("write", None, False, 30 * M),  # none at all
        ("write", 31 * M, False, 30 * M),  # too old
        ("write", 30 * M, True, None),  # exactly at the window's end
        ("write", 0 * M, True, None),
        ("write", -1 * M, True, None),  # another replica's clock a little ahead: recent
    ],
)
def test_a_rules_mfa_window(
    scope: str, second_factor: timedelta | None, allowed: bool, needs_mfa: timedelta | None
) -> None:
    decision = evaluate(POLICY, ALICE, "ledger", scope, 10 * M, second_factor=second_factor)
    assert (decision.allowed, decision.needs_mfa) == (allowed, needs_mfa)
    assert decision.mfa == (30 * M if scope == "write" else None)
    if needs_mfa is not None:
        assert decision.rule == "write-strong" and "second factor within 30m" in decision.reason
        assert ("had none" if second_factor is None else "was 31m ago") in decision.reason


def test_a_denial_for_another_reason_is_not_an_mfa_matter() -> None:
    over = evaluate(POLICY, ALICE, "ledger", "write", 2 * timedelta(hours=1), second_factor=None)
    assert not over.allowed and over.needs_mfa is None and "over the maximum" in over.reason
    stranger = evaluate(POLICY, Subject("eve", "user", ()), "ledger", "write", M, second_factor=None)
    assert not stranger.allowed and stranger.needs_mfa is None


def test_without_a_second_factor_another_rule_that_asks_none_decides() -> None:
    data = dict(POLICY_DATA)
    data["rules"] = [
        *POLICY_DATA["rules"],  # type: ignore[list-item]
        {
            "name": "write-reviewed",
            "subjects": {"groups": ["sre"]},
            "services": ["ledger"],
            "scopes": ["write"],
            "require": "approval",
            "approval": {"reviewers": [{"groups": ["leads"]}]},
        },
    ]
    policy = policy_from_data(data)
    weak = evaluate(policy, ALICE, "ledger", "write", M, second_factor=None)
    strong = evaluate(policy, ALICE, "ledger", "write", M, second_factor=M)
    assert (weak.allowed, weak.requirement, weak.rule) == (True, "approval", "write-reviewed")
    assert (strong.allowed, strong.requirement, strong.rule) == (True, "auto", "write-strong")


def test_an_approvals_window_is_described_and_met_like_a_rules() -> None:
    decision = evaluate(POLICY, ALICE, "vault", "admin", M, second_factor=None)  # the requester needs none
    assert decision.allowed and decision.approval is not None
    assert decision.approval.mfa == 15 * M
    assert decision.approval.describe() == "1 of group:leads"  # what review.parse_terms reads back
    assert decision.reason == (
        "admin on vault needs approval by 1 of group:leads (each with a second factor within 15m)"
        " (rule admin-reviewed)"
    )
    assert mfa_met(decision.approval.mfa, 15 * M) and not mfa_met(decision.approval.mfa, 16 * M)
    assert not mfa_met(decision.approval.mfa, None) and mfa_met(None, None)


@pytest.mark.parametrize("bad", ["soon", "0s", -5, ""])
def test_a_bad_window_is_refused_with_its_place(bad: object) -> None:
    data = {**POLICY_DATA, "rules": [{**POLICY_DATA["rules"][1], "mfa": bad}]}  # type: ignore[dict-item]
    with pytest.raises(PolicyError, match=r"rules\[0\]\.mfa"):
        policy_from_data(data)


def test_policy_test_cases_state_the_askers_second_factor() -> None:
    base = {"user": "alice", "groups": ["sre"], "service": "ledger", "scope": "write"}
    cases = CaseFile.model_validate(
        {
            "cases": [
                {**base, "expect": "auto"},  # default: presented just now
                {**base, "mfa": False, "expect": "deny"},
                {**base, "mfa": "20m", "expect": "auto"},
                {**base, "mfa": "2h", "expect": "deny"},
                {**base, "mfa": False, "expect": "auto"},  # wrong on purpose
            ]
        }
    )
    mismatches = run_cases(POLICY, cases)
    assert [m.index for m in mismatches] == [4]
    assert "second factor within 30m" in mismatches[0].message
