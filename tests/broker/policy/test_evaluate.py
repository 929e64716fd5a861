"""``evaluate`` as a table: deny by default, an explicit deny wins, max TTL = min(rule, service),
``require: approval`` allowed but not issuable (the grants service refuses it for now)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from access.broker.policy import Subject, evaluate, policy_from_data

M = timedelta(minutes=1)
H = timedelta(hours=1)

POLICY = policy_from_data(
    {
        "services": [
            {
                "name": "db",
                "kind": "postgres",
                "target": "db:5432",
                "scopes": ["read", "write", "admin"],
                "max_ttl": "1h",
            },
            {"name": "short", "kind": "tcp", "target": "short:7000", "scopes": ["read"], "max_ttl": "10m"},
        ],
        "rules": [
            {
                "name": "dev-db",
                "subjects": {"groups": ["dev"]},
                "services": ["db"],
                "scopes": ["read", "write"],
                "max_ttl": "30m",
            },
            # Longer than the service allows: the service's 1h caps it.
            {
                "name": "dev-db-long",
                "subjects": {"groups": ["dev"]},
                "services": ["db"],
                "scopes": ["read"],
                "max_ttl": "2h",
                "require": "approval",
                "approval": {"reviewers": [{"groups": ["leads"]}]},
            },
            # Written after the allow rule that also matches mallory: a deny wins wherever it is.
            {
                "name": "no-writes-mallory",
                "subjects": {"users": ["mallory"]},
                "services": ["db"],
                "scopes": ["write"],
                "require": "deny",
            },
            {
                "name": "dev-short",
                "subjects": {"groups": ["dev"]},
                "services": ["short"],
                "scopes": ["read"],
                "max_ttl": "1h",
            },
            {
                "name": "root-admin",
                "subjects": {"users": ["root"]},
                "services": ["db"],
                "scopes": ["admin"],
                "require": "approval",
                "approval": {"reviewers": [{"groups": ["leads"]}]},
            },
            {
                "name": "bot-first",
                "subjects": {"service_accounts": ["bot"]},
                "services": ["db"],
                "scopes": ["read"],
                "max_ttl": "20m",
            },
            {
                "name": "bot-second",
                "subjects": {"service_accounts": ["bot"]},
                "services": ["db"],
                "scopes": ["read"],
                "max_ttl": "20m",
            },
        ],
    }
)

ALICE = Subject("alice", "user", ("dev",))
MALLORY = Subject("mallory", "user", ("dev",))
EVE = Subject("eve", "user", ())
ROOT = Subject("root", "user", ())
BOT = Subject("bot", "service_account", ())
USER_NAMED_BOT = Subject("bot", "user", ())

# subject, service, scope, ttl -> allowed, issuable, requirement, rule, max_ttl, reason
TABLE = [
    (ALICE, "db", "read", 30 * M, True, True, "auto", "dev-db", 30 * M, "read on db allowed by rule dev-db"),
    (ALICE, "db", "write", 1 * M, True, True, "auto", "dev-db", 30 * M, "write on db allowed by rule dev-db"),
    # Past the auto rule, within the approval rule: allowed, but only after approval.
    (
        ALICE,
        "db",
        "read",
        31 * M,
        True,
        False,
        "approval",
        "dev-db-long",
        1 * H,
        "read on db needs approval by 1 of group:leads (rule dev-db-long)",
    ),
    (ALICE, "db", "read", 1 * H, True, False, "approval", "dev-db-long", 1 * H, "needs approval"),
    # Past every maximum: the refusal names the maximum of the best (auto) rule.
    (
        ALICE,
        "db",
        "read",
        61 * M,
        False,
        False,
        "auto",
        "dev-db",
        30 * M,
        "ttl 1h1m is over the maximum 30m for read on db",
    ),
    (
        ALICE,
        "db",
        "write",
        31 * M,
        False,
        False,
        "auto",
        "dev-db",
        30 * M,
        "ttl 31m is over the maximum 30m for write on db",
    ),
    # The service's maximum caps a longer rule.
    (ALICE, "short", "read", 10 * M, True, True, "auto", "dev-short", 10 * M, "allowed by rule dev-short"),
    (
        ALICE,
        "short",
        "read",
        11 * M,
        False,
        False,
        "auto",
        "dev-short",
        10 * M,
        "ttl 11m is over the maximum 10m for read on short",
    ),
    # An explicit deny wins over an allow rule written before it.
    (
        MALLORY,
        "db",
        "write",
        1 * M,
        False,
        False,
        "deny",
        "no-writes-mallory",
        None,
        "write on db is denied by rule no-writes-mallory",
    ),
    (MALLORY, "db", "read", 1 * M, True, True, "auto", "dev-db", 30 * M, "allowed by rule dev-db"),
    # Deny by default.
    (EVE, "db", "read", 1 * M, False, False, "deny", None, None, "no policy rule gives eve read on db"),
    (ALICE, "db", "admin", 1 * M, False, False, "deny", None, None, "no policy rule gives alice admin on db"),
    # A rule without max_ttl gets the service's.
    (
        ROOT,
        "db",
        "admin",
        1 * H,
        True,
        False,
        "approval",
        "root-admin",
        1 * H,
        "admin on db needs approval by 1 of group:leads (rule root-admin)",
    ),
    # Equal rules: the one written first decides.
    (BOT, "db", "read", 20 * M, True, True, "auto", "bot-first", 20 * M, "allowed by rule bot-first"),
    # A service-account entry does not match a user of the same name.
    (
        USER_NAMED_BOT,
        "db",
        "read",
        1 * M,
        False,
        False,
        "deny",
        None,
        None,
        "no policy rule gives bot read on db",
    ),
]


@pytest.mark.parametrize(
    ("subject", "service", "scope", "ttl", "allowed", "issuable", "requirement", "rule", "max_ttl", "reason"),
    TABLE,
)
def test_evaluate_table(
    subject: Subject,
    service: str,
    scope: str,
    ttl: timedelta,
    allowed: bool,
    issuable: bool,
    requirement: str,
    rule: str | None,
    max_ttl: timedelta | None,
    reason: str,
) -> None:
    decision = evaluate(POLICY, subject, service, scope, ttl)
    assert (decision.service, decision.scope) == (service, scope)
    assert decision.allowed is allowed
    assert decision.issuable is issuable
    assert decision.requirement == requirement
    assert decision.rule == rule
    assert decision.max_ttl == max_ttl
    assert reason in decision.reason
