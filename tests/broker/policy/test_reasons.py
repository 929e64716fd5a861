"""A rule may ask for a reason, and for one that matches a pattern: a request without it is
denied by that rule, saying what it asks; another rule that asks nothing still allows; a bad
pattern is refused at load with its line; a reload keeps a grant whose reason still does."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from access.broker.policy import PolicyError, Subject, evaluate, load_policy, policy_from_data
from access.broker.runtime import Broker

M = timedelta(minutes=1)
ALICE = Subject("alice", "user", ("sre",))
PATTERN = "^(INC|CHG)-[0-9]+$"


def _policy(*rules: dict[str, Any]) -> Any:
    return policy_from_data(
        {
            "services": [
                {
                    "name": "db",
                    "kind": "postgres",
                    "target": "db:5432",
                    "scopes": ["read", "write"],
                    "max_ttl": "1h",
                }
            ],
            "rules": list(rules),
        }
    )


def _rule(name: str, scopes: list[str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "subjects": {"groups": ["sre"]}, "services": ["db"], "scopes": scopes, **extra}


@pytest.mark.parametrize(
    ("reason", "allowed"),
    [
        ("INC-123", True),
        ("CHG-9", True),
        ("INC-12a", False),
        ("fixing things", False),
        ("", False),
        (None, False),
    ],
)
def test_a_pattern_decides_and_the_refusal_says_what_it_is(reason: str | None, allowed: bool) -> None:
    policy = _policy(_rule("sre-write", ["write"], reason={"pattern": PATTERN}))
    decision = evaluate(policy, ALICE, "db", "write", 30 * M, reason)
    assert decision.allowed is allowed
    if not allowed:
        given = f'the reason "{reason}"' if reason else "no reason"
        assert (
            decision.reason
            == f"write on db needs a reason matching {PATTERN} (rule sre-write); {given} was given"
        )
        assert decision.rule == "sre-write"


def test_required_without_a_pattern_takes_any_reason_but_none() -> None:
    policy = _policy(_rule("sre-read", ["read"], reason={"required": True}))
    assert evaluate(policy, ALICE, "db", "read", M, "looking at a slow query").allowed
    refused = evaluate(policy, ALICE, "db", "read", M, None)
    assert not refused.allowed and "needs a reason (rule sre-read)" in refused.reason


def test_a_rule_that_asks_nothing_still_allows_and_deny_still_wins() -> None:
    policy = _policy(
        _rule("strict", ["read"], reason={"pattern": PATTERN}),
        _rule("lenient", ["read"], max_ttl="10m"),
    )
    decision = evaluate(policy, ALICE, "db", "read", 5 * M, "just looking")
    assert decision.allowed and decision.rule == "lenient"
    assert evaluate(policy, ALICE, "db", "read", 5 * M, "INC-1").max_ttl == timedelta(hours=1)  # strict's 1h
    denied = _policy(
        _rule("strict", ["read"], reason={"pattern": PATTERN}), _rule("no", ["read"], require="deny")
    )
    assert not evaluate(denied, ALICE, "db", "read", M, "INC-1").allowed


def test_a_bad_pattern_is_refused_at_load_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "services:\n"
        "  - name: db\n    kind: postgres\n    target: db:5432\n    scopes: [read]\n    max_ttl: 1h\n"
        "rules:\n"
        "  - name: r\n    subjects: {groups: [sre]}\n    services: [db]\n    scopes: [read]\n"
        "    reason:\n      pattern: '^(INC'\n"
    )
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(caught.value).startswith(f"{path}:13: rules[0].reason.pattern: "), str(caught.value)
    assert "not a regular expression" in str(caught.value)


def _with_pattern() -> dict[str, Any]:
    from tests.conftest import DEFAULT_POLICY

    policy = copy.deepcopy(DEFAULT_POLICY)
    policy["rules"][0]["reason"] = {"pattern": PATTERN}
    return policy


def test_a_request_is_denied_saying_the_pattern_and_a_reload_ends_grants_whose_reason_does_not_fit(
    make_broker: Callable[..., Broker], tmp_path: Path
) -> None:
    from access.broker import grants
    from access.broker.auth import tokens
    from access.broker.errors import GrantDenied
    from access.broker.rollout import reload_file
    from access.shared.models import GrantRequest
    from tests.broker.conftest import add_user, audit_rows, login
    from tests.conftest import DEFAULT_POLICY, write_policy

    broker = make_broker(policy=DEFAULT_POLICY)  # no pattern yet
    ctx = tokens.authenticate(broker, login(broker, add_user(broker, "alice", ("sre",))).access_token)

    def ask(reason: str) -> str:
        return grants.request_grant(
            broker, ctx, GrantRequest(service="svc-payments", scope="write", ttl="10m", reason=reason)
        ).id

    loose, fitting = ask("hotfix"), ask("INC-42")
    done = reload_file(broker, write_policy(tmp_path / "policy.yaml", _with_pattern()), "admin:root")
    assert done.new and done.ended == (loose,)  # INC-42 still fits: it stays
    [revoke] = audit_rows(broker, "grant.revoke")
    assert PATTERN in revoke["details"]["why"] and fitting != loose

    with pytest.raises(GrantDenied) as caught:
        ask("hotfix")
    assert f"needs a reason matching {PATTERN} (rule sre-payments)" in caught.value.message
    assert 'the reason "hotfix" was given' in caught.value.message
    assert PATTERN in audit_rows(broker, "grant.deny")[-1]["details"]["why"]
    assert ask("CHG-7")


def test_policy_explain_and_policy_test_take_the_reason(tmp_path: Path) -> None:
    import json

    import yaml
    from typer.testing import CliRunner

    from access.broker.admin.main import app as admin_app

    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(_with_pattern(), sort_keys=False))
    args = [
        "policy",
        "explain",
        "--user",
        "alice",
        "-g",
        "sre",
        "--service",
        "svc-payments",
        "--scope",
        "write",
    ]
    args += ["--policy", str(tmp_path / "policy.yaml"), "-o", "json"]
    without = CliRunner().invoke(admin_app, args)
    assert without.exit_code == 0, without.output
    assert json.loads(without.stdout)["outcome"] == "deny" and PATTERN in json.loads(without.stdout)["reason"]
    given = CliRunner().invoke(admin_app, [*args, "--reason", "INC-1"])
    assert json.loads(given.stdout)["outcome"] == "auto", given.output
    (tmp_path / "tests.yaml").write_text(
        "policy: policy.yaml\ncases:\n"
        "  - {user: alice, groups: [sre], service: svc-payments, scope: write, reason: INC-1, expect: auto}\n"
        "  - {user: alice, groups: [sre], service: svc-payments, scope: write, reason: oops, expect: deny}\n"
        "  - {user: alice, groups: [sre], service: svc-payments, scope: write, expect: auto}\n"
    )
    table = CliRunner().invoke(admin_app, ["policy", "test", str(tmp_path / "tests.yaml")])
    assert table.exit_code == 1, table.output  # only the third case, asked without a reason, fails
    assert "tests.yaml:5: cases[2]" in table.output and "tests.yaml:3:" not in table.output
