"""Who could approve: a rule's clauses, and the directory's users who are their reviewers now
(never the requester, never a service account, never a disabled user), in ``policy explain``;
and ``policy test`` cases that expect reviewers."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from access.broker.admin.main import app as admin_app
from access.broker.policy import PolicyError, Subject, candidates, load_cases, policy_from_text, run_cases
from access.broker.runtime import Broker
from access.broker.store import principals

POLICY = """\
services:
  - name: svc-payments
    kind: postgres
    target: 127.0.0.1:5432
    labels: {team: payments}
    scopes: [read, write]
    max_ttl: 1h
roles:
  - name: payments-oncall
    members: {groups: [oncall]}
    allow:
      - labels: {team: payments}
        scopes: [write]
        max_ttl: 30m
        require: approval
        approval:
          reviewers: [{groups: [leads], count: 2}, {groups: [security]}]
          wait: 20m
"""
WRITE = ["--service", "svc-payments", "--scope", "write"]


def _people(*specs: tuple[str, str, tuple[str, ...]]) -> list[Subject]:
    return [Subject(name, kind, groups) for name, kind, groups in specs]


def test_candidates_leave_out_the_requester_and_service_accounts_and_count_each_once() -> None:
    rule = policy_from_text(POLICY, source="p").rules[0].approval
    assert rule is not None
    alice = Subject("alice", "user", ("oncall", "leads"))
    directory = _people(
        ("alice", "user", ("oncall", "leads")),
        ("bob", "user", ("leads",)),
        ("carol", "user", ("leads", "security")),
        ("ci-bot", "service_account", ("leads", "security")),
    )
    found = candidates(rule, directory, alice)
    assert found.people == (("bob", "carol"), ("carol",))
    # carol cannot be one of the two leads and the security reviewer at once.
    assert not found.enough
    found = candidates(rule, [*directory, Subject("dave", "user", ("security",))], alice)
    assert found.people == (("bob", "carol"), ("carol", "dave"))
    assert found.enough


def _directory(broker: Broker, *users: tuple[str, tuple[str, ...]], disabled: tuple[str, ...] = ()) -> Path:
    """``users`` in the broker's directory (straight into the store: no password hashing, which
    is slow and beside the point here); returns its data directory, for ``--data-dir``."""
    with broker.transaction() as conn:
        for name, groups in users:
            principals.insert(
                conn,
                principal_id=str(uuid.uuid4()),
                name=name,
                kind=principals.USER,
                groups=groups,
                created_at=broker.clock.now(),
            )
            if name in disabled:
                record = principals.by_name(conn, name)
                assert record is not None
                principals.disable(conn, record.id, broker.clock.now())
    return Path(broker.settings.data_dir)


@pytest.fixture
def directory(make_broker: Callable[..., Broker], tmp_path: Path) -> Path:
    """A broker's data directory (SQLite) with a few users, and the policy beside it."""
    (tmp_path / "policy.yaml").write_text(POLICY)
    return _directory(
        make_broker(),
        ("alice", ("oncall", "leads")),
        ("bob", ("leads",)),
        ("carol", ("leads", "security")),
        ("dave", ("security",)),
        ("erin", ("leads",)),
        disabled=("erin",),
    )


def test_policy_explain_names_who_could_approve_from_the_directory(directory: Path, tmp_path: Path) -> None:
    args = ["policy", "explain", "--user", "alice", "-g", "oncall", *WRITE, "--data-dir", str(directory)]
    result = CliRunner().invoke(admin_app, [*args, "--policy", str(tmp_path / "policy.yaml")])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "decision: approval",
        "rule:     payments-oncall[0]",
        "max ttl:  30m",
        "why:      write on svc-payments needs approval by 2 of group:leads and 1 of group:security"
        " (rule payments-oncall[0])",
        "approval: 2 of group:leads and 1 of group:security, within 20m",
        "  2 of group:leads: bob, carol",
        "  1 of group:security: carol, dave",
    ]
    result = CliRunner().invoke(admin_app, [*args, "--policy", str(tmp_path / "policy.yaml"), "-o", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["approval"] == {
        "reviewers": "2 of group:leads and 1 of group:security",
        "wait": "20m",
        "clauses": [
            {"count": 2, "groups": ["leads"], "users": [], "candidates": ["bob", "carol"]},
            {"count": 1, "groups": ["security"], "users": [], "candidates": ["carol", "dave"]},
        ],
        "approvable": True,
    }
    # bob asks: alice is a lead then, and the leads are alice and carol; carol cannot also be
    # security, and dave is security: still approvable.
    bob = ["policy", "explain", "--user", "bob", "-g", "oncall", *WRITE, "--data-dir", str(directory)]
    result = CliRunner().invoke(admin_app, [*bob, "--policy", str(tmp_path / "policy.yaml")])
    assert "  2 of group:leads: alice, carol" in result.stdout.splitlines()


def test_policy_explain_says_when_too_few_could_approve(
    make_broker: Callable[..., Broker], tmp_path: Path
) -> None:
    data_dir = _directory(make_broker(), ("alice", ("oncall", "leads")), ("carol", ("leads", "security")))
    (tmp_path / "policy.yaml").write_text(POLICY)
    args = ["policy", "explain", "--user", "alice", "-g", "oncall", *WRITE]
    result = CliRunner().invoke(
        admin_app, [*args, "--data-dir", str(data_dir), "--policy", str(tmp_path / "policy.yaml")]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-3:] == [
        "  2 of group:leads: carol",
        "  1 of group:security: carol",
        "  cannot be approved now: too few reviewers in the directory (alice, who asks, never counts)",
    ]


# ---------------------------------------------------------------- policy test: reviewers


CASES = """\
policy: policy.yaml
cases:
  - {user: alice, groups: [oncall], service: svc-payments, scope: write, expect: approval,
     reviewers: "1 of group:security and 2 of group:leads"}
  - {user: alice, groups: [oncall], service: svc-payments, scope: write, expect: approval,
     reviewers: "1 of group:leads"}
  - {user: bob, service: svc-payments, scope: write, expect: deny, reviewers: "1 of group:leads"}
"""


def test_policy_test_compares_reviewers_clause_by_clause(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "tests.yaml").write_text(CASES)
    cases, lines = load_cases(tmp_path / "tests.yaml")
    mismatches = run_cases(policy_from_text(POLICY, source="p"), cases, lines)
    assert [(m.index, m.line, m.message) for m in mismatches] == [
        (
            1,
            5,
            "alice write on svc-payments: expected reviewers 1 of group:leads,"
            " got 2 of group:leads and 1 of group:security",
        ),
        (2, 7, "bob write on svc-payments: expected reviewers 1 of group:leads, got none (deny)"),
    ]


def test_a_case_with_unreadable_reviewers_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tests.yaml"
    path.write_text(CASES.replace('"1 of group:leads"}', '"leads, please"}', 1))
    with pytest.raises(PolicyError) as caught:
        load_cases(path)
    assert str(caught.value) == (
        f"{path}:6: cases[1].reviewers: write reviewers like"
        " '2 of group:leads and 1 of group:security, user:carol', got 'leads, please'"
    )
