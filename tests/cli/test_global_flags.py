"""The CLI's manners (issue 9): global flags before or after the command, and "did you mean"
for a mistyped service, from the services the user may list."""

from __future__ import annotations

import json

import pytest
import typer

from access.cli import group
from access.cli.context import OutputOption, globals_of
from access.cli.render import Output
from access.shared.errors import ExitCode
from tests.cli.conftest import LiveBroker, invoke

SEEN: dict[str, object] = {}


def fake_grants(ctx: typer.Context, output: OutputOption = Output.text) -> None:
    """Stands in for a data command: records the options it ends up with."""
    options = globals_of(ctx)
    SEEN.update(broker=options.broker, ca_file=options.ca_file, insecure=options.insecure, output=output)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    monkeypatch.setitem(group.COMMANDS, "fake", group.LazyCommand(__name__, "fake_grants", "test"))
    SEEN.clear()
    return SEEN


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--broker", "https://a.test", "fake"], {}, {"broker": "https://a.test"}),
        (["fake", "--broker", "https://b.test"], {}, {"broker": "https://b.test"}),
        (
            ["--broker", "https://a.test", "fake", "--broker", "https://b.test"],
            {},
            {"broker": "https://b.test"},
        ),
        (["fake"], {"ACCESS_BROKER_URL": "https://e.test"}, {"broker": "https://e.test"}),
        (
            ["fake", "--broker", "https://b.test"],
            {"ACCESS_BROKER_URL": "https://e.test"},
            {"broker": "https://b.test"},
        ),
        (["fake", "--ca-file", "ca.pem", "--insecure"], {}, {"ca_file": "ca.pem", "insecure": True}),
        (["-o", "json", "fake"], {}, {"output": Output.json}),
        (["fake", "-o", "json"], {}, {"output": Output.json}),
        (["-o", "json", "fake", "-o", "text"], {}, {"output": Output.text}),
        (["fake"], {}, {"output": Output.text, "broker": None, "ca_file": None, "insecure": False}),
    ],
)
def test_global_options_work_before_and_after_the_command(
    recorder: dict[str, object], args: list[str], env: dict[str, str], expected: dict[str, object]
) -> None:
    result = invoke(*args, env=env)
    assert result.exit_code == 0, result.stderr
    assert {key: recorder[key] for key in expected} == expected


def test_root_output_for_a_command_without_output_is_a_usage_error() -> None:
    result = invoke("-o", "json", "logout")
    assert result.exit_code == ExitCode.USAGE
    assert "`access logout` has no -o/--output" in result.stderr


def test_output_before_the_command_is_the_same_json(signed_in: LiveBroker) -> None:
    signed_in.invoke("request", "svc-payments", "-s", "read", "-t", "10m", "-r", "INC-1")
    before, after = signed_in.invoke("-o", "json", "grants"), signed_in.invoke("grants", "-o", "json")
    assert before.exit_code == after.exit_code == 0
    assert json.loads(before.stdout) == json.loads(after.stdout) != []


@pytest.mark.parametrize(
    "args",
    [
        ["request", "svc-paymnets", "-s", "read"],
        ["exec", "svc-paymnets", "--", "true"],
        ["connect", "svc-paymnets"],
    ],
)
def test_a_mistyped_service_gets_did_you_mean(signed_in: LiveBroker, args: list[str]) -> None:
    result = signed_in.invoke(*args)
    assert result.exit_code == ExitCode.NOT_FOUND, result.stderr
    assert "hint: did you mean `svc-payments`? see `access services`" in result.stderr


def test_did_you_mean_never_names_a_service_you_cannot_list(signed_in: LiveBroker) -> None:
    # svc-cache is in the policy, but no rule lets alice request it: `access services` hides it.
    listed = [s["name"] for s in json.loads(signed_in.invoke("services", "-o", "json").stdout)]
    assert "svc-cache" not in listed
    result = signed_in.invoke("request", "svc-cahce", "-s", "read")
    assert result.exit_code == ExitCode.NOT_FOUND
    assert "svc-cache" not in result.stderr and "did you mean" not in result.stderr
