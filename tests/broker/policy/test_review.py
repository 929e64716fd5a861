"""Counting approvals: an AND of clauses, each approval counted once, in one clause only."""

from __future__ import annotations

from typing import Any

import pytest

from access.broker.policy import ApprovalRule, PolicyError, Subject, policy_from_data, tally

LEADS_AND_SECURITY = ApprovalRule.model_validate(
    {"reviewers": [{"groups": ["leads"], "count": 2}, {"groups": ["security"]}]}
)


def user(name: str, *groups: str) -> Subject:
    return Subject(name, "user", groups)


def test_two_of_leads_and_one_of_security() -> None:
    dana, erin, sam = user("dana", "leads"), user("erin", "leads"), user("sam", "security")
    assert tally(LEADS_AND_SECURITY, [dana]).missing == (1, 1)
    assert tally(LEADS_AND_SECURITY, [dana, erin]).missing == (0, 1)
    done = tally(LEADS_AND_SECURITY, [dana, erin, sam])
    assert done.met and done.counted == (("dana", "erin"), ("sam",))


def test_an_approver_in_both_groups_counts_once() -> None:
    both = user("bo", "leads", "security")
    assert tally(LEADS_AND_SECURITY, [both]).missing in {(1, 1), (2, 0)}
    assert not tally(LEADS_AND_SECURITY, [both, both, both]).met  # the same name again counts nothing
    # With one more lead, bo is moved to the seat only bo can fill: the assignment is a matching.
    done = tally(LEADS_AND_SECURITY, [both, user("dana", "leads"), user("erin", "leads")])
    assert done.met and done.counted == (("dana", "erin"), ("bo",))


def test_service_accounts_and_strangers_count_nowhere() -> None:
    bot = Subject("lead-bot", "service_account", ("leads",))
    assert tally(LEADS_AND_SECURITY, [bot, user("carol")]).missing == (2, 1)


def test_reviewers_by_name() -> None:
    rule = ApprovalRule.model_validate({"reviewers": [{"users": ["dana", "erin"], "count": 2}]})
    assert tally(rule, [user("dana"), user("erin")]).met
    assert rule.describe() == "2 of user:dana, user:erin"
    assert LEADS_AND_SECURITY.describe() == "2 of group:leads and 1 of group:security"


def _policy(rule: dict[str, Any]) -> None:
    service = {"name": "db", "kind": "tcp", "target": "127.0.0.1:1", "scopes": ["read"], "max_ttl": "1h"}
    base = {"name": "r", "subjects": {"groups": ["dev"]}, "services": ["db"], "scopes": ["read"]}
    policy_from_data({"services": [service], "rules": [{**base, **rule}]})


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"require": "approval"}, r"rules\[0\]\.approval: require: approval needs approval"),
        ({"approval": {"reviewers": [{"groups": ["x"]}]}}, r"only for require: approval"),
        ({"require": "approval", "approval": {"reviewers": []}}, r"reviewers"),
        ({"require": "approval", "approval": {"reviewers": [{"count": 1}]}}, r"name the users or groups"),
        (
            {"require": "approval", "approval": {"reviewers": [{"users": ["a"], "count": 2}]}},
            r"count 2 is more than the 1 users named",
        ),
        (
            {"require": "approval", "break_glass": True, "approval": {"reviewers": [{"users": ["a"]}]}},
            "glass",
        ),
        ({"break_glass": True, "reason": {"required": False}}, r"always needs a reason"),
    ],
)
def test_approval_terms_are_checked(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        _policy(rule)
