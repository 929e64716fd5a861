"""The root command: lazy command loading, `exec -- CMD` parsing, --help, --version, cheap imports."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Annotated

import pytest
import typer
from typer.core import TyperCommand

from access.cli import group
from access.cli.context import Globals, globals_of
from access.cli.render import Output
from access.shared.errors import ExitCode
from tests.cli.conftest import invoke

SEEN: dict[str, object] = {}


def fake_exec(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument()],
    command: Annotated[list[str], typer.Argument()],
    scope: Annotated[str, typer.Option("--scope", "-s")] = "read",
) -> None:
    """Stands in for the tunnel's exec_command: records what it was given."""
    SEEN.update(service=service, command=command, scope=scope, broker=globals_of(ctx).broker)


@pytest.fixture
def exec_recorder(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    spec = group.LazyCommand(__name__, "fake_exec", "test", group.EXEC_CONTEXT)
    monkeypatch.setitem(group.COMMANDS, "exec", spec)
    SEEN.clear()
    return SEEN


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["--", "psql", "-c", "select 1"], ["psql", "-c", "select 1"]),
        (["--", "redis-cli", "--scope", "x", "--", "ping"], ["redis-cli", "--scope", "x", "--", "ping"]),
        (["--", "sh", "-c", "echo $PGHOST"], ["sh", "-c", "echo $PGHOST"]),
        (["--", "psql", "-h", "db.internal"], ["psql", "-h", "db.internal"]),  # -h is psql's, not help
    ],
)
def test_exec_passes_everything_after_double_dash_to_the_command(
    exec_recorder: dict[str, object], args: list[str], command: list[str]
) -> None:
    result = invoke("--broker", "https://b.test", "exec", "svc-payments", "--scope", "write", *args)
    assert result.exit_code == 0, result.stderr
    assert exec_recorder == {
        "service": "svc-payments",
        "command": command,
        "scope": "write",
        "broker": "https://b.test",
    }


def test_a_missing_command_module_fails_clearly_and_the_rest_still_works(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(
        group.COMMANDS, "connect", group.LazyCommand("access.cli.commands.nope", "connect", "x")
    )
    result = invoke("connect", "svc", "--port", "5")
    assert result.exit_code == ExitCode.ERROR
    assert "`access connect` is not available" in result.stderr and "hint: " in result.stderr
    assert invoke("--help").exit_code == 0


def test_help_lists_every_command_and_the_exit_codes() -> None:
    result = invoke("--help", env={"NO_COLOR": "1", "COLUMNS": "120"})
    assert result.exit_code == 0
    for name in group.COMMANDS:
        assert name in result.stdout
    for code in ExitCode:
        assert f"{code.value} " in result.stdout
    assert "ACCESS_TOKEN" in result.stdout


@pytest.mark.parametrize("name", sorted(group.COMMANDS))
def test_every_command_has_help(name: str) -> None:
    result = invoke(name, "--help", env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.stderr
    assert f"access {name}" in result.stdout


# Commands whose only output is messages on stderr (or the child's own output, for exec; a script,
# for completion; a kubeconfig, JSON already, for kubeconfig).
NO_DATA = {"login", "logout", "exec", "demo", "completion", "kubeconfig"}


@pytest.mark.parametrize("name", sorted(set(group.COMMANDS) - NO_DATA))
def test_every_command_that_prints_data_has_json_output(name: str) -> None:
    command = group.load_command(name, group.COMMANDS[name])
    [output] = [p for p in command.params if p.name == "output"]
    assert set(output.opts) == {"-o", "--output"}
    assert output.type_descriptor.annotation is Output and output.default == Output.text


def test_version_says_whether_the_tunnel_is_compiled() -> None:
    from access.shared import mux

    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.startswith("access ")
    compiled = not mux.__file__.endswith(".py")
    assert ("(compiled tunnel)" if compiled else "(pure-Python tunnel)") in result.stdout


def test_globals_default_when_a_command_runs_alone() -> None:
    ctx = typer.Context(TyperCommand(name="alone"))
    assert globals_of(ctx) == Globals()


def test_startup_imports_nothing_heavy() -> None:
    """`access` must start fast: importing the entry point loads no HTTP, rich, keyring or pydantic."""
    code = (
        "import sys, json, access.cli.main; "
        "print(json.dumps(sorted(m for m in ('httpx', 'rich', 'keyring', 'pydantic', 'access.cli.client') "
        "if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(out.stdout) == []
