"""Two broker processes on one PostgreSQL store: psql's cancel reaches the other replica (issue 10);
a revoke on one cuts the other's tunnel at once by NOTIFY, and a replica that loses the database
fails closed and recovers by itself (issue 14).

Behind a load balancer a cancel's connection may land on another replica than its query's. Here
two ``access-broker serve`` share a database and their keys (one data directory); alice has a
tunnel of the same grant through each (``access connect``, the second with ``--grant``), and a
loopback TCP router in front of the two local ports sends psql's first connection (the query)
through replica A and every later one (psql's cancel) through replica B. B knows the key only
from the store.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from access.shared.devca import DevCA
from tests.e2e.conftest import BrokerProcess, Cli, _require_tool, make_broker_process, running
from tests.e2e.test_tunnel import RecordingTarget, _open_echo, _start_connect, _wait_for_cut
from tests.e2e.test_wire import _cancel, _closes, _message, _service
from tests.fakes.tcpproxy import TcpProxy
from tests.servers import DATABASE, Cluster, pg_cluster

__all__ = ["pg_cluster"]

pytestmark = pytest.mark.e2e

BOUND = 20.0
QUERY = "select pg_sleep(30)"


class Router(TcpProxy):
    """A loopback TCP proxy: its first connection goes to port ``first``, every later one to ``rest``."""

    def __init__(self, first: int, rest: int) -> None:
        self.routes: list[int] = []

        def route() -> tuple[str, int]:
            self.routes.append(rest if self.routes else first)
            return "127.0.0.1", self.routes[-1]

        super().__init__(route)


@pytest.fixture
def replicas(tmp_path: Path, devca: DevCA, pg_url: str, pg_cluster: Cluster) -> Iterator[list[BrokerProcess]]:
    password = tmp_path / "pg.pw"
    password.write_text(pg_cluster.passwords["access_scram"] + "\n")
    password.chmod(0o600)
    service = _service(
        "svc-pg", "postgres", pg_cluster.port, password, user="access_scram", database=DATABASE
    )
    policy = {
        "services": [service, {**service, "name": "svc-pg2"}],
        "rules": [
            {
                "name": "sre-all",
                "subjects": {"groups": ["sre"]},
                "services": ["svc-pg", "svc-pg2"],
                "scopes": ["read"],
                "max_ttl": "30m",
                "require": "auto",
            }
        ],
        "audit": {"readers": {"groups": ["sre"]}},
    }
    # The same tmp_path: one data directory (the replicas' shared keys) and one policy file.
    first = make_broker_process(tmp_path, devca, pg_url, policy)
    second = make_broker_process(tmp_path, devca, pg_url, policy)
    with running(first):
        first.add_user("alice", "alice-password-1", "sre")
        with running(second):
            yield [first, second]


def _signed_in(tmp_path: Path, broker: BrokerProcess, name: str) -> Cli:
    home = tmp_path / name
    home.mkdir()
    cli = Cli(home=home, broker=broker)
    assert cli.device_login("alice", "alice-password-1").returncode == 0
    return cli


def _connect(cli: Cli, *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = cli.popen("connect", *args, "--scope", "read", "-o", "json")
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise AssertionError("access connect printed nothing: " + proc.communicate(timeout=10)[1])
    return proc, json.loads(line)


def _wait_active(cluster: Cluster) -> None:
    deadline = time.monotonic() + BOUND
    with cluster.admin() as conn:
        sql = "select count(*) from pg_stat_activity where query = %s and state = 'active'"
        while conn.execute(sql, (QUERY,)).fetchone() != (1,):
            assert time.monotonic() < deadline, "the query did not start"
            time.sleep(0.05)  # a bounded poll of the target, not a synchronisation


def _wait_shared_key(broker: BrokerProcess, grant_id: str) -> None:
    """Until the query's channel has written its cancel key to the shared store (a worker thread
    does it once the login is done; a cancel that comes before is refused on another replica, as
    the module says): what a cancel through B needs, and under load it can trail the query."""
    import psycopg

    deadline = time.monotonic() + BOUND
    url = broker.database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        sql = "select count(*) from cancel_keys where grant_id = %s"
        while conn.execute(sql, (grant_id,)).fetchone() == (0,):
            assert time.monotonic() < deadline, "the channel's cancel key never reached the store"
            time.sleep(0.05)  # a bounded poll of the store, not a synchronisation


def test_psqls_cancel_through_another_replica_cancels_its_query_and_only_with_the_grants_key(
    tmp_path: Path, replicas: list[BrokerProcess], pg_cluster: Cluster
) -> None:
    _require_tool("psql")
    first, second = replicas
    via_first, via_second = _signed_in(tmp_path, first, "home-a"), _signed_in(tmp_path, second, "home-b")
    query_tunnel, made = _connect(via_first, "svc-pg", "--ttl", "5m")
    cancel_tunnel, joined = _connect(via_second, "svc-pg", "--grant", made["grant_id"])
    other_grant, other = _connect(via_second, "svc-pg2", "--ttl", "5m")  # alice's, another grant
    router = Router(made["port"], joined["port"])
    env = {**os.environ, "PGSSLMODE": "disable", "PGGSSENCMODE": "disable", "PGCONNECT_TIMEOUT": "10"}
    psql = subprocess.Popen(
        ["psql", "-h", "127.0.0.1", "-p", str(router.port), "-U", "nobody", "-d", DATABASE, "-w",
         "-Atc", QUERY],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        _wait_active(pg_cluster)
        _wait_shared_key(first, made["grant_id"])
        started = time.monotonic()
        psql.send_signal(signal.SIGINT)  # psql sends a CancelRequest on a new connection
        _, err = psql.communicate(timeout=BOUND)
        assert psql.returncode == 1 and "canceling statement due to user request" in err, err
        assert time.monotonic() - started < 10  # not the 30 s of the query
        assert router.routes == [made["port"], joined["port"]]  # the query via A, the cancel via B

        # A live session's key through A: refused through B but with its exact secret and grant.
        with socket.create_connection(("127.0.0.1", made["port"]), timeout=BOUND) as sock:
            params = b"user\0nobody\0database\0" + DATABASE.encode() + b"\0\0"
            sock.sendall((len(params) + 8).to_bytes(4, "big") + (3 << 16).to_bytes(4, "big") + params)
            key = None
            while (message := _message(sock))[0] != b"Z":
                if message[0] == b"K":
                    key = (int.from_bytes(message[1][:4], "big"), int.from_bytes(message[1][4:], "big"))
            assert key is not None
            _cancel(other["port"], key)  # another grant's tunnel on B: refused
            _cancel(joined["port"], (key[0], key[1] ^ 1))  # the right grant, a wrong secret: refused
    finally:
        if psql.poll() is None:
            psql.kill()
            psql.communicate(timeout=10)
        router.close()
        for proc in (query_tunnel, cancel_tunnel, other_grant):
            proc.terminate()
            proc.communicate(timeout=10)
    cancels = [close for close in _closes(first.database_url, 5) if "cancel" in close]
    assert sorted((close["service"], close["cancel"]) for close in cancels) == [
        ("svc-pg", "forwarded"),  # psql's, through B
        ("svc-pg", "refused: no live connection has that key"),
        ("svc-pg2", "refused: the key is another grant's"),
    ]


# -- replicas that talk (issue 14): ends by NOTIFY, and a replica that loses the database ------

# The poll as good as off: only a notification cuts within the tests' windows (at most 30 s).
SLOW_POLL = {"ACCESS_BROKER_GRANT_WATCH_INTERVAL": "30"}
CUT_WINDOW = 1.0  # a cut by notification lands well within it; the poll would take 30 s


def _echo_policy(echo_port: int) -> dict[str, Any]:
    echo = {"name": "svc-echo", "kind": "tcp", "target": f"127.0.0.1:{echo_port}", "scopes": ["read"]}
    rule = {"name": "sre-echo", "subjects": {"groups": ["sre"]}, "services": ["svc-echo"], "scopes": ["read"]}
    return {
        "services": [{**echo, "max_ttl": "1h"}],
        "rules": [{**rule, "max_ttl": "30m", "require": "auto"}],
        "audit": {"readers": {"groups": ["sre"]}},
    }


@pytest.fixture
def echo_target() -> Iterator[RecordingTarget]:
    target = RecordingTarget()
    yield target
    target.close()


@contextlib.contextmanager
def _connected(cli: Cli, ttl: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    proc, info = _start_connect(cli, "svc-echo", "--scope", "read", "--ttl", ttl)
    try:
        yield proc, info
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.communicate(timeout=10)


def test_a_revoke_on_one_replica_cuts_the_tunnel_on_another_at_once_by_notify(
    tmp_path: Path, devca: DevCA, pg_url: str, echo_target: RecordingTarget
) -> None:
    policy = _echo_policy(echo_target.port)
    first = make_broker_process(tmp_path, devca, pg_url, policy, **SLOW_POLL)
    second = make_broker_process(tmp_path, devca, pg_url, policy, **SLOW_POLL)
    with running(first):
        first.add_user("alice", "alice-password-1", "sre")
        with running(second):
            via_first = _signed_in(tmp_path, first, "home-a")
            via_second = _signed_in(tmp_path, second, "home-b")
            with _connected(via_second, "10m") as (_, info):
                conn = _open_echo(info["port"])
                assert via_first.run("revoke", info["grant_id"]).returncode == 0  # through A
                done = time.time()  # A committed the revoke (and its NOTIFY) before it answered
                cut = _wait_for_cut(conn, timeout=BOUND)
                conn.close()
                assert cut - done <= CUT_WINDOW, f"cut {cut - done:.2f}s after the revoke returned"
            # A user disabled by a command (a process of its own, no tunnels, no loops) too.
            with _connected(via_second, "10m") as (connect, info):
                conn = _open_echo(info["port"])
                first.admin("users", "disable", "alice")
                done = time.time()
                cut = _wait_for_cut(conn, timeout=BOUND)
                conn.close()
                assert cut - done <= CUT_WINDOW, f"cut {cut - done:.2f}s after the command returned"
                _, err = connect.communicate(timeout=BOUND)
                assert "locked" in err, err


class _Unreachable:
    """The test's own PostgreSQL database made unreachable and back: connections refused
    (``ALLOW_CONNECTIONS false``) and every open one ended (``pg_terminate_backend``)."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        from tests.conftest import PG_ADMIN_URL

        name = sa.engine.make_url(url).database
        assert name is not None and name.startswith("access_t_")  # only a throwaway one
        self.name = name
        self.admin = sa.create_engine(
            sa.engine.make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg"),
            isolation_level="AUTOCOMMIT",
            poolclass=sa.pool.NullPool,
        )

    def cut(self) -> None:
        import sqlalchemy as sa

        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
            sql = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"
            conn.execute(sa.text(sql), {"name": self.name})

    def restore(self) -> None:
        with self.admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')


def _until(check: Any, what: str, timeout: float = BOUND) -> Any:
    """A bounded poll of something outside the test (a process's log, a CLI's answer)."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return result


def test_a_replica_that_loses_the_database_fails_closed_and_recovers_by_itself(
    tmp_path: Path, devca: DevCA, pg_url: str, echo_target: RecordingTarget
) -> None:
    database = _Unreachable(pg_url)
    policy = _echo_policy(echo_target.port)
    broker = make_broker_process(
        tmp_path, devca, pg_url, policy, ACCESS_BROKER_DB_CONNECT_TIMEOUT="2", **SLOW_POLL
    )
    broker.add_user("alice", "alice-password-1", "sre")
    try:
        with running(broker):
            alice = _signed_in(tmp_path, broker, "home")
            with _connected(alice, "15s") as (_, info):
                live = _open_echo(info["port"])
                database.cut()
                # No new grant: the broker cannot check anything (503, exit 7).
                refused = alice.run("request", "svc-echo", "--scope", "read", "--ttl", "5m")
                assert refused.returncode == 7 and "unavailable" in refused.stderr, refused.stderr
                # No new channel in the live tunnel: nothing reaches the target.
                accepted = echo_target.accepted
                with socket.create_connection(("127.0.0.1", info["port"]), timeout=BOUND) as new:
                    new.settimeout(BOUND)
                    with contextlib.suppress(ConnectionResetError):
                        assert new.recv(100) == b""
                assert echo_target.accepted == accepted
                # What the replica can prove stays: the live channel, until the grant's expiry.
                live.sendall(b"still\n")
                assert live.recv(100) == b"still\n"
                cut = _wait_for_cut(live, timeout=30)
                live.close()
                expires = datetime.fromisoformat(info["expires_at"].replace("Z", "+00:00")).timestamp()
                assert -0.05 <= cut - expires <= 1.5, f"cut {cut - expires:+.2f}s from the expiry"
            assert any("notify listener: failing" in line for line in broker.output), "".join(broker.output)
            database.restore()
            # By itself: listening again, and a grant and a tunnel as before.
            _until(
                lambda: any("notify listener: working again" in line for line in broker.output),
                "the listener never came back:\n" + "".join(broker.output),
            )
            with _connected(alice, "10m") as (_, info):
                conn = _open_echo(info["port"])
                broker.admin("users", "disable", "alice")  # another process: heard by NOTIFY only
                done = time.time()
                cut = _wait_for_cut(conn, timeout=BOUND)
                conn.close()
                assert cut - done <= CUT_WINDOW, f"cut {cut - done:.2f}s after the command returned"
    finally:
        database.restore()
        database.admin.dispose()
