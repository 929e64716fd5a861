"""``policy explain`` and ``policy test``: a decision with the rule that made it, and a table of
expected decisions that fails naming each case (and its line) whose decision differs."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from access.broker.admin.main import app as admin_app
from access.broker.policy import (
    PolicyError,
    Subject,
    UnknownService,
    explain,
    load_cases,
    policy_from_text,
    run_cases,
)

# Lines: 1 services, 2 - name, ... 7 rules, 8 - sre-read, 14 - sre-write, 20 - no-mallory.
POLICY = """\
services:
  - name: svc-payments
    kind: postgres
    target: 127.0.0.1:5432
    scopes: [read, write]
    max_ttl: 1h
rules:
  - name: sre-read
    subjects: {groups: [sre]}
    services: [svc-payments]
    scopes: [read]
    max_ttl: 30m
    require: auto
  - name: sre-write
    subjects: {groups: [sre]}
    services: [svc-payments]
    scopes: [write]
    max_ttl: 15m
    require: approval
    approval: {reviewers: [{groups: [leads]}]}
  - name: no-mallory
    subjects: {users: [mallory]}
    services: [svc-payments]
    scopes: [read, write]
    require: deny
"""

CASES = """\
policy: policy.yaml
cases:
  - {user: alice, groups: [sre], service: svc-payments, scope: read, expect: auto, rule: sre-read}
  - {user: alice, groups: [sre], service: svc-payments, scope: write, expect: approval}
  - {user: bob, service: svc-payments, scope: read, expect: deny}
  - {user: mallory, groups: [sre], service: svc-payments, scope: read, expect: deny, rule: no-mallory}
  - {service_account: deploy-bot, groups: [sre], service: svc-payments, scope: read, ttl: 2h, expect: deny}
"""


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "tests.yaml").write_text(CASES)
    return tmp_path


ALICE = Subject("alice", "user", ("sre",))


@pytest.mark.parametrize(
    ("subject", "scope", "ttl", "outcome", "rule", "max_ttl"),
    [
        (ALICE, "read", None, "auto", "sre-read", timedelta(minutes=30)),
        (ALICE, "write", None, "approval", "sre-write", timedelta(minutes=15)),
        (ALICE, "read", timedelta(hours=2), "deny", "sre-read", timedelta(minutes=30)),
        (Subject("bob", "user"), "read", None, "deny", None, None),
        (Subject("mallory", "user", ("sre",)), "read", None, "deny", "no-mallory", None),
        # A service account is not the user of the same name.
        (
            Subject("mallory", "service_account", ("sre",)),
            "read",
            None,
            "auto",
            "sre-read",
            timedelta(minutes=30),
        ),
    ],
)
def test_explain_gives_the_outcome_the_rule_and_its_maximum(
    subject: Subject,
    scope: str,
    ttl: timedelta | None,
    outcome: str,
    rule: str | None,
    max_ttl: timedelta | None,
) -> None:
    found = explain(policy_from_text(POLICY, source="p"), subject, "svc-payments", scope, ttl)
    assert (found.outcome, found.decision.rule, found.decision.max_ttl) == (outcome, rule, max_ttl)


def test_explain_refuses_a_service_the_policy_does_not_have() -> None:
    with pytest.raises(UnknownService):
        explain(policy_from_text(POLICY, source="p"), ALICE, "svc-nope", "read")


def test_every_case_of_the_table_passes(files: Path) -> None:
    cases, lines = load_cases(files / "tests.yaml")
    assert lines == (3, 4, 5, 6, 7)
    assert run_cases(policy_from_text(POLICY, source="p"), cases, lines) == []


def test_each_mismatch_is_named_with_its_line(files: Path) -> None:
    text = (
        CASES.replace("scope: read, expect: auto, rule: sre-read", "scope: read, expect: approval")
        .replace("expect: deny, rule: no-mallory", "expect: deny, rule: sre-read")
        .replace("ttl: 2h, expect: deny", "ttl: 2h, expect: auto")
        + "  - {user: alice, groups: [sre], service: svc-typo, scope: read, expect: deny}\n"
    )
    (files / "tests.yaml").write_text(text)
    cases, lines = load_cases(files / "tests.yaml")
    found = run_cases(policy_from_text(POLICY, source="p"), cases, lines)
    assert [(m.index, m.line) for m in found] == [(0, 3), (3, 6), (4, 7), (5, 8)]
    assert found[0].message == (
        "alice read on svc-payments: expected approval, got auto"
        " (read on svc-payments allowed by rule sre-read)"
    )
    assert (
        found[1].message == "mallory read on svc-payments: expected rule sre-read, decided by rule no-mallory"
    )
    assert found[2].message.startswith(
        "deploy-bot read on svc-payments: expected auto, got deny (ttl 2h is over"
    )
    # A typo in a test does not pass as a denial.
    assert found[3].message == "alice read on svc-typo: expected deny, but no service named 'svc-typo'"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("expect: approval", "expect: maybe"), "tests.yaml:4: cases[1].expect: "),
        (("{user: bob, ", "{"), "tests.yaml:5: cases[2]: name the user or the service_account who asks"),
        (("ttl: 2h", "ttl: soon"), "tests.yaml:7: cases[4].ttl: bad duration 'soon'"),
        (("expect: deny}", "expect: deny, colour: red}"), "tests.yaml:5: cases[2]: unknown key 'colour'"),
    ],
)
def test_a_bad_table_names_the_file_the_line_and_the_field(
    files: Path, edit: tuple[str, str], message: str
) -> None:
    old, new = edit
    (files / "tests.yaml").write_text(CASES.replace(old, new, 1))
    with pytest.raises(PolicyError) as caught:
        load_cases(files / "tests.yaml")
    assert str(caught.value).startswith(f"{files}/{message}")


# ---------------------------------------------------------------- the commands


def test_policy_test_passes_with_exit_0(files: Path) -> None:
    result = CliRunner().invoke(admin_app, ["policy", "test", str(files / "tests.yaml")])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"5 case(s) passed against {files / 'policy.yaml'}\n"


def test_policy_test_exits_1_naming_each_mismatch(files: Path) -> None:
    (files / "tests.yaml").write_text(
        CASES.replace("scope: write, expect: approval", "scope: write, expect: auto")
    )
    result = CliRunner().invoke(admin_app, ["policy", "test", str(files / "tests.yaml")])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"FAIL {files / 'tests.yaml'}:4: cases[1]: alice write on svc-payments: expected auto, "
        "got approval (write on svc-payments needs approval by 1 of group:leads (rule sre-write))",
        f"1 of 5 case(s) failed against {files / 'policy.yaml'}",
    ]


def test_policy_test_takes_another_policy_and_refuses_a_bad_one(files: Path) -> None:
    (files / "other.yaml").write_text(POLICY.replace("max_ttl: 30m", "max_ttl: forever"))
    result = CliRunner().invoke(
        admin_app, ["policy", "test", str(files / "tests.yaml"), "--policy", str(files / "other.yaml")]
    )
    assert result.exit_code == 2
    assert f"{files / 'other.yaml'}:12: rules[0].max_ttl: bad duration 'forever'" in result.stderr


def test_policy_explain_prints_the_decision_and_its_rule(files: Path) -> None:
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
    nowhere = files / "no-data"  # no directory there: explain says so and creates none
    result = CliRunner().invoke(
        admin_app, [*args, "--policy", str(files / "policy.yaml"), "--data-dir", str(nowhere)]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "decision: approval",
        "rule:     sre-write",
        "max ttl:  15m",
        "why:      write on svc-payments needs approval by 1 of group:leads (rule sre-write)",
        "approval: 1 of group:leads, within 1h",
        f"  (reviewers not listed: no directory at {nowhere / 'broker.db'};"
        " give --data-dir or --database-url)",
    ]
    assert not nowhere.exists()
    result = CliRunner().invoke(
        admin_app,
        [*args, "-o", "json"],
        env={"ACCESS_BROKER_POLICY": str(files / "policy.yaml"), "ACCESS_BROKER_DATA_DIR": str(nowhere)},
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["outcome"] == "approval"
    assert json.loads(result.stdout)["max_ttl"] == "15m"


def test_policy_explain_for_someone_nothing_allows(files: Path) -> None:
    result = CliRunner().invoke(
        admin_app,
        ["policy", "explain", "--user", "bob", "--service", "svc-payments", "--scope", "read"],
        env={"ACCESS_BROKER_POLICY": str(files / "policy.yaml")},
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[:2] == ["decision: deny", "rule:     (none: denied by default)"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--service", "svc-payments", "--scope", "read"], "name who asks"),
        (
            ["--user", "a", "--service-account", "b", "--service", "svc-payments", "--scope", "read"],
            "name who asks",
        ),
        (["--user", "a", "--service", "svc-nope", "--scope", "read"], "no service named 'svc-nope'"),
        (["--user", "a", "--service", "svc-payments", "--scope", "read", "--ttl", "soon"], "bad duration"),
    ],
)
def test_policy_explain_refuses_bad_usage_with_exit_2(files: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(
        admin_app, ["policy", "explain", *args], env={"ACCESS_BROKER_POLICY": str(files / "policy.yaml")}
    )
    assert result.exit_code == 2
    assert message in result.stderr
