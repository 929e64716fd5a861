"""Loading a policy file: every problem names the file, the field path and the line, and only
the kinds the broker supports load (``policy check`` and broker start alike)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from access.broker.admin.main import app as admin_app
from access.broker.policy import PolicyError, Problem, load_policy, policy_from_data
from access.broker.runtime import Broker
from access.broker.settings import Settings

ACCESS_BROKER = str(Path(sys.executable).parent / "access-broker")
SUPPORTED = "supported kinds: postgres, mysql, redis, kubernetes, tcp"

# Line numbers matter below: 1 services, 2 - name, 3 kind, 4 target, 5 scopes, 6 max_ttl,
# 7 rules, 8 - name, 9 subjects, 10 services, 11 scopes, 12 max_ttl.
GOOD = """\
services:
  - name: svc-payments
    kind: postgres
    target: 127.0.0.1:5432
    scopes: [read]
    max_ttl: 1h
rules:
  - name: sre
    subjects: {groups: [sre]}
    services: [svc-payments]
    scopes: [read]
    max_ttl: 30m
"""
DUPLICATE = (
    "  - name: svc-payments\n    kind: tcp\n    target: 10.0.0.1:7000\n    scopes: [read]\n    max_ttl: 1h\n"
)

BAD_FILES = [
    pytest.param(
        ("    max_ttl: 1h\n", "    max_ttl: 1h\n    colour: blue\n"),
        "services[0]",
        "unknown key 'colour' (allowed: name, kind, target, description, labels, scopes, max_ttl, options,"
        " credentials, kubernetes)",
        7,
        id="unknown key",
    ),
    pytest.param(
        ("    scopes: [read]\n    max_ttl: 1h", "    scopes: read\n    max_ttl: 1h"),
        "services[0].scopes",
        "expected a list, got str",
        5,
        id="wrong type",
    ),
    pytest.param(
        ("    target: 127.0.0.1:5432", "    target: 5432"),
        "services[0].target",
        "expected a non-empty string, got int",
        4,
        id="wrong scalar type",
    ),
    pytest.param(
        ("max_ttl: 30m", "max_ttl: forever"),
        "rules[0].max_ttl",
        "bad duration 'forever': write it like 45s, 30m or 1h30m",
        12,
        id="bad duration",
    ),
    pytest.param(
        ("rules:\n", DUPLICATE + "rules:\n"),
        "services[1].name",
        "duplicate service name 'svc-payments'",
        7,
        id="duplicate service",
    ),
    pytest.param(
        ("    target: 127.0.0.1:5432\n", ""),
        "services[0]",
        "missing 'target'",
        2,
        id="missing key",
    ),
    pytest.param(
        ("services: [svc-payments]", "services: [svc-nope]"),
        "rules[0].services[0]",
        "no service named 'svc-nope' in services",
        10,
        id="rule names an unknown service",
    ),
    pytest.param(
        ("    max_ttl: 1h\n", "    max_ttl: 1h\n    options:\n      user: ro\n      password: hunter2\n"),
        "services[0].options.password",
        "do not put secrets in the policy; use password_file (a path) or password_env (a variable)",
        9,
        id="secret in options",
    ),
    pytest.param(
        ("kind: postgres", "kind: kubernetes"),
        "services[0].kubernetes",
        "a kubernetes service needs kubernetes: {server, ca_file, token_file, ...}",
        2,
        id="kubernetes without its block",
    ),
    pytest.param(
        ("kind: postgres", "kind: oracle"),
        "services[0].kind",
        f"unknown kind 'oracle' is not supported yet; {SUPPORTED}",
        3,
        id="unknown kind",
    ),
]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def test_the_good_file_loads(tmp_path: Path) -> None:
    policy = load_policy(_write(tmp_path, GOOD))
    assert list(policy.services) == ["svc-payments"]
    assert [rule.name for rule in policy.rules] == ["sre"]


@pytest.mark.parametrize(("edit", "where", "message", "line"), BAD_FILES)
def test_a_bad_file_names_the_file_the_field_and_the_line(
    tmp_path: Path, edit: tuple[str, str], where: str, message: str, line: int
) -> None:
    old, new = edit
    assert GOOD.count(old) == 1
    path = _write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(caught.value) == f"{path}:{line}: {where}: {message}"
    assert caught.value.problems == (Problem(where, message, line),)


def test_every_problem_is_listed_with_its_line(tmp_path: Path) -> None:
    text = GOOD.replace("kind: postgres", "kind: oracle").replace("max_ttl: 30m", "max_ttl: 0s")
    path = _write(tmp_path, text)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(caught.value).splitlines() == [
        f"{path}:3: services[0].kind: unknown kind 'oracle' is not supported yet; {SUPPORTED}",
        f"{path}:12: rules[0].max_ttl: bad duration '0s': it must be longer than zero",
    ]


def test_a_long_list_of_problems_is_cut_short(tmp_path: Path) -> None:
    scopes = ", ".join(f"BAD{i}" for i in range(25))
    path = _write(
        tmp_path,
        GOOD.replace("    scopes: [read]\n    max_ttl: 1h", f"    scopes: [{scopes}]\n    max_ttl: 1h"),
    )
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    lines = str(caught.value).splitlines()
    assert len(caught.value.problems) == 25
    assert len(lines) == 21
    assert lines[0].startswith(f"{path}:5: services[0].scopes[0]: bad name 'BAD0'")
    assert lines[-1] == f"{path}: and 5 more problem(s)"


def test_lines_in_flow_style(tmp_path: Path) -> None:
    text = (
        "services:\n"
        "  - {name: svc-a, kind: tcp, target: 'a:1', scopes: [read], max_ttl: 1h}\n"
        "  - {name: svc-b, kind: tcp, target: 'b:1', scopes: [read], max_ttl: 1h, colour: x}\n"
    )
    with pytest.raises(PolicyError, match=r":3: services\[1\]: unknown key 'colour' "):
        load_policy(_write(tmp_path, text))


def test_from_dict_names_the_field_without_a_file_or_line() -> None:
    data = {
        "services": [{"name": "x", "kind": "oracle", "target": "k:443", "scopes": ["read"], "max_ttl": "1h"}]
    }
    with pytest.raises(PolicyError) as caught:
        policy_from_data(data)
    assert str(caught.value) == f"services[0].kind: unknown kind 'oracle' is not supported yet; {SUPPORTED}"


# ---------------------------------------------------------------- unsupported kinds, where they are refused


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("oracle", "unknown kind 'oracle' is not supported yet"),
        ("Postgres", "unknown kind 'Postgres' is not supported yet"),
    ],
)
def test_policy_check_refuses_an_unsupported_kind(tmp_path: Path, kind: str, message: str) -> None:
    path = _write(tmp_path, GOOD.replace("kind: postgres", f"kind: {kind}"))
    result = CliRunner().invoke(admin_app, ["policy", "check", str(path)])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert f"error: {path}:3: services[0].kind: {message}; {SUPPORTED}" in result.stderr


def test_the_broker_does_not_start_with_an_unsupported_kind(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("kind: postgres", "kind: oracle"))
    settings = Settings(
        data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'b.db'}", policy=path
    )
    with pytest.raises(PolicyError, match="unknown kind 'oracle' is not supported yet"):
        Broker.from_settings(settings)


def test_access_broker_serve_refuses_an_unsupported_kind(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("kind: postgres", "kind: oracle"))
    result = subprocess.run(
        [ACCESS_BROKER, "serve", "--policy", str(path), "--host", "127.0.0.1", "--port", "0"],
        env={**os.environ, "ACCESS_BROKER_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert (
        f"error: {path}:3: services[0].kind: unknown kind 'oracle' is not supported yet; {SUPPORTED}"
        in result.stderr
    )
    assert "listening" not in result.stderr


def test_a_yaml_syntax_error_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("    scopes: [read]\n    max_ttl: 30m", "    scopes: [read\n"))
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(caught.value).startswith(f"{path}:13: not valid YAML: ")
    assert caught.value.problems == ()


def test_a_problem_without_a_file_keeps_its_line_in_words() -> None:
    problem = Problem("rules[0].max_ttl", "bad duration 'x'", 12)
    assert problem.located(None) == "line 12: rules[0].max_ttl: bad duration 'x'"
    assert problem.located("p.yaml") == "p.yaml:12: rules[0].max_ttl: bad duration 'x'"
    assert Problem("policy", "expected a mapping, got list").located("p.yaml") == (
        "p.yaml: policy: expected a mapping, got list"
    )
