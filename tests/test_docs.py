"""Docs that cannot drift: every broker setting is documented, the CLI reference matches --help."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

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
