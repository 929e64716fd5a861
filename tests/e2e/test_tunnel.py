"""The tunnel end to end: real psql, mysql and redis-cli through `access exec` and `access connect`,
live connections cut at expiry, on revoke and on lock, and the refusals.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from access.shared.devca import DevCA
from access.shared.errors import ExitCode
from tests.e2e.conftest import BrokerProcess, Cli, _require_tool, make_broker_process, new_cli, running

pytestmark = pytest.mark.e2e

# Cut windows (Boundary-style): a live session ends between TTL and TTL + 1.5 s.
CUT_WINDOW = 1.5


class RecordingTarget:
    """A TCP service that counts connections and echoes: proves whether a byte reached the target."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.received = b""
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    self.received += data
                    conn.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def echo_target() -> Iterator[RecordingTarget]:
    target = RecordingTarget()
    yield target
    target.close()


def _policy(echo_port: int, pg_password_file: Path) -> dict[str, Any]:
    return {
        "services": [
            {
                "name": "svc-payments",
                "kind": "postgres",
                "target": "127.0.0.1:5432",
                "scopes": ["read"],
                "max_ttl": "1h",
                "options": {
                    "database": "postgres",
                    "user": "postgres",
                    "password_file": str(pg_password_file),
                },
            },
            {
                "name": "svc-orders",
                "kind": "mysql",
                "target": "127.0.0.1:3306",
                "scopes": ["read"],
                "max_ttl": "1h",
                "options": {"user": "root"},
            },
            {
                "name": "svc-cache",
                "kind": "redis",
                "target": "127.0.0.1:6379",
                "scopes": ["read"],
                "max_ttl": "1h",
            },
            {
                "name": "svc-echo",
                "kind": "tcp",
                "target": f"127.0.0.1:{echo_port}",
                "scopes": ["read"],
                "max_ttl": "1h",
            },
            {
                "name": "svc-gone",
                "kind": "tcp",
                "target": f"127.0.0.1:{_closed_port()}",
                "scopes": ["read"],
                "max_ttl": "1h",
            },
        ],
        "rules": [
            {
                "name": "sre-all",
                "subjects": {"groups": ["sre"]},
                "services": ["svc-payments", "svc-orders", "svc-cache", "svc-echo", "svc-gone"],
                "scopes": ["read"],
                "max_ttl": "30m",
                "require": "auto",
            },
        ],
        "audit": {"readers": {"groups": ["sre"]}},
    }


@pytest.fixture
def tunnel_broker(
    tmp_path: Path, devca: DevCA, sqlite_url: str, echo_target: RecordingTarget
) -> Iterator[BrokerProcess]:
    password_file = tmp_path / "pg.pw"
    password_file.write_text("s3cret-pg-password\n")
    password_file.chmod(0o600)
    proc = make_broker_process(tmp_path, devca, sqlite_url, _policy(echo_target.port, password_file))
    proc.add_user("alice", "alice-password-1", "sre")
    with running(proc):
        yield proc


@pytest.fixture
def alice(tmp_path: Path, tunnel_broker: BrokerProcess) -> Cli:
    cli = new_cli(tmp_path, tunnel_broker)
    assert cli.device_login("alice", "alice-password-1").returncode == 0
    return cli


def _start_connect(cli: Cli, *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = cli.popen("connect", *args, "-o", "json")
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise AssertionError("access connect printed nothing: " + (proc.stderr.read() if proc.stderr else ""))
    return proc, json.loads(line)


def _expires(info: dict[str, Any]) -> float:
    return datetime.fromisoformat(info["expires_at"].replace("Z", "+00:00")).timestamp()


def _wait_for_cut(conn: socket.socket, timeout: float) -> float:
    """Block until the far side closes ``conn``; return the wall-clock time it happened."""
    conn.settimeout(timeout)
    try:
        while conn.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    return time.time()


def _open_echo(port: int) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        conn.sendall(b"ping\n")
        assert conn.recv(100) == b"ping\n"
    except BaseException:
        conn.close()
        raise
    return conn


def test_exec_psql_mysql_redis(alice: Cli) -> None:
    _require_tool("psql")
    _require_tool("mysql")
    _require_tool("redis-cli")
    pg = alice.run(
        "exec", "svc-payments", "--ttl", "5m", "--reason", "INC-1", "--", "psql", "-Atc", "select 40 + 2"
    )
    assert pg.returncode == 0, pg.stderr
    assert pg.stdout.strip() == "42"
    my = alice.run("exec", "svc-orders", "--ttl", "5m", "--", "mysql", "-N", "-B", "-e", "select 6 * 7")
    assert my.returncode == 0, my.stderr
    assert my.stdout.strip() == "42"
    rd = alice.run("exec", "svc-cache", "--ttl", "5m", "--", "redis-cli", "ping")
    assert rd.returncode == 0, rd.stderr
    assert rd.stdout.strip() == "PONG"
    # The command's exit code comes back.
    assert alice.run("exec", "svc-payments", "--", "psql", "-c", "select nonsense").returncode == 1
    assert alice.run("exec", "svc-echo", "--", "sh", "-c", "exit 7").returncode == 7


def test_exec_environment_holds_no_target_password(alice: Cli, tmp_path: Path) -> None:
    # Issue 10: the broker logs in to the target; the laptop gets no password, in no form.
    probe = tmp_path / "probe.json"
    script = "import json,os,sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"
    result = alice.run("exec", "svc-payments", "--ttl", "5m", "--", "python3", "-c", script, str(probe))
    assert result.returncode == 0, result.stderr
    env = json.loads(probe.read_text())
    assert env["PGHOST"] == "127.0.0.1"
    assert int(env["PGPORT"]) > 0
    assert env["PGDATABASE"] == "postgres"
    assert env["PGUSER"] == "access"  # any name: the broker logs in as the service's user
    assert "PGPASSFILE" not in env and "PGPASSWORD" not in env
    assert all("s3cret-pg-password" not in v for v in env.values()), "password leaked into the environment"
    assert "s3cret-pg-password" not in result.stdout + result.stderr
    audit = alice.run("audit", "--since", "1h", "-o", "json")
    assert "s3cret-pg-password" not in audit.stdout

    proc, info = _start_connect(alice, "svc-echo", "--scope", "read", "--ttl", "5m")
    try:
        env_out = alice.run("env", "svc-echo", "--scope", "read")
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert env_out.returncode == 0, env_out.stderr
    assert "export ACCESS_HOST=127.0.0.1" in env_out.stdout
    assert f"export ACCESS_PORT={info['port']}" in env_out.stdout


def test_connect_expiry_cuts_live_connection_within_window(alice: Cli, echo_target: RecordingTarget) -> None:
    proc, info = _start_connect(alice, "svc-echo", "--scope", "read", "--ttl", "3s", "--reason", "cut")
    try:
        assert info["address"] == "127.0.0.1"
        assert info["expires_at"].endswith("Z"), info  # ISO-8601 with Z, as every -o json
        conn = _open_echo(info["port"])
        cut = _wait_for_cut(conn, timeout=10)
        conn.close()
        late = cut - _expires(info)
        assert -0.05 <= late <= CUT_WINDOW, f"cut {late:+.2f}s from expiry"
        # A new connection afterwards gets nothing through.
        before = echo_target.accepted
        try:
            with socket.create_connection(("127.0.0.1", info["port"]), timeout=5) as again:
                again.settimeout(5)
                assert again.recv(100) == b""
        except OSError:
            pass  # refused outright: `access connect` has stopped listening
        assert echo_target.accepted == before
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_revoke_cuts_live_connection(alice: Cli) -> None:
    proc, info = _start_connect(alice, "svc-echo", "--scope", "read", "--ttl", "10m", "--reason", "revoke me")
    try:
        conn = _open_echo(info["port"])
        started = time.time()
        assert alice.run("revoke", info["grant_id"]).returncode == 0
        done = time.time()  # the broker committed the revoke before it answered the command
        cut = _wait_for_cut(conn, timeout=10)
        # Within a second of the end: measured from the revoke's answer, not from the start of
        # the `access revoke` process, whose start-up (0.5 s quiet, several seconds on a loaded
        # machine) is not the broker's to answer for.
        assert started <= cut <= done + 1.0, f"cut {cut - done:.2f}s after the revoke returned"
        conn.close()
        _, err = proc.communicate(timeout=10)
        assert "revoked" in err
    finally:
        if proc.poll() is None:
            proc.kill()


def test_disabling_the_user_cuts_live_connection(alice: Cli, tunnel_broker: BrokerProcess) -> None:
    proc, info = _start_connect(alice, "svc-echo", "--scope", "read", "--ttl", "10m", "--reason", "lock")
    try:
        conn = _open_echo(info["port"])
        # Another process (the admin command) decides: the broker sees it through the database.
        result = tunnel_broker.admin("users", "disable", "alice")
        done = time.time()
        cut = _wait_for_cut(conn, timeout=10)
        assert cut - done <= 1.0, f"cut {cut - done:.2f}s after the lock"
        conn.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert result.returncode == 0
    assert alice.run("whoami").returncode == ExitCode.NEEDS_LOGIN


def test_unreachable_target_is_reported(alice: Cli) -> None:
    result = alice.run(
        "exec",
        "svc-gone",
        "--ttl",
        "5m",
        "--",
        "python3",
        "-c",
        "import os,socket;"
        "s=socket.create_connection((os.environ['ACCESS_HOST'],int(os.environ['ACCESS_PORT'])));"
        "import sys;sys.exit(0 if s.recv(10)==b'' else 3)",
    )
    assert result.returncode == 0
    assert "svc-gone" in result.stderr and ("unreachable" in result.stderr or "refused" in result.stderr)
    audit = json.loads(alice.run("audit", "--service", "svc-gone", "--since", "1h", "-o", "json").stdout)
    closes = [e for e in audit if e["action"] == "connection.close"]
    assert closes and closes[0]["details"]["why"] == "error", audit


def test_broker_restart_fails_tunnels_closed_then_recovers(alice: Cli, tunnel_broker: BrokerProcess) -> None:
    proc, info = _start_connect(alice, "svc-echo", "--scope", "read", "--ttl", "10m", "--reason", "restart")
    try:
        conn = _open_echo(info["port"])
        port = int(tunnel_broker.url.rsplit(":", 1)[1])
        tunnel_broker.stop()
        _wait_for_cut(conn, timeout=10)
        conn.close()
        tunnel_broker.start(port)  # the same port: the CLI already knows it
        conn = _open_echo(info["port"])
        conn.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def _connection_entries(database_url: str) -> dict[str, list[dict[str, Any]]]:
    """connection.open / connection.close details in the ledger, read straight from the database."""
    import sqlalchemy as sa

    from access.broker.store.engine import create_engine

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT action, details FROM audit_log ORDER BY seq")).all()
    finally:
        engine.dispose()
    found: dict[str, list[dict[str, Any]]] = {"connection.open": [], "connection.close": []}
    for action, details in rows:
        if action in found:
            found[action].append(json.loads(details))
    return found


def test_a_killed_broker_s_connections_are_closed_as_broker_lost(
    alice: Cli, tunnel_broker: BrokerProcess
) -> None:
    """SIGKILL: no close is written by the dead process; the restarted one writes it (broker lost)."""
    proc, info = _start_connect(alice, "svc-echo", "--scope", "read", "--ttl", "10m", "--reason", "crash")
    try:
        conn = _open_echo(info["port"])
        port = int(tunnel_broker.url.rsplit(":", 1)[1])
        assert tunnel_broker.proc is not None
        tunnel_broker.proc.send_signal(signal.SIGKILL)
        tunnel_broker.proc.wait(timeout=10)
        tunnel_broker.stop()
        _wait_for_cut(conn, timeout=10)
        conn.close()
        entries = _connection_entries(tunnel_broker.database_url)
        assert len(entries["connection.open"]) == 1 and entries["connection.close"] == []
        # A short lease, so that the restarted broker takes the killed one for dead in seconds.
        tunnel_broker.env["ACCESS_BROKER_INSTANCE_LEASE"] = "3"
        tunnel_broker.start(port)
        deadline = time.monotonic() + 20
        while not (entries := _connection_entries(tunnel_broker.database_url))["connection.close"]:
            assert time.monotonic() < deadline, "no connection.close for the killed broker's connection"
            time.sleep(0.2)
        (opened,) = entries["connection.open"]
        (closed,) = entries["connection.close"]
        assert closed["connection"] == opened["connection"]
        assert closed["why"] == "broker lost"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat_line = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid ...: comm may hold spaces, so split after its closing paren.
            if int(stat_line.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_option_file_of_a_killed_exec_is_removed_by_the_next_exec(alice: Cli, tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    private = runtime / "access"
    proc = alice.popen("exec", "svc-orders", "--ttl", "5m", "--", "sleep", "30", env=env)
    child: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while not child and time.monotonic() < deadline and proc.poll() is None:
            child = _children(proc.pid)
            time.sleep(0.05)  # a bounded poll for the child `sleep`, not a synchronisation
        assert child, "access exec started no program: " + (proc.stderr.read() if proc.stderr else "")
        # mysql's option file (no secret in it since issue 10, but a file all the same)
        passfile = next(private.glob(f"access-my-{proc.pid}-*"))
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
        assert "password" not in passfile.read_text()
        proc.kill()  # SIGKILL: no clean-up runs
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in child:  # the orphaned `sleep` holds our pipes: end it before reading them
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.communicate(timeout=10)
    assert passfile.exists(), "the killed exec's passfile should still be there before the next run"
    result = alice.run("exec", "svc-orders", "--ttl", "5m", "--", "true", env=env)
    assert result.returncode == 0, result.stderr
    assert not passfile.exists(), "the next access exec left the stale option file behind"
    assert list(private.glob("access-*")) == []


def test_exec_of_a_missing_program_exits_127_and_asks_for_no_grant(alice: Cli, tmp_path: Path) -> None:
    missing = alice.run("exec", "svc-payments", "--", "/nonexistent")
    assert missing.returncode == ExitCode.COMMAND_NOT_FOUND == 127, missing.stderr
    assert "/nonexistent" in missing.stderr
    not_executable = tmp_path / "script"
    not_executable.write_text("#!/bin/sh\n")
    cannot = alice.run("exec", "svc-payments", "--", str(not_executable))
    assert cannot.returncode == ExitCode.NOT_EXECUTABLE == 126, cannot.stderr
    grants = alice.run("grants", "--all", "-o", "json")
    assert grants.returncode == 0 and json.loads(grants.stdout) == []


def test_an_idle_connect_stops_within_a_second_of_a_revoke(alice: Cli) -> None:
    """No local connection open: `connect` still hears the end (it holds its WebSocket open)."""
    proc, info = _start_connect(alice, "svc-echo", "--ttl", "10m", "--reason", "idle")
    try:
        assert alice.run("revoke", info["grant_id"]).returncode == 0
        done = time.time()
        code = proc.wait(timeout=10)
        stopped = time.time()
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert stopped - done <= 1.0, f"connect stopped {stopped - done:.2f}s after the revoke returned"
    assert code == ExitCode.DENIED, err
    assert f"grant {info['grant_id']} was revoked" in err
    with pytest.raises(OSError):  # nobody listens on its port any more
        socket.create_connection(("127.0.0.1", info["port"]), timeout=2).close()


# Reads through the tunnel until it is cut, then prints when, and exits 0 as a naive reader
# would: the end, not the reader, decides `access exec`'s exit code.
READER = """
import os, socket, sys, time
s = socket.create_connection((os.environ["ACCESS_HOST"], int(os.environ["ACCESS_PORT"])))
s.sendall(b"ping\\n")
assert s.recv(100) == b"ping\\n"
print("ready", flush=True)
try:
    while s.recv(65536):
        pass
except OSError:
    pass
print("cut", time.time(), flush=True)
"""


def test_logout_from_another_process_cuts_a_running_exec(alice: Cli) -> None:
    proc = alice.popen(
        "exec", "svc-echo", "--ttl", "10m", "--reason", "logout", "--", "python3", "-c", READER
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert ready == "ready\n", ready + (proc.stderr.read() if proc.stderr else "")
        logout = alice.run("logout")
        done = time.time()  # the broker ended the session before it answered
        assert logout.returncode == 0, logout.stderr
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    cut = float(out.split()[-1])
    assert cut - done <= 1.0, f"cut {cut - done:.2f}s after the logout returned"
    assert proc.returncode == ExitCode.NEEDS_LOGIN, err
    assert "its sign-in session ended" in err and "access login" in err
