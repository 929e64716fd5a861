"""What `access` imports before it answers: the start-up that benchmarks/cli.py measures.

Each test runs the console script's entry point in a new interpreter and lists what it loaded,
so a module-level import that brings typer back to ``--version``, or keyring or httpx's own
command-line tool back to an API command, fails here rather than only in a benchmark.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from access.cli.tokens import installed_backends, keyring_may_work
from access.cli.version import DISTRIBUTION, installed_version, version_line
from access.shared.errors import ExitCode
from tests.cli.conftest import invoke

HEAVY = ("typer", "rich", "httpx", "pydantic", "keyring", "click", "pygments", "asyncio", "ssl")


def _run(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """``access ARGS`` through the entry point; which of HEAVY (and access's modules) it imported."""
    code = (
        "import atexit, json, sys\n"
        "wanted = json.loads(sys.argv[1])\n"
        "def report():\n"
        "    seen = [m for m in sys.modules if m.split('.')[0] in wanted]\n"
        "    sys.stderr.write('\\nMODULES ' + json.dumps(seen) + '\\n')\n"
        "atexit.register(report)\n"
        "sys.argv = ['access', *sys.argv[2:]]\n"
        "from access.cli.main import main\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps([*HEAVY, "access"]), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    report = done.stderr.rsplit("\nMODULES ", 1)[1]
    return done, set(json.loads(report))


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCESS_", "PYTHON_KEYRING"))}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "config"), NO_COLOR="1", **extra)
    return env


def test_version_answers_before_typer_or_the_tunnel_is_imported(tmp_path: Path) -> None:
    done, modules = _run(["--version"], _env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout == version_line() + "\n"
    assert "access.cli.version" in modules  # the report sees what it looks for
    assert {m.split(".")[0] for m in modules} == {"access"}, sorted(modules)
    assert "access.shared.mux" not in modules and "access.cli.app" not in modules


def test_version_prints_the_same_line_on_the_fast_path_and_through_typer(tmp_path: Path) -> None:
    done, _ = _run(["--version"], _env(tmp_path))
    assert invoke("--version").stdout == done.stdout
    # Anything beside --version goes through typer: the eager option answers there.
    both, modules = _run(["--version", "--broker", "https://x.test"], _env(tmp_path))
    assert both.stdout == done.stdout and "typer" in modules


def test_the_version_is_the_one_importlib_metadata_reads() -> None:
    assert installed_version() == importlib.metadata.version(DISTRIBUTION)


def test_an_api_command_loads_neither_keyring_nor_httpx_command_line_tool(tmp_path: Path) -> None:
    # Not signed in: the command stops after it has looked for tokens, with its client loaded.
    env = _env(
        tmp_path,
        ACCESS_BROKER_URL="https://127.0.0.1:9",
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
    )
    done, modules = _run(["grants", "-o", "json"], env)
    assert done.returncode == ExitCode.NEEDS_LOGIN, done.stderr
    assert "error: not signed in to https://127.0.0.1:9" in done.stderr
    assert {"access.cli.client", "httpx", "typer"} <= modules  # the report sees what it looks for
    for absent in ("keyring", "click", "pygments", "rich"):  # httpx._main is there: as None
        assert absent not in modules, absent
    assert "typer._adapters" not in modules  # typer's pydantic coercion of option values
    assert "pydantic" not in modules  # the client imports it when it parses an answer (not -o json)


def test_option_values_are_coerced_as_typer_would(tmp_path: Path) -> None:
    # A choice in another case is typer's matching (the command got as far as the tokens)...
    env = _env(tmp_path, ACCESS_BROKER_URL="https://127.0.0.1:9")
    done, modules = _run(
        ["grants", "-o", "JSON"], {**env, "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
    )
    assert done.returncode == ExitCode.NEEDS_LOGIN, done.stderr
    assert "typer._adapters" not in modules
    # ... and what is none of the choices, or no number, gets typer's own words.
    refused = invoke("grants", "-o", "yaml")
    words = " ".join(refused.stderr.replace("│", " ").split())  # the error box wraps its lines
    assert refused.exit_code == ExitCode.USAGE and "'yaml' is not one of 'text', 'json'" in words
    assert "should be a valid integer" in " ".join(
        invoke("audit", "-n", "x").stderr.replace("│", " ").split()
    )


# -- keyring: asked only where it may answer -----------------------------------------------------

KEYRINGS_OWN = ["keyring.backends.SecretService", "keyring.backends.kwallet", "keyring.backends.macOS"]


def _may_work(environ: dict[str, str], platform: str = "linux", backends: list[str] = KEYRINGS_OWN) -> bool:
    return keyring_may_work(environ, platform, lambda: backends)


@pytest.mark.parametrize(
    ("chosen", "expected"),
    [
        ("keyring.backends.fail.Keyring", False),
        ("keyring.backends.null.Keyring", False),
        ("keyrings.alt.file.PlaintextKeyring", True),
        ("", True),  # keyring's to judge (it fails, and the file is used), as before
    ],
)
def test_python_keyring_backend_decides(tmp_path: Path, chosen: str, expected: bool) -> None:
    assert _may_work({"XDG_CONFIG_HOME": str(tmp_path), "PYTHON_KEYRING_BACKEND": chosen}) is expected
    assert _may_work({"PYTHON_KEYRING_BACKEND": chosen}, "darwin") is expected


def test_a_headless_linux_without_other_backends_needs_no_keyring(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir()
    environ = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_RUNTIME_DIR": str(runtime)}
    assert _may_work(environ) is False
    assert _may_work(environ, "freebsd14") is False
    for platform in ("darwin", "win32"):
        assert _may_work(environ, platform) is True


@pytest.mark.parametrize("variable", ["DBUS_SESSION_BUS_ADDRESS", "DISPLAY", "WAYLAND_DISPLAY"])
def test_a_reachable_session_bus_asks_keyring(tmp_path: Path, variable: str) -> None:
    environ = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert _may_work({**environ, variable: "unix:path=/run/user/1000/bus"}) is True
    assert _may_work({**environ, variable: ""}) is False


def test_a_bus_socket_in_the_runtime_folder_asks_keyring(tmp_path: Path) -> None:
    (tmp_path / "bus").touch()
    assert _may_work({"XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_RUNTIME_DIR": str(tmp_path)}) is True


def test_keyring_config_or_another_package_backends_ask_keyring(tmp_path: Path) -> None:
    environ = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert _may_work(environ, backends=[*KEYRINGS_OWN, "keyrings.alt.file"]) is True
    (tmp_path / "python_keyring").mkdir()
    (tmp_path / "python_keyring" / "keyringrc.cfg").write_text("[backend]\n")
    assert _may_work(environ) is True


def test_installed_backends_lists_keyrings_own() -> None:
    # The scan that the decision above relies on sees the backends keyring itself declares.
    assert "keyring.backends.SecretService" in installed_backends()
