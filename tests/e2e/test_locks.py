"""`access-broker lock` end to end: the real broker and CLI on PostgreSQL; a live `access connect`
is cut within a second of a lock on its user or its service, new requests are refused with the
lock's words, and `unlock` lets them through again; `access-broker users revoke-sessions` cuts one
the same way and the person's next command says to log in again. One broker startup for all of it."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from access.shared.devca import DevCA
from access.shared.errors import ExitCode
from tests.e2e.conftest import BrokerProcess, Cli, make_broker_process, running
from tests.e2e.test_tunnel import RecordingTarget, _open_echo, _start_connect, _wait_for_cut

pytestmark = pytest.mark.e2e


def _policy(echo: int, other: int) -> dict[str, object]:
    services = [
        {"name": name, "kind": "tcp", "target": f"127.0.0.1:{port}", "scopes": ["read"], "max_ttl": "1h"}
        for name, port in (("svc-echo", echo), ("svc-other", other))
    ]
    rule = {
        "name": "sre-all",
        "subjects": {"groups": ["sre"]},
        "services": ["svc-echo", "svc-other"],
        "scopes": ["read"],
        "max_ttl": "30m",
        "require": "auto",
    }
    return {"services": services, "rules": [rule]}


@pytest.fixture
def lock_broker(tmp_path: Path, devca: DevCA, pg_url: str) -> Iterator[BrokerProcess]:
    # Echo servers that serve each connection in a thread, for as long as the test runs.
    echo, other = RecordingTarget(), RecordingTarget()
    proc = make_broker_process(tmp_path, devca, pg_url, _policy(echo.port, other.port))
    proc.add_user("alice", "alice-password-1", "sre")
    proc.add_user("bob", "bob-password-1", "sre")
    try:
        with running(proc):
            yield proc
    finally:
        echo.close()
        other.close()


def _login(tmp_path: Path, broker: BrokerProcess, name: str) -> Cli:
    home = tmp_path / name
    home.mkdir()
    cli = Cli(home=home, broker=broker)
    assert cli.device_login(name, f"{name}-password-1").returncode == 0
    return cli


def _request(cli: Cli, service: str) -> subprocess.CompletedProcess[str]:
    return cli.run("request", service, "--scope", "read", "--ttl", "10m", "--reason", "INC-1", "-o", "json")


def _cut_by(
    broker: BrokerProcess,
    cli: Cli,
    service: str,
    *command: str,
    said: str = "1 active grant(s) ended",
    code: int = ExitCode.DENIED,
    words: str = "an administrator locked access",
) -> str:
    """Connect, run ``access-broker COMMAND`` (a lock), and check the live connection is cut
    within a second, the command ``said`` so, and the connect exited ``code`` with ``words``."""
    proc, info = _start_connect(cli, service, "--scope", "read", "--ttl", "10m", "--reason", "INC-1")
    try:
        conn = _open_echo(info["port"])
        result = broker.admin(*command)
        done = time.time()  # the change committed before the command exited
        cut = _wait_for_cut(conn, timeout=10)
        conn.close()
        assert cut - done <= 1.0, f"cut {cut - done:.2f}s after the {command[0]}"
        assert said in result.stderr, result.stderr
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(Exception):
            proc.communicate(timeout=5)
    assert proc.returncode == code, err
    assert f"grant {info['grant_id']} ended: {words}" in err
    return err


def test_lock_cuts_live_tunnels_refuses_requests_until_unlocked(
    tmp_path: Path, lock_broker: BrokerProcess
) -> None:
    alice, bob = _login(tmp_path, lock_broker, "alice"), _login(tmp_path, lock_broker, "bob")

    # A user lock: alice's live tunnel is cut, her new requests refused saying who, until and why.
    _cut_by(
        lock_broker,
        alice,
        "svc-echo",
        "lock",
        "--user",
        "alice",
        "--reason",
        "INC-42 laptop stolen",
        "--until",
        "2h",
    )
    refused = _request(alice, "svc-echo")
    assert refused.returncode == ExitCode.DENIED, refused.stderr
    assert "user alice is locked by admin:" in refused.stderr and "INC-42 laptop stolen" in refused.stderr
    assert " until 20" in refused.stderr  # the time it lifts by itself
    assert "access-broker unlock --user alice" in refused.stderr
    assert _request(bob, "svc-echo").returncode == 0  # only alice is locked

    again = lock_broker.admin("lock", "--user", "alice", check=False)
    assert again.returncode == ExitCode.ERROR
    assert "user alice is locked by" in again.stderr and "nothing was changed" in again.stderr
    lock_broker.admin("unlock", "--user", "alice")
    assert _request(alice, "svc-echo").returncode == 0
    nothing = lock_broker.admin("unlock", "--user", "alice", check=False)
    assert nothing.returncode == ExitCode.NOT_FOUND and "user alice is not locked" in nothing.stderr

    # A service lock: bob's tunnel to it is cut, everyone's requests for it refused, others pass.
    _cut_by(lock_broker, bob, "svc-other", "lock", "--service", "svc-other", "--reason", "maintenance")
    refused = _request(alice, "svc-other")
    assert refused.returncode == ExitCode.DENIED and "service svc-other is locked by admin:" in refused.stderr
    assert "maintenance" in refused.stderr
    assert _request(alice, "svc-echo").returncode == 0

    listed = json.loads(lock_broker.admin("locks", "--all", "-o", "json").stdout)
    assert [(v["kind"], v["value"], v["state"]) for v in listed] == [
        ("service", "svc-other", "active"),
        ("user", "alice", "lifted"),
    ]

    # Offboarding (issue 13): revoke-sessions cuts alice's live tunnel within a second, as a lock
    # does, but as "signed out" (exit 3); her next command says to log in again. bob is untouched.
    _cut_by(
        lock_broker,
        alice,
        "svc-echo",
        "users",
        "revoke-sessions",
        "alice",
        said="revoked the sessions of alice: 1 session(s) (0 in the inbox)",
        code=ExitCode.NEEDS_LOGIN,
        words="an administrator ended your sign-in sessions; run `access login`",
    )
    after = alice.run("grants")
    assert after.returncode == ExitCode.NEEDS_LOGIN, after.stderr
    assert "access login" in after.stderr
    assert bob.run("grants").returncode == 0
