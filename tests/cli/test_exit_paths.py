"""Issue 9's exit paths against the real broker in-process: `access exec` of a program that cannot
run asks for no grant (127/126), `access connect` on a busy port asks for none, `access revoke` of
an ended grant succeeds, and the CLI's private folder for secret files.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from access.cli import config
from access.cli.client import BrokerClient
from access.cli.errors import UsageError
from access.cli.tokens import FileStore
from access.shared.errors import ExitCode
from tests.cli.conftest import BROKER, BrokerApp, LiveBroker
from tests.cli.test_commands import POLICY


@pytest.fixture
def live(broker_app: BrokerApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LiveBroker:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    made = broker_app(policy=POLICY, users={"alice": ["sre"], "bob": ["ci"]})
    made.sign_in("alice")
    return made


def _asked_for_grants(live: LiveBroker) -> int:
    """Requests that asked for a grant or looked for one to reuse."""
    return len(live.sent("POST", "/v1/grants")) + len(live.sent("GET", "/v1/grants"))


# -- exec: the program first --------------------------------------------------------------------


@pytest.mark.parametrize(
    "program", ["/nonexistent", "./no-such-program", "no-such-program-anywhere"], ids=["abs", "rel", "path"]
)
def test_exec_of_a_missing_program_exits_127_before_any_grant(
    live: LiveBroker, program: str, tmp_path: Path
) -> None:
    result = live.invoke("exec", "svc-payments", "--", program, env={"PATH": str(tmp_path)})
    assert result.exit_code == ExitCode.COMMAND_NOT_FOUND == 127, result.stderr
    assert program in result.stderr and "no such program" in result.stderr
    assert _asked_for_grants(live) == 0
    assert live.invoke("grants", "--all", "-o", "json").stdout.strip() == "[]"


def test_exec_of_a_program_that_cannot_run_exits_126_before_any_grant(
    live: LiveBroker, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    plain = bin_dir / "notes"
    plain.write_text("#!/bin/sh\necho hi\n")
    plain.chmod(0o644)
    (bin_dir / "folder").mkdir()
    for args, env in (
        ([str(plain)], None),  # an explicit path, not executable
        (["notes"], {"PATH": f"{bin_dir / 'folder'}{os.pathsep}{bin_dir}"}),  # on PATH, not executable
        ([str(bin_dir / "folder")], None),  # a folder
    ):
        result = live.invoke("exec", "svc-payments", "--", *args, env=env)
        assert result.exit_code == ExitCode.NOT_EXECUTABLE == 126, (args, result.stderr)
        assert args[0] in result.stderr
    # A folder of that name on PATH is passed over, as shells do: not found.
    (bin_dir / "folder" / "tool").mkdir()
    result = live.invoke("exec", "svc-payments", "--", "tool", env={"PATH": str(bin_dir / "folder")})
    assert result.exit_code == ExitCode.COMMAND_NOT_FOUND, result.stderr
    assert _asked_for_grants(live) == 0


def test_exec_finds_a_program_on_the_childs_path(live: LiveBroker, tmp_path: Path) -> None:
    """The check uses the PATH the program gets: an executable there passes it (and gets a grant)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "tool"
    tool.write_text("#!/bin/sh\nexit 3\n")
    tool.chmod(0o755)
    result = live.invoke(
        "exec", "svc-payments", "--", "tool", env={"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin"}
    )
    # The in-process transport cannot open a tunnel, but the grant was asked for: the check passed.
    assert result.exit_code not in (126, 127), result.stderr
    assert len(live.sent("POST", "/v1/grants")) == 1


def test_exec_help_documents_127_and_126(live: LiveBroker) -> None:
    text = live.invoke("exec", "--help", env={"COLUMNS": "200", "NO_COLOR": "1"}).stdout
    assert "127" in text and "126" in text


# -- connect: the port first --------------------------------------------------------------------


def test_connect_on_a_busy_port_asks_for_no_grant(live: LiveBroker) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = live.invoke("connect", "svc-payments", "--port", str(port))
    assert result.exit_code == ExitCode.USAGE, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert _asked_for_grants(live) == 0


# -- revoke: an ended grant is fine ---------------------------------------------------------------


def _request(live: LiveBroker, ttl: str = "5m") -> dict[str, Any]:
    result = live.invoke("request", "svc-payments", "--scope", "read", "--ttl", ttl, "-o", "json")
    assert result.exit_code == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _revokes_audited(live: LiveBroker, gid: str) -> int:
    entries = json.loads(live.invoke("audit", "--limit", "100", "-o", "json").stdout)
    return sum(1 for e in entries if e["action"] == "grant.revoke" and e["target"].endswith(gid))


def test_revoke_of_an_already_revoked_grant_exits_0_and_says_so(live: LiveBroker) -> None:
    gid = _request(live)["id"]
    assert live.invoke("revoke", gid).exit_code == 0
    again = live.invoke("revoke", gid)
    assert again.exit_code == 0, again.stderr
    assert f"Grant {gid} had already ended (revoked)" in again.stderr
    assert _revokes_audited(live, gid) == 1  # nothing new audited
    as_json = live.invoke("revoke", gid, "-o", "json")
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["state"] == "revoked"


def test_revoke_of_an_expired_grant_exits_0(live: LiveBroker) -> None:
    gid = _request(live, ttl="1m")["id"]
    live.clock.advance(timedelta(minutes=2))
    result = live.invoke("revoke", gid)
    assert result.exit_code == 0, result.stderr
    assert f"Grant {gid} had already ended (expired)" in result.stderr
    assert _revokes_audited(live, gid) == 0


def test_revoke_still_says_not_found_for_others_and_unknown_ids(live: LiveBroker) -> None:
    gid = _request(live)["id"]
    assert live.invoke("revoke", gid).exit_code == 0
    assert live.invoke("revoke", "g-doesnotexist").exit_code == ExitCode.NOT_FOUND
    live.sign_in("bob")  # not an audit reader: alice's grant is not his to see, ended or not
    assert live.invoke("revoke", gid).exit_code == ExitCode.NOT_FOUND


def test_broker_answers_an_ended_grants_revoke_with_the_grant_as_it_is(live: LiveBroker) -> None:
    """The broker side is idempotent too (a race between the CLI's look and its revoke)."""
    gid = _request(live)["id"]
    assert live.invoke("revoke", gid).exit_code == 0
    client = BrokerClient(
        BROKER, transport=live.transport, token_store=FileStore(live.config_dir / "tokens.json"), now=live.now
    )
    assert client.revoke(gid).model_dump(mode="json") == live.answered("POST", f"/v1/grants/{gid}/revoke")[0]
    assert _revokes_audited(live, gid) == 1


# -- the private folder ---------------------------------------------------------------------------


@pytest.fixture
def no_runtime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    yield tmp_path / "state" / "access"


def test_runtime_dir_is_private_under_xdg_runtime_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    path = config.runtime_dir()
    assert path == runtime / "access"
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_runtime_dir_falls_back_to_the_state_dir_not_tmp(
    no_runtime: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert config.runtime_dir() == no_runtime
    assert stat.S_IMODE(no_runtime.stat().st_mode) == 0o700
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(no_runtime.parent / "gone"))  # not there: not used
    assert config.runtime_dir() == no_runtime


def test_runtime_dir_with_loose_permissions_is_refused(live: LiveBroker, tmp_path: Path) -> None:
    private = tmp_path / "runtime" / "access"
    private.mkdir(mode=0o700)
    private.chmod(0o755)
    with pytest.raises(UsageError, match="other users can enter it"):
        config.runtime_dir()
    result = live.invoke("exec", "svc-payments", "--", "true")
    assert result.exit_code == ExitCode.USAGE and f"chmod 700 {private}" in result.stderr
    assert _asked_for_grants(live) == 0


def test_stale_secret_files_are_removed_at_the_start_of_exec_connect_env(live: LiveBroker) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid names files of a process that is gone
    private = config.runtime_dir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = str(taken.getsockname()[1])
        for command in (
            ["exec", "svc-payments", "--", "/nonexistent"],  # 127, after the clean-up
            ["env", "svc-payments", "--port", "15432"],
            ["connect", "svc-payments", "--port", busy],  # 2, after the clean-up
        ):
            stale = private / f"access-pgpass-{dead.pid}-abc123"
            stale_my = private / f"access-my-{dead.pid}-abc123"
            mine = private / f"access-pgpass-{os.getpid()}-def456"  # a running process's: kept
            other = private / "connect-svc-payments-read.json"  # not a secret file: kept
            for path in (stale, stale_my, mine, other):
                path.write_text("x")
            live.invoke(*command)
            assert not stale.exists() and not stale_my.exists(), command
            assert mine.exists() and other.exists(), command
