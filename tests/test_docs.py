"""Docs that cannot drift: every broker setting is documented, the CLI reference matches --help."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from access.broker.settings import Settings

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _load_generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_broker_setting_is_documented() -> None:
    text = (DOCS / "broker.md").read_text()
    missing = [name for name in Settings.model_fields if f"ACCESS_BROKER_{name.upper()}" not in text]
    assert not missing, f"document these settings in docs/broker.md: {missing}"


def test_cli_reference_is_current() -> None:
    generated = _load_generator().render()
    current = (DOCS / "cli-reference.md").read_text()
    assert current == generated, "docs/cli-reference.md is stale: run `python docs/generate.py` (nox -s docs)"


def test_every_command_is_in_the_reference() -> None:
    text = (DOCS / "cli-reference.md").read_text()
    for command in (
        "login",
        "logout",
        "whoami",
        "services",
        "request",
        "grants",
        "revoke",
        "audit",
        "connect",
        "exec",
        "env",
        "demo",
        "completion",
    ):
        assert f"## `access {command}`" in text, command
    for command in ("serve", "users", "service-accounts", "audit", "policy", "completion"):
        assert f"## `access-broker {command}`" in text, command


def test_exit_codes_are_documented() -> None:
    from access.shared.errors import ExitCode

    text = (DOCS / "cli.md").read_text()
    for code in ExitCode:
        assert f"| {code.value} |" in text, f"exit code {code.value} ({code.name}) is not in docs/cli.md"


def test_security_attack_cases_name_tests_that_exist() -> None:
    """docs/security.md lists the attack cases the suite runs: every file and test it names exists."""
    root = DOCS.parent
    text = (DOCS / "security.md").read_text()
    table = text.split("## Attack cases the suite runs", 1)[1].split("## Reporting", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`tests/" in line]
    assert len(rows) >= 15, "the attack-case table lost its rows"
    for row in rows:
        for path, names in re.findall(r"`(tests/[\w/]+\.py)`(?: \(([^)]*)\))?", row):
            source = (root / path).read_text()
            for name in re.findall(r"`(test_\w+)`", names):
                assert f"def {name}(" in source, f"docs/security.md names {name} in {path}: not there"


def _yaml_after(marker: str) -> str:
    text = (DOCS / "policy.md").read_text()
    assert marker in text, f"docs/policy.md lost its marker {marker!r}"
    block = text.split(marker, 1)[1].split("```yaml\n", 1)[1]
    return block.split("\n```", 1)[0] + "\n"


def test_the_complete_policy_example_loads_and_passes_its_tests(tmp_path: Path) -> None:
    """docs/policy.md's complete example is a valid policy (the broker's own loader, no warning)
    that uses every key of the format, and its table of expected decisions passes against it."""
    from access.broker.policy import load_cases, load_policy, run_cases
    from access.broker.policy.model import (
        Allow,
        ApprovalRule,
        AuditConfig,
        PolicyFile,
        ReasonRule,
        ReviewerClause,
        Role,
        Rule,
        ServiceConfig,
        Subjects,
    )

    example = _yaml_after("<!-- the complete example: tests/test_docs.py loads it -->")
    (tmp_path / "policy.yaml").write_text(example)
    (tmp_path / "policy-tests.yaml").write_text(
        _yaml_after("<!-- the example's tests: tests/test_docs.py runs them against the complete example -->")
    )
    policy = load_policy(tmp_path / "policy.yaml")
    assert policy.warnings == ()
    assert policy.roles, "the complete example has roles"
    cases, lines = load_cases(tmp_path / "policy-tests.yaml")
    assert run_cases(policy, cases, lines) == []
    models = (
        PolicyFile,
        ServiceConfig,
        Rule,
        Allow,
        Role,
        Subjects,
        ReasonRule,
        ApprovalRule,
        ReviewerClause,
    )
    for model in (*models, AuditConfig):
        for key in model.model_fields:
            assert re.search(rf"^\s*(- )?{key}:|[{{,]\s*{key}:", example, re.MULTILINE), (
                f"the complete example in docs/policy.md has no {model.__name__} key {key!r}"
            )


def test_the_pipelines_guide_shows_ci_issuers_the_broker_accepts() -> None:
    """docs/pipelines.md's ACCESS_BROKER_CI_ISSUERS example passes the checks made at start."""
    import json

    text = (DOCS / "pipelines.md").read_text()
    example = text.split("ACCESS_BROKER_CI_ISSUERS='", 1)[1].split("'\n", 1)[0]
    issuers = Settings(ci_issuers=json.loads(example)).ci_issuers  # type: ignore[arg-type]
    assert [entry.issuer for entry in issuers] == [
        "https://token.actions.githubusercontent.com",
        "https://gitlab.com",
    ]


def test_the_upstream_guide_shows_a_provider_the_broker_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/upstream.md's ACCESS_BROKER_OIDC_PROVIDERS example passes the checks made at start
    (its secret file swapped for a variable: the file is the reader's)."""
    import json

    text = (DOCS / "upstream.md").read_text()
    (example,) = json.loads(text.split("ACCESS_BROKER_OIDC_PROVIDERS='", 1)[1].split("'\n", 1)[0])
    monkeypatch.setenv("OKTA_SECRET", "x" * 32)
    example = {**example, "client_secret_file": None, "client_secret_env": "OKTA_SECRET"}
    (provider,) = Settings(oidc_providers=[example]).oidc_providers
    fields = set(re.findall(r"^\| `(\w+)`", text.split("## Settings", 1)[1], re.M))
    assert fields | {"client_secret_file", "client_secret_env"} >= set(type(provider).model_fields)
