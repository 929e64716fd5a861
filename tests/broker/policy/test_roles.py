"""Services selected by labels, and roles: a role's entries compile into the rules the evaluator
already decides by (one decision path), named ``<role>[<i>]``, with errors at their place."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from access.broker.admin.main import app as admin_app
from access.broker.policy import (
    Policy,
    PolicyError,
    Problem,
    Subject,
    allowed_services,
    evaluate,
    load_policy,
    policy_from_data,
)

H = timedelta(hours=1)
ALICE = Subject("alice", "user", ("payments-oncall",))


def _svc(name: str, labels: dict[str, str], scopes: tuple[str, ...] = ("read", "write")) -> dict[str, object]:
    return {
        "name": name,
        "kind": "tcp",
        "target": f"{name}:7000",
        "labels": labels,
        "scopes": list(scopes),
        "max_ttl": "2h",
    }


SERVICES = [
    _svc("pay-prod", {"env": "prod", "team": "payments"}),
    _svc("pay-dev", {"env": "dev", "team": "payments"}),
    _svc("ledger-prod", {"env": "prod", "team": "ledger", "app.kubernetes.io/name": "ledger"}),
    _svc("plain", {}),
]


def _policy(*rules: dict[str, object], roles: tuple[dict[str, object], ...] = ()) -> Policy:
    return policy_from_data({"services": SERVICES, "rules": list(rules), "roles": list(roles)})


def _rule(name: str, **terms: object) -> dict[str, object]:
    return {"name": name, "subjects": {"groups": ["payments-oncall"]}, "scopes": ["read"], **terms}


# ---------------------------------------------------------------- selection by labels


@pytest.mark.parametrize(
    ("terms", "selected"),
    [
        ({"labels": {"team": "payments"}}, {"pay-prod", "pay-dev"}),
        # Every label given must match.
        ({"labels": {"team": "payments", "env": "prod"}}, {"pay-prod"}),
        ({"labels": {"env": "prod"}}, {"pay-prod", "ledger-prod"}),
        ({"labels": {"app.kubernetes.io/name": "ledger"}}, {"ledger-prod"}),
        # Exact and case-sensitive.
        ({"labels": {"env": "Prod"}}, set()),
        ({"labels": {"env": "prod", "team": "nobody"}}, set()),
        # Named OR matched.
        ({"services": ["plain"], "labels": {"env": "dev"}}, {"plain", "pay-dev"}),
        ({"services": ["pay-prod"]}, {"pay-prod"}),
    ],
)
def test_a_rule_selects_the_services_it_names_or_whose_labels_match(
    terms: dict[str, object], selected: set[str]
) -> None:
    policy = _policy(_rule("r", **terms))
    allowed = {access.service.name for access in allowed_services(policy, ALICE)}
    assert allowed == selected
    for svc in ("pay-prod", "pay-dev", "ledger-prod", "plain"):
        decision = evaluate(policy, ALICE, svc, "read", H)
        assert decision.allowed == (svc in selected), svc
        assert decision.rule == ("r" if svc in selected else None)


def test_an_explicit_deny_by_label_beats_an_allow_by_name() -> None:
    policy = _policy(
        _rule("oncall-pay-prod", services=["pay-prod"], scopes=["read", "write"]),
        _rule("no-prod-writes", labels={"env": "prod"}, scopes=["write"], require="deny"),
    )
    write = evaluate(policy, ALICE, "pay-prod", "write", H)
    assert (write.allowed, write.rule) == (False, "no-prod-writes")
    assert write.reason == "write on pay-prod is denied by rule no-prod-writes"
    read = evaluate(policy, ALICE, "pay-prod", "read", H)
    assert (read.allowed, read.rule) == (True, "oncall-pay-prod")
    scopes = [(a.service.name, a.scope) for a in allowed_services(policy, ALICE)]
    assert scopes == [("pay-prod", "read")]


def test_a_deny_in_a_role_wins_over_an_allow_rule_too() -> None:
    role = {
        "name": "contractors",
        "members": {"users": ["alice"]},
        "allow": [{"labels": {"team": "payments"}, "scopes": ["read", "write"], "require": "deny"}],
    }
    policy = _policy(_rule("oncall", services=["pay-dev"]), roles=(role,))
    decision = evaluate(policy, ALICE, "pay-dev", "read", H)
    assert (decision.allowed, decision.rule) == (False, "contractors[0]")


# ---------------------------------------------------------------- roles


ROLE = {
    "name": "payments-oncall",
    "members": {"groups": ["payments-oncall"], "users": ["carol"], "service_accounts": ["pay-bot"]},
    "allow": [
        {"labels": {"team": "payments"}, "scopes": ["read"], "max_ttl": "1h"},
        {
            "services": ["pay-prod"],
            "scopes": ["write"],
            "max_ttl": "30m",
            "require": "approval",
            "approval": {"reviewers": [{"groups": ["leads"], "count": 2}, {"groups": ["security"]}]},
            "reason": {"pattern": "^INC-[0-9]+$"},
        },
        {"services": ["pay-prod"], "scopes": ["write"], "break_glass": True},
    ],
}


def test_a_role_compiles_into_one_rule_per_entry_after_the_rules() -> None:
    policy = _policy(_rule("first", services=["plain"]), roles=(ROLE,))
    names = [rule.name for rule in policy.rules]
    assert names == ["first", "payments-oncall[0]", "payments-oncall[1]", "payments-oncall[2]"]
    compiled = policy.rules[2]
    assert compiled.subjects.users == {"carol"} and compiled.subjects.service_accounts == {"pay-bot"}
    assert (compiled.max_ttl, compiled.require, compiled.services) == (
        timedelta(minutes=30),
        "approval",
        ("pay-prod",),
    )
    assert compiled.approval.describe() == "2 of group:leads and 1 of group:security"
    assert policy.rule("payments-oncall[1]") == compiled


@pytest.mark.parametrize(
    ("who", "service", "scope", "reason", "expected"),
    [
        (ALICE, "pay-dev", "read", None, (True, "auto", "payments-oncall[0]", H)),
        (Subject("carol", "user"), "pay-prod", "read", None, (True, "auto", "payments-oncall[0]", H)),
        (
            Subject("pay-bot", "service_account"),
            "pay-dev",
            "read",
            None,
            (True, "auto", "payments-oncall[0]", H),
        ),
        # A user named like the role's service account is not it.
        (Subject("pay-bot", "user"), "pay-dev", "read", None, (False, "deny", None, None)),
        (ALICE, "ledger-prod", "read", None, (False, "deny", None, None)),
        (
            ALICE,
            "pay-prod",
            "write",
            "INC-7",
            (True, "approval", "payments-oncall[1]", timedelta(minutes=30)),
        ),
        (
            ALICE,
            "pay-prod",
            "write",
            "hotfix",
            (False, "approval", "payments-oncall[1]", timedelta(minutes=30)),
        ),
    ],
)
def test_a_role_decides_as_its_rules_would(
    who: Subject, service: str, scope: str, reason: str | None, expected: tuple[object, ...]
) -> None:
    policy = _policy(roles=(ROLE,))
    decision = evaluate(policy, who, service, scope, timedelta(minutes=10), reason)
    assert (decision.allowed, decision.requirement, decision.rule, decision.max_ttl) == expected


def test_a_break_glass_entry_of_a_role_applies_only_when_asked_for() -> None:
    policy = _policy(roles=(ROLE,))
    decision = evaluate(policy, ALICE, "pay-prod", "write", H, "INC-1", break_glass=True)
    assert (decision.allowed, decision.rule, decision.break_glass) == (True, "payments-oncall[2]", True)


# ---------------------------------------------------------------- errors name their place and line

# Lines: 1 services, 2 - name, ..., 7 labels, 8 rules, 9 - name, ..., 13 roles, 14 - name,
# 15 members, 16 allow, 17 - services, 18 scopes, 19 - labels, 20 scopes, 21 max_ttl.
GOOD = """\
services:
  - name: pay-prod
    kind: tcp
    target: pay:7000
    scopes: [read, write]
    max_ttl: 1h
    labels: {env: prod, team: payments}
rules:
  - name: sre
    subjects: {groups: [sre]}
    services: [pay-prod]
    scopes: [read]
roles:
  - name: payments-oncall
    members: {groups: [payments-oncall]}
    allow:
      - services: [pay-prod]
        scopes: [read]
      - labels: {team: payments}
        scopes: [write]
        max_ttl: 30m
"""

LABEL_RULE = "1 to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
ENTRY_KEYS = "services, labels, scopes, max_ttl, require, reason, approval, break_glass, mfa"
SELECT = "select services by name (services: [svc-a]) or by labels (labels: {env: prod}), or both"
PREFIX = (
    "the prefix before '/' must be a DNS subdomain (lowercase labels joined by '.', e.g. app.kubernetes.io)"
)
ROLE_NAME = "lowercase letters, digits and '-', at most 63 characters, not starting or ending with '-'"
ENTRY_1 = "      - labels: {team: payments}\n"
SERVICE_LABELS = "labels: {env: prod, team: payments}"
ALLOW = GOOD[GOOD.index("    allow:\n") :]


def _bad(old: str, new: str, where: str, message: str, line: int, name: str) -> object:
    return pytest.param((old, new), where, message, line, id=name)


BAD = [
    _bad("max_ttl: 30m", "max_ttl: forever", "roles[0].allow[1].max_ttl",
         "bad duration 'forever': write it like 45s, 30m or 1h30m", 21, "entry max_ttl"),
    _bad("scopes: [write]", "scopes: [admin]", "roles[0].allow[1].scopes[0]",
         "none of the rule's services has scope 'admin'", 20, "entry scope"),
    _bad("- services: [pay-prod]", "- services: [pay-nope]", "roles[0].allow[0].services[0]",
         "no service named 'pay-nope' in services", 17, "entry service"),
    _bad(ENTRY_1, "      - colour: blue\n", "roles[0].allow[1]",
         f"unknown key 'colour' (allowed: {ENTRY_KEYS})", 19, "entry unknown key"),
    _bad(ENTRY_1, "      - max_ttl: 1h\n", "roles[0].allow[1]", SELECT, 19, "entry selects nothing"),
    _bad("labels: {team: payments}", "labels: {}", "roles[0].allow[1].labels",
         "name at least one label (an empty selector would select every service)", 19, "empty selector"),
    _bad("labels: {team: payments}", "labels: {Team_: payments}", "roles[0].allow[1].labels.Team_",
         f"bad label key 'Team_': {LABEL_RULE}", 19, "bad selector key"),
    _bad(SERVICE_LABELS, "labels: {env: prod, tier: 1}", "services[0].labels.tier",
         "a label value is a string, got int: quote it", 7, "label value a number"),
    _bad(SERVICE_LABELS, "labels: {env: yes}", "services[0].labels.env",
         "a label value is a string, got bool: quote it", 7, "label value a boolean"),
    _bad(SERVICE_LABELS, "labels: {env: 'a b'}", "services[0].labels.env",
         f"bad label value 'a b': {LABEL_RULE}", 7, "bad label value"),
    _bad(SERVICE_LABELS, "labels: {Example.COM/env: prod}", "services[0].labels.Example.COM/env",
         f"bad label key 'Example.COM/env': {PREFIX}", 7, "bad label prefix"),
    _bad("    members: {groups: [payments-oncall]}\n", "", "roles[0]", "missing 'members'", 14,
         "role without members"),
    _bad("members: {groups: [payments-oncall]}", "members: {}", "roles[0].members",
         "name at least one group, user or service account", 15, "role with no members"),
    _bad("- name: payments-oncall", "- name: Payments", "roles[0].name",
         f"bad role name 'Payments': {ROLE_NAME}", 14, "bad role name"),
    _bad("  - name: sre\n", "  - name: payments-oncall[1]\n", "rules[0].name",
         "'payments-oncall[1]' is the name of roles[0].allow[1]: rename the rule", 9, "rule as entry"),
    _bad(ALLOW, "    allow: []\n", "roles[0].allow", "at least 1 item(s)", 16, "role allows nothing"),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "where", "message", "line"), BAD)
def test_a_bad_role_or_label_names_the_field_and_the_line(
    tmp_path: Path, edit: tuple[str, str], where: str, message: str, line: int
) -> None:
    old, new = edit
    assert GOOD.count(old) == 1, old
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD.replace(old, new))
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert caught.value.problems == (Problem(where, message, line),)
    assert str(caught.value) == f"{path}:{line}: {where}: {message}"


def test_duplicate_role_names_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD + GOOD[GOOD.index("  - name: payments-oncall") :])
    with pytest.raises(PolicyError, match=r":22: roles\[1\]\.name: duplicate role name 'payments-oncall'"):
        load_policy(path)


def test_too_many_labels_are_refused() -> None:
    labels = {f"k{i}": "v" for i in range(65)}
    with pytest.raises(PolicyError, match=r"services\[0\]\.labels: at most 64 labels"):
        policy_from_data({"services": [_svc("a", labels)]})


# ---------------------------------------------------------------- a selector that selects nothing yet


def test_a_selector_that_selects_no_service_loads_with_a_warning_that_check_prints(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD.replace("labels: {team: payments}", "labels: {team: ledger}"))
    policy = load_policy(path)
    warning = Problem("roles[0].allow[1].labels", "selects no service (none has team=ledger)", 19)
    assert policy.warnings == (warning,)
    assert [rule.name for rule in policy.rules] == ["sre", "payments-oncall[0]", "payments-oncall[1]"]
    result = CliRunner().invoke(admin_app, ["policy", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert (
        result.stderr
        == f"warning: {path}:19: roles[0].allow[1].labels: selects no service (none has team=ledger)\n"
    )
    assert result.stdout.splitlines() == [
        f"{path}: OK, 1 service(s), 3 rule(s) (1 role(s))",
        "  service pay-prod (tcp at pay:7000): read, write, max 1h, labels env=prod, team=payments",
        "  rule sre [auto]: group sre -> pay-prod (read)",
        "  rule payments-oncall[0] [auto]: group payments-oncall -> pay-prod (read)",
        "  rule payments-oncall[1] [auto]: group payments-oncall -> labels team=ledger (write), max 30m",
    ]


def test_policy_check_json_lists_roles_labels_and_warnings(tmp_path: Path) -> None:
    import json

    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    result = CliRunner().invoke(admin_app, ["policy", "check", str(path), "-o", "json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["services"][0]["labels"] == {"env": "prod", "team": "payments"}
    assert found["rules"][2]["labels"] == {"team": "payments"}
    assert found["roles"] == [
        {
            "name": "payments-oncall",
            "members": {"groups": ["payments-oncall"], "users": [], "service_accounts": []},
            "rules": ["payments-oncall[0]", "payments-oncall[1]"],
        }
    ]
    assert found["warnings"] == []
