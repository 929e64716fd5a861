"""The broker logs in to the target (issue 10), end to end: a real broker process, the real CLI,
psql / mysql / redis-cli that present no password, targets that ask for one.

PostgreSQL is the private cluster of ``tests.servers`` (SCRAM); MariaDB and Redis are the shared
servers, each with a password user of this test's own, dropped afterwards; the private MariaDB
of ``tests.servers`` is the mysql target with TLS.
"""

from __future__ import annotations

import json
import secrets
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
import redis

from access.shared.devca import DevCA
from tests.e2e.conftest import BrokerProcess, Cli, _require_tool, make_broker_process, new_cli, running
from tests.servers import DATABASE, Cluster, MariaDB, mariadb_server, pg_cluster

__all__ = ["mariadb_server", "pg_cluster"]

pytestmark = pytest.mark.e2e

BOUND = 20.0


def _service(name: str, kind: str, port: int, password_file: Path, **options: Any) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "target": f"127.0.0.1:{port}",
        "scopes": ["read"],
        "max_ttl": "1h",
        "options": {"password_file": str(password_file), **options},
    }


@pytest.fixture
def mariadb_user() -> Iterator[tuple[str, str]]:
    name, password = f"acc_{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", connect_timeout=5, autocommit=True)
    try:
        with admin.cursor() as cursor:
            cursor.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (name, password))
        yield name, password
    finally:
        with admin.cursor() as cursor:
            cursor.execute("DROP USER IF EXISTS %s@'%%'", (name,))
        admin.close()


@pytest.fixture
def redis_user() -> Iterator[tuple[str, str]]:
    name, password = f"acc_{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    admin = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5)
    admin.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"])
    try:
        yield name, password
    finally:
        admin.acl_deluser(name)
        admin.close()


@pytest.fixture
def silent_target() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


@pytest.fixture
def wire_broker(
    tmp_path: Path,
    devca: DevCA,
    sqlite_url: str,
    pg_cluster: Cluster,
    mariadb_server: MariaDB,
    mariadb_user: tuple[str, str],
    redis_user: tuple[str, str],
    silent_target: int,
) -> Iterator[BrokerProcess]:
    def secret(name: str, value: str) -> Path:
        path = tmp_path / name
        path.write_text(value + "\n")
        path.chmod(0o600)
        return path

    pg_pw = secret("pg.pw", pg_cluster.passwords["access_scram"])
    wrong = secret("wrong.pw", "not-the-password")

    def pg(name: str, password_file: Path, **tls: str) -> dict[str, Any]:
        return _service(
            name, "postgres", pg_cluster.port, password_file, user="access_scram", database=DATABASE, **tls
        )

    services = [
        pg("svc-pg", pg_pw),
        pg("svc-pg2", pg_pw),
        pg("svc-pg-wrong", wrong),
        pg("svc-pg-tls", pg_pw, tls="verify-full", tls_ca_file=pg_cluster.ca_file),
        pg("svc-pg-badca", pg_pw, tls="verify-full", tls_ca_file=str(devca.ca_cert)),
        _service("svc-my", "mysql", 3306, secret("my.pw", mariadb_user[1]), user=mariadb_user[0]),
        _service(
            "svc-my-tls",
            "mysql",
            mariadb_server.port,
            secret("my-tls.pw", mariadb_server.tls_password),
            user=mariadb_server.tls_user,
            tls="verify-full",
            tls_ca_file=mariadb_server.ca_file,
        ),
        _service("svc-rd", "redis", 6379, secret("rd.pw", redis_user[1]), user=redis_user[0]),
        _service("svc-rd-wrong", "redis", 6379, wrong, user=redis_user[0]),
        _service("svc-my-silent", "mysql", silent_target, wrong, user="nobody"),
    ]
    policy = {
        "services": services,
        "rules": [
            {
                "name": "sre-all",
                "subjects": {"groups": ["sre"]},
                "services": [service["name"] for service in services],
                "scopes": ["read"],
                "max_ttl": "30m",
                "require": "auto",
            }
        ],
        "audit": {"readers": {"groups": ["sre"]}},
    }
    proc = make_broker_process(tmp_path, devca, sqlite_url, policy, ACCESS_BROKER_TUNNEL_LOGIN_TIMEOUT="1")
    proc.add_user("alice", "alice-password-1", "sre")
    with running(proc):
        yield proc


@pytest.fixture
def alice(tmp_path: Path, wire_broker: BrokerProcess) -> Cli:
    cli = new_cli(tmp_path, wire_broker)
    assert cli.device_login("alice", "alice-password-1").returncode == 0
    return cli


def _closes(database_url: str, count: int) -> list[dict[str, Any]]:
    """The first ``count`` connection.close details (written from a worker thread: polled)."""
    import sqlalchemy as sa

    from access.broker.store.engine import create_engine

    engine = create_engine(database_url)
    deadline = time.monotonic() + BOUND
    try:
        while True:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.text("SELECT details FROM audit_log WHERE action = 'connection.close' ORDER BY seq")
                ).all()
            if len(rows) >= count or time.monotonic() > deadline:
                return [json.loads(details) for (details,) in rows]
            time.sleep(0.1)  # a bounded poll for the audit entries, not a synchronisation
    finally:
        engine.dispose()


def test_clients_with_no_password_get_in_as_the_service_user(
    alice: Cli, wire_broker: BrokerProcess, mariadb_user: tuple[str, str], redis_user: tuple[str, str]
) -> None:
    _require_tool("psql")
    _require_tool("mysql")
    _require_tool("redis-cli")
    pg = alice.run("exec", "svc-pg", "--ttl", "5m", "--", "psql", "-Atc", "select current_user")
    assert (pg.returncode, pg.stdout.strip()) == (0, "access_scram"), pg.stderr
    my = alice.run("exec", "svc-my", "--ttl", "5m", "--", "mysql", "-N", "-B", "-e", "select current_user()")
    assert (my.returncode, my.stdout.strip()) == (0, f"{mariadb_user[0]}@%"), my.stderr
    rd = alice.run("exec", "svc-rd", "--ttl", "5m", "--", "redis-cli", "acl", "whoami")
    assert (rd.returncode, rd.stdout.strip()) == (0, redis_user[0]), rd.stderr
    closes = {close["service"]: close for close in _closes(wire_broker.database_url, 3)}
    # A client that tries to log in as someone else is refused: the broker logged in.
    auth = alice.run("exec", "svc-rd", "--", "redis-cli", "--user", "default", "--pass", "x", "ping")
    assert "AUTH" in auth.stdout + auth.stderr and "PONG" not in auth.stdout, auth
    assert closes["svc-pg"]["statements"] >= 1 and closes["svc-pg"]["why"] == "client closed"
    assert closes["svc-my"]["statements"] >= 1
    assert closes["svc-rd"]["statements"] >= 1
    env = alice.run("env", "svc-pg", "--scope", "read")
    for secret in (mariadb_user[1], redis_user[1]):
        assert secret not in pg.stdout + pg.stderr + my.stdout + rd.stdout + env.stdout


@pytest.mark.parametrize(
    ("service", "argv"),
    [("svc-pg-wrong", ["psql", "-Atc", "select 1"]), ("svc-rd-wrong", ["redis-cli", "ping"])],
)
def test_a_wrong_stored_password_is_told_to_the_client(
    alice: Cli, wire_broker: BrokerProcess, service: str, argv: list[str]
) -> None:
    result = alice.run("exec", service, "--ttl", "5m", "--", *argv)
    said = result.stdout + result.stderr
    assert "access: the target refused the broker's login for this grant" in said, said
    assert "not-the-password" not in said
    if argv[0] == "psql":
        assert result.returncode != 0  # redis-cli prints the error and exits 0 (as it does for -ERR)
    (close,) = _closes(wire_broker.database_url, 1)
    assert close["why"] == "refused" and "not-the-password" not in json.dumps(close)


def _connect(cli: Cli, service: str) -> tuple[subprocess.Popen[str], int]:
    proc = cli.popen("connect", service, "--scope", "read", "--ttl", "5m", "-o", "json")
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "access connect printed nothing"
    return proc, int(json.loads(line)["port"])


def _message(sock: socket.socket) -> tuple[bytes, bytes]:
    head = _exactly(sock, 5)
    return head[:1], _exactly(sock, struct.unpack("!I", head[1:])[0] - 4)


def _exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "the tunnel closed the connection"
        data += chunk
    return data


def _cancel(port: int, key: tuple[int, int]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=BOUND) as sock:
        sock.sendall(struct.pack("!IIII", 16, 80877102, *key))
        assert sock.recv(100) == b""  # no answer to a CancelRequest: the connection is closed


def test_a_cancel_reaches_the_target_only_for_the_same_grant(alice: Cli, wire_broker: BrokerProcess) -> None:
    first, port = _connect(alice, "svc-pg")
    second, other_port = _connect(alice, "svc-pg2")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=BOUND) as sock:
            params = b"user\0nobody\0database\0" + DATABASE.encode() + b"\0\0"
            sock.sendall(struct.pack("!II", len(params) + 8, 3 << 16) + params)
            key = None
            while (message := _message(sock))[0] != b"Z":
                assert message[0] != b"E", message
                if message[0] == b"K":
                    key = struct.unpack("!II", message[1])
            assert key is not None
            query = b"select pg_sleep(15)\0"
            sock.sendall(b"Q" + struct.pack("!I", len(query) + 4) + query)
            _cancel(other_port, key)  # another grant's tunnel: refused, the query goes on
            _cancel(port, key)  # the same grant: forwarded
            while (message := _message(sock))[0] == b"T":  # the row description comes first
                pass
            assert message[0] == b"E" and b"C57014\0" in message[1], message  # query_canceled
    finally:
        for proc in (first, second):
            proc.terminate()
            proc.communicate(timeout=10)
    cancels = {close["service"]: close for close in _closes(wire_broker.database_url, 3) if "cancel" in close}
    assert cancels["svc-pg2"]["cancel"] == "refused: the key is another grant's"
    assert cancels["svc-pg2"]["why"] == "refused"
    assert cancels["svc-pg"]["cancel"] == "forwarded"


def test_a_postgresql_client_that_says_terminate_closed_it_even_when_the_server_closes_first(
    alice: Cli, wire_broker: BrokerProcess
) -> None:
    """psql sends Terminate and closes; PostgreSQL closes on Terminate too, and either close may
    reach the broker first. Here the client keeps its socket open after Terminate, so the
    server's close comes first every time: the audit still says the client ended it."""
    proc, port = _connect(alice, "svc-pg")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=BOUND) as sock:
            params = b"user\0nobody\0database\0" + DATABASE.encode() + b"\0\0"
            sock.sendall(struct.pack("!II", len(params) + 8, 3 << 16) + params)
            while (message := _message(sock))[0] != b"Z":
                assert message[0] != b"E", message
            query = b"select 1\0"
            sock.sendall(b"Q" + struct.pack("!I", len(query) + 4) + query)
            while (message := _message(sock))[0] != b"Z":
                assert message[0] != b"E", message
            sock.sendall(b"X" + struct.pack("!I", 4))  # Terminate, and the socket stays open
            assert sock.recv(100) == b""  # the server's close, relayed
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    (close,) = [c for c in _closes(wire_broker.database_url, 1) if c["service"] == "svc-pg"]
    assert close["why"] == "client closed" and close["statements"] == 1, close


def test_tls_to_the_target_is_verified_when_the_service_asks_for_it(
    alice: Cli, wire_broker: BrokerProcess
) -> None:
    query = "select ssl from pg_stat_ssl where pid = pg_backend_pid()"
    plain = alice.run("exec", "svc-pg", "--ttl", "5m", "--", "psql", "-Atc", query)
    assert (plain.returncode, plain.stdout.strip()) == (0, "f"), plain.stderr  # the default: disable
    tls = alice.run("exec", "svc-pg-tls", "--ttl", "5m", "--", "psql", "-Atc", query)
    assert (tls.returncode, tls.stdout.strip()) == (0, "t"), tls.stderr
    bad = alice.run("exec", "svc-pg-badca", "--ttl", "5m", "--", "psql", "-Atc", query)
    assert bad.returncode != 0
    assert "TLS to svc-pg-badca failed" in bad.stderr and "certificate verify failed" in bad.stderr, (
        bad.stderr
    )
    # MySQL starts TLS in the middle of its login; the server lets this user in over TLS only.
    sql = "select current_user(); show session status like 'Ssl_version'"
    my = alice.run("exec", "svc-my-tls", "--ttl", "5m", "--", "mysql", "-N", "-B", "-e", sql)
    assert my.returncode == 0, my.stderr
    user, version = my.stdout.strip().split("\n")
    assert user == "access_tls@%" and version.startswith("Ssl_version\tTLSv1."), my.stdout
    closes = [close for close in _closes(wire_broker.database_url, 4) if close["service"] == "svc-pg-badca"]
    assert len(closes) == 1, closes  # one channel, one close (a failed TLS handshake ends it once)
    assert closes[0]["why"] == "error" and "certificate verify failed" in closes[0]["error"]


def test_a_target_that_never_logs_in_is_cut_at_the_login_timeout(
    alice: Cli, wire_broker: BrokerProcess
) -> None:
    # ACCESS_BROKER_TUNNEL_LOGIN_TIMEOUT=1: the target accepts and says nothing (no greeting).
    result = alice.run("exec", "svc-my-silent", "--ttl", "5m", "--", "mysql", "-N", "-B", "-e", "select 1")
    assert result.returncode != 0
    assert "the target did not finish the login within 1 s" in result.stderr, result.stderr
    (close,) = _closes(wire_broker.database_url, 1)
    assert close["why"] == "refused" and "within 1 s" in close["error"]


def _grant(cli: Cli, service: str) -> str:
    made = cli.run("request", service, "--scope", "read", "--ttl", "5m", "--reason", "INC-7", "-o", "json")
    assert made.returncode == 0, made.stderr
    return str(json.loads(made.stdout)["id"])


def _queries(cli: Cli, grant: str, count: int) -> list[dict[str, Any]]:
    """``access audit --grant G --queries -o json``, once it lists ``count`` (the statement log
    writes about once a second, and at once when a channel closes: a bounded poll)."""
    deadline = time.monotonic() + BOUND
    while True:
        listed = cli.run("audit", "--grant", grant, "--queries", "-n", "1000", "-o", "json")
        assert listed.returncode == 0, listed.stderr
        rows: list[dict[str, Any]] = json.loads(listed.stdout)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_every_statement_of_psql_pgbench_mysql_and_redis_cli_is_in_the_audit(
    alice: Cli, wire_broker: BrokerProcess, tmp_path: Path
) -> None:
    """What the tunnel relayed, as ``access audit --queries`` shows it: psql's simple query,
    pgbench's simple protocol (a Query per transaction) and its prepared one (one Parse per
    connection, then an Execute per transaction naming it), mysql's COM_QUERY, redis-cli's
    command and key; never a parameter value."""
    for tool in ("psql", "pgbench", "mysql", "redis-cli"):
        _require_tool(tool)
    script = tmp_path / "bench.sql"
    script.write_text("\\set v random(1, 9)\nSELECT :v AS bench_marker;\n")
    pg = _grant(alice, "svc-pg")
    steps = [
        ["psql", "-X", "-Atc", "SELECT 'psql-marker'"],
        ["pgbench", "-n", "-f", str(script), "-t", "4", "-c", "1", "-M", "simple"],
        ["pgbench", "-n", "-f", str(script), "-t", "4", "-c", "2", "-M", "prepared"],
    ]
    for argv in steps:
        done = alice.run("exec", "svc-pg", "--grant", pg, "--", *argv)
        assert done.returncode == 0, done.stdout + done.stderr
    rows = _queries(alice, pg, 1 + 4 + 2 + 8)
    simple = [r for r in rows if r["kind"] == "query" and "bench_marker" in r["text"]]
    parses = [r for r in rows if r["kind"] == "parse" and "bench_marker" in r["text"]]
    executes = [r for r in rows if r["kind"] == "execute" and "bench_marker" in r["text"]]
    assert any(r["kind"] == "query" and r["text"] == "SELECT 'psql-marker'" for r in rows), rows
    assert len(simple) == 4 and all(r["text"].startswith("SELECT ") for r in simple)
    assert len(parses) == 2 and all("$1" in r["text"] for r in parses)  # the value is a parameter
    assert len(executes) == 8 and {r["name"] for r in executes} == {r["name"] for r in parses}
    assert all(r["name"] for r in parses)  # pgbench's P0_1, …: which prepared statement ran

    my = _grant(alice, "svc-my")
    done = alice.run(
        "exec", "svc-my", "--grant", my, "--", "mysql", "-N", "-B", "-e", "SELECT 'mysql-marker'"
    )
    assert done.returncode == 0, done.stderr
    assert any("mysql-marker" in r["text"] for r in _queries(alice, my, 1))
    rd = _grant(alice, "svc-rd")
    done = alice.run("exec", "svc-rd", "--grant", rd, "--", "redis-cli", "SET", "marker:rd", "secret-value")
    assert done.returncode == 0, done.stderr
    recorded = _queries(alice, rd, 1)
    assert any(r["text"] == "SET marker:rd" for r in recorded), recorded
    assert all("secret-value" not in r["text"] for r in recorded)  # Redis values are not recorded
