"""The policy: loading and strict validation, and the pure evaluation as tables."""

from __future__ import annotations

import copy
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from access.broker.admin.main import app as admin_app
from access.broker.policy import (
    Policy,
    PolicyError,
    Subject,
    UnknownScope,
    UnknownService,
    allowed_services,
    can_read_audit,
    evaluate,
    load_policy,
    policy_from_data,
)
from tests.broker.policy.test_load import GOOD

POLICY: dict[str, Any] = {
    "services": [
        {
            "name": "svc-payments",
            "kind": "postgres",
            "target": "127.0.0.1:5432",
            "description": "Payments database",
            "scopes": ["read", "write"],
            "max_ttl": "1h",
            "options": {"database": "payments", "user": "payments_ro", "password_file": "/etc/access/pw"},
        },
        {
            "name": "svc-cache",
            "kind": "redis",
            "target": "[::1]:6379",
            "scopes": ["read", "admin"],
            "max_ttl": "2h",
        },
        {
            "name": "svc-ledger",
            "kind": "tcp",
            "target": "ledger.internal:7000",
            "scopes": ["read"],
            "max_ttl": "10m",
        },
    ],
    "rules": [
        {
            "name": "sre-payments",
            "subjects": {"groups": ["sre"], "users": ["carol"]},
            "services": ["svc-payments"],
            "scopes": ["read", "write"],
            "max_ttl": "30m",
        },
        {
            "name": "sre-payments-long-read",
            "subjects": {"groups": ["sre"]},
            "services": ["svc-payments"],
            "scopes": ["read"],
            "max_ttl": "45m",
            "require": "approval",
            "approval": {"reviewers": [{"groups": ["leads"]}]},
        },
        {
            "name": "no-writes-for-contractors",
            "subjects": {"groups": ["contractors"]},
            "services": ["svc-payments"],
            "scopes": ["write"],
            "require": "deny",
        },
        {
            "name": "ci-read",
            "subjects": {"service_accounts": ["deploy-bot"]},
            "services": ["svc-payments", "svc-cache", "svc-ledger"],
            "scopes": ["read"],
            "max_ttl": "3h",
        },
        {
            "name": "cache-admin-approval",
            "subjects": {"users": ["alice"]},
            "services": ["svc-cache"],
            "scopes": ["admin"],
            "require": "approval",
            "approval": {"reviewers": [{"groups": ["leads"]}]},
        },
    ],
    "audit": {"readers": {"groups": ["security"], "users": ["dave"]}},
}

ALICE = Subject("alice", "user", ("sre",))
BOB = Subject("bob", "user", ("sre", "contractors"))
CAROL = Subject("carol", "user", ())
EVE = Subject("eve", "user", ("marketing",))
BOT = Subject("deploy-bot", "service_account", ("ci",))
# A user that happens to share a service account's name gets nothing from the service-account entry.
FAKE_BOT = Subject("deploy-bot", "user", ())
DAVE = Subject("dave", "user", ())
SECURITY = Subject("sam", "user", ("security",))


@pytest.fixture(scope="module")
def policy() -> Policy:
    return policy_from_data(POLICY)


M = timedelta(minutes=1)

# subject, service, scope, ttl, allowed, requirement, rule, max_ttl, reason fragment
EVALUATIONS = [
    (
        ALICE,
        "svc-payments",
        "read",
        30 * M,
        True,
        "auto",
        "sre-payments",
        30 * M,
        "allowed by rule sre-payments",
    ),
    (ALICE, "svc-payments", "write", 1 * M, True, "auto", "sre-payments", 30 * M, "allowed"),
    (CAROL, "svc-payments", "write", 30 * M, True, "auto", "sre-payments", 30 * M, "allowed"),
    # over the auto rule's maximum, within the approval rule's: policy allows it, after approval
    (
        ALICE,
        "svc-payments",
        "read",
        40 * M,
        True,
        "approval",
        "sre-payments-long-read",
        45 * M,
        "needs approval",
    ),
    # over every maximum: the message states the best maximum
    (
        ALICE,
        "svc-payments",
        "write",
        31 * M,
        False,
        "auto",
        "sre-payments",
        30 * M,
        "ttl 31m is over the maximum 30m for write on svc-payments",
    ),
    (
        ALICE,
        "svc-payments",
        "read",
        2 * 60 * M,
        False,
        "auto",
        "sre-payments",
        30 * M,
        "over the maximum 30m",
    ),
    # an explicit deny wins over an allow rule that matches too
    (
        BOB,
        "svc-payments",
        "write",
        1 * M,
        False,
        "deny",
        "no-writes-for-contractors",
        None,
        "denied by rule no-writes-for-contractors",
    ),
    (BOB, "svc-payments", "read", 1 * M, True, "auto", "sre-payments", 30 * M, "allowed"),
    # deny by default
    (
        EVE,
        "svc-payments",
        "read",
        1 * M,
        False,
        "deny",
        None,
        None,
        "no policy rule gives eve read on svc-payments",
    ),
    (ALICE, "svc-ledger", "read", 1 * M, False, "deny", None, None, "no policy rule"),
    # the service's maximum caps the rule's
    (BOT, "svc-ledger", "read", 10 * M, True, "auto", "ci-read", 10 * M, "allowed"),
    (BOT, "svc-ledger", "read", 11 * M, False, "auto", "ci-read", 10 * M, "over the maximum 10m"),
    (BOT, "svc-cache", "read", 2 * 60 * M, True, "auto", "ci-read", 2 * 60 * M, "allowed"),
    (BOT, "svc-payments", "write", 1 * M, False, "deny", None, None, "no policy rule"),
    (FAKE_BOT, "svc-payments", "read", 1 * M, False, "deny", None, None, "no policy rule"),
    # a rule without max_ttl gets the service's
    (
        ALICE,
        "svc-cache",
        "admin",
        2 * 60 * M,
        True,
        "approval",
        "cache-admin-approval",
        2 * 60 * M,
        "approval",
    ),
]


@pytest.mark.parametrize(
    ("subject", "service", "scope", "ttl", "allowed", "requirement", "rule", "max_ttl", "reason"), EVALUATIONS
)
def test_evaluate(
    policy: Policy,
    subject: Subject,
    service: str,
    scope: str,
    ttl: timedelta,
    allowed: bool,
    requirement: str,
    rule: str | None,
    max_ttl: timedelta | None,
    reason: str,
) -> None:
    decision = evaluate(policy, subject, service, scope, ttl)
    assert decision.allowed is allowed
    assert decision.requirement == requirement
    assert decision.rule == rule
    assert decision.max_ttl == max_ttl
    assert reason in decision.reason
    assert decision.issuable is (allowed and requirement == "auto")


def test_ttl_exactly_at_the_maximum_is_allowed(policy: Policy) -> None:
    assert evaluate(policy, ALICE, "svc-payments", "write", timedelta(minutes=30)).allowed
    assert not evaluate(policy, ALICE, "svc-payments", "write", timedelta(minutes=30, seconds=1)).allowed


@pytest.mark.parametrize(
    ("service", "scope", "error", "message"),
    [
        ("svc-nope", "read", UnknownService, "no service named 'svc-nope'"),
        (
            "svc-payments",
            "admin",
            UnknownScope,
            "svc-payments has no scope 'admin'; its scopes are: read, write",
        ),
    ],
)
def test_unknown_service_or_scope(
    policy: Policy, service: str, scope: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        evaluate(policy, ALICE, service, scope, timedelta(minutes=1))


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        (
            ALICE,
            [
                ("svc-cache", "admin", 120, "approval"),
                ("svc-payments", "read", 30, "auto"),
                ("svc-payments", "write", 30, "auto"),
            ],
        ),
        # the deny rule removes write for bob
        (BOB, [("svc-payments", "read", 30, "auto")]),
        (
            BOT,
            [
                ("svc-cache", "read", 120, "auto"),
                ("svc-ledger", "read", 10, "auto"),
                ("svc-payments", "read", 60, "auto"),
            ],
        ),
        (EVE, []),
    ],
)
def test_allowed_services(
    policy: Policy, subject: Subject, expected: list[tuple[str, str, int, str]]
) -> None:
    got = [
        (a.service.name, a.scope, int(a.max_ttl.total_seconds() // 60), a.requirement)
        for a in allowed_services(policy, subject)
    ]
    assert got == expected


@pytest.mark.parametrize(
    ("subject", "allowed"),
    [(SECURITY, True), (DAVE, True), (ALICE, False), (Subject("dave", "service_account"), False)],
)
def test_can_read_audit(policy: Policy, subject: Subject, allowed: bool) -> None:
    assert can_read_audit(policy, subject) is allowed
    assert policy.can_read_audit(subject) is allowed


def test_empty_policy_denies_everything() -> None:
    empty = Policy.empty()
    assert empty.services == {}
    assert allowed_services(empty, ALICE) == []
    assert not empty.can_read_audit(SECURITY)
    with pytest.raises(UnknownService):
        evaluate(empty, ALICE, "svc-payments", "read", timedelta(minutes=1))


def test_service_config(policy: Policy) -> None:
    payments = policy.service("svc-payments")
    assert payments is not None
    assert (payments.kind, payments.host, payments.port) == ("postgres", "127.0.0.1", 5432)
    assert payments.max_ttl == timedelta(hours=1)
    assert payments.options["password_file"] == "/etc/access/pw"
    cache = policy.services["svc-cache"]
    assert (cache.host, cache.port, cache.target) == ("::1", 6379, "[::1]:6379")
    assert policy.service("svc-nope") is None


def _broken(path: str, value: Any) -> dict[str, Any]:
    """POLICY with the value at ``path`` (dotted, list indexes as numbers) replaced; ``...`` deletes it."""
    data = copy.deepcopy(POLICY)
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    key: Any = int(last) if last.isdigit() else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return data


INVALID = [
    ("services.0.name", "Svc_Payments", "services[0].name: bad service name 'Svc_Payments'"),
    ("services.0.name", "a" * 64, "services[0].name: bad service name"),
    ("services.1.name", "svc-payments", "services[1].name: duplicate service name 'svc-payments'"),
    ("services.0.kind", "oracle", "services[0].kind: unknown kind 'oracle'"),
    ("services.0.target", "127.0.0.1", "services[0].target: expected host:port"),
    ("services.0.target", "127.0.0.1:99999", "services[0].target: expected host:port"),
    ("services.0.target", "http://x:80", "services[0].target: bad host"),
    ("services.0.max_ttl", "forever", "services[0].max_ttl: bad duration 'forever'"),
    ("services.0.max_ttl", "0s", "services[0].max_ttl: bad duration '0s': it must be longer than zero"),
    ("services.0.max_ttl", ..., "services[0]: missing 'max_ttl'"),
    ("services.0.scopes", [], "services[0].scopes: must not be empty"),
    ("services.0.scopes", ["read", "read"], "services[0].scopes: duplicate names"),
    ("services.0.scopes", ["READ"], "services[0].scopes[0]: bad name 'READ'"),
    ("services.0.colour", "blue", "services[0]: unknown key 'colour'"),
    ("services.0.options", {"password": "hunter2"}, "services[0].options.password: do not put secrets"),
    ("services.0.options", {"database": {"nested": 1}}, "services[0].options.database: expected"),
    ("services", {"name": "x"}, "services: expected a list, got dict"),
    ("rules.0.services", ["svc-nope"], "rules[0].services[0]: no service named 'svc-nope'"),
    ("rules.0.scopes", ["admin"], "rules[0].scopes[0]: none of the rule's services has scope 'admin'"),
    ("rules.0.require", "maybe", "rules[0].require: expected one of auto, approval, deny"),
    ("rules.0.max_ttl", "-5m", "rules[0].max_ttl: bad duration '-5m'"),
    ("rules.0.subjects", {}, "rules[0].subjects: name at least one group, user or service account"),
    ("rules.0.subjects", {"teams": ["x"]}, "rules[0].subjects: unknown key 'teams'"),
    ("rules.0.subjects", {"groups": "sre"}, "rules[0].subjects.groups: expected a list, got str"),
    ("rules.1.name", "sre-payments", "rules[1].name: duplicate rule name 'sre-payments'"),
    ("rules.0.name", ..., "rules[0]: missing 'name'"),
    ("audit", {"readers": {"groups": ["Bad Group"]}}, "audit.readers.groups[0]: bad name 'Bad Group'"),
    ("audit", {"writers": {}}, "audit: unknown key 'writers'"),
    ("approvals", {}, "policy: unknown key 'approvals'"),
]


@pytest.mark.parametrize(("path", "value", "message"), INVALID)
def test_invalid_policies_are_refused_naming_the_place(path: str, value: Any, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        policy_from_data(_broken(path, value))
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("data", "message"), [([1, 2], "policy: expected a mapping"), ("text", "expected a mapping")]
)
def test_policy_must_be_a_mapping(data: Any, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        policy_from_data(data)


def test_load_from_yaml(tmp_path: Path) -> None:
    path = _write(tmp_path / "policy.yaml", GOOD)
    policy = load_policy(path)
    assert evaluate(policy, ALICE, "svc-payments", "read", timedelta(minutes=30)).issuable
    assert load_policy(_write(tmp_path / "empty.yaml", "")).services == {}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("services: [\n", "not valid YAML"),
        ("services:\n  - name: x\n    kind: tcp\n", "services[0]: missing 'target'"),
        ("!!python/object:os.system {}", "not valid YAML"),  # safe_load: no object construction
    ],
)
def test_load_errors_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path / "policy.yaml", text)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "nope.yaml")


# ---------------------------------------------------------------- access-broker policy check


def test_cli_policy_check(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.yaml", yaml.safe_dump(POLICY))
    result = CliRunner().invoke(admin_app, ["policy", "check", str(good)])
    assert result.exit_code == 0, result.stderr
    assert f"{good}: OK, 3 service(s), 5 rule(s)" in result.stdout
    assert "service svc-payments (postgres at 127.0.0.1:5432): read, write, max 1h" in result.stdout
    assert "rule no-writes-for-contractors [deny]: group contractors -> svc-payments (write)" in result.stdout
    result = CliRunner().invoke(admin_app, ["policy", "check", str(good), "-o", "json"])
    assert [s["name"] for s in json.loads(result.stdout)["services"]] == [
        "svc-payments",
        "svc-cache",
        "svc-ledger",
    ]

    bad = _write(tmp_path / "bad.yaml", yaml.safe_dump(_broken("rules.0.max_ttl", "forever")))
    result = CliRunner().invoke(admin_app, ["policy", "check", str(bad)])
    assert result.exit_code == 2
    assert result.stdout == ""
    where = rf"error: {re.escape(str(bad))}:\d+: rules\[0\]\.max_ttl: "
    assert re.search(where + "bad duration 'forever'", result.stderr)
