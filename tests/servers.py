"""Real servers of the tests' own: a private PostgreSQL cluster with password logins, and a
private MariaDB with TLS and the ed25519 plugin.

The machine's shared PostgreSQL trusts every loopback login, so it cannot show that the broker
answers SCRAM, MD5 or a cleartext request. ``pg_cluster`` starts a cluster of its own (one per
pytest-xdist worker: the fixture is session-scoped, and each worker is its own session) from
/usr/lib/postgresql/15/bin, on a random loopback port, with a role per method::

    access_scram  scram-sha-256      access_md5  md5 (an MD5-stored password)
    access_clear  password (cleartext)

The superuser ``postgres`` logs in over the cluster's Unix socket only (trust). initdb refuses
to run as root, so as root the cluster runs as the ``postgres`` OS user (runuser). It also
accepts TLS, with a certificate from a CA of its own (``Cluster.ca_file``). Used by the
wire machines' tests (tests/broker/wire) and the tunnel's end-to-end tests (tests/e2e).

The machine's shared MariaDB has no TLS and no ed25519 plugin, and is not ours to reconfigure:
``mariadb_server`` starts one of its own (one per pytest-xdist worker, like the cluster) with
``mariadb-install-db --no-defaults`` (about 1.6 s here) and ``mariadbd --no-defaults`` on a random
port, listening on 127.0.0.1 and 127.0.0.2 (its certificate names only the first: a second
address is a wrong host name on the same server), with TLS from a CA of its own
(``MariaDB.ca_file``) and ``auth_ed25519`` loaded. ``root`` logs in over TCP with no password;
``access_tls`` (``MariaDB.tls_password``) is a user that the server itself lets in only over TLS.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from access.broker.wire.base import TargetLogin
from access.shared.devca import make_ca

__all__ = ["BOUND", "DATABASE", "ROLES", "Cluster", "MariaDB", "mariadb_server", "pg_cluster"]

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DATABASE = "wiretest"
ROLES = {"access_scram": "scram-sha-256", "access_md5": "md5", "access_clear": "password"}
BOUND = 20.0  # seconds: every wait in the fixture and the driver


@dataclass(frozen=True)
class Cluster:
    port: int
    socket_dir: str
    passwords: dict[str, str] = field(repr=False)
    ca_file: str = ""  # the CA of the cluster's TLS certificate (for 127.0.0.1 and localhost)

    def login(self, role: str = "access_scram", *, password: str | None = None) -> TargetLogin:
        return TargetLogin(role, self.passwords[role] if password is None else password, DATABASE)

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        """The superuser, over the Unix socket."""
        return psycopg.connect(
            host=self.socket_dir, port=self.port, user="postgres", dbname=DATABASE, autocommit=True,
            connect_timeout=5,
        )  # fmt: skip


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_as_postgres(args), check=True, capture_output=True, text=True, timeout=BOUND)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


HBA = """\
local all postgres trust
host all access_scram 127.0.0.1/32 scram-sha-256
host all access_md5 127.0.0.1/32 md5
host all access_clear 127.0.0.1/32 password
host all all 127.0.0.1/32 reject
"""


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="access-pgwire-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    tls = make_ca(root / "tls")  # the server accepts TLS too (the broker's options.tls)
    if os.geteuid() == 0:
        for path in (tls.server_cert, tls.server_key):
            shutil.chown(path, "postgres", "postgres")
    tls.server_key.chmod(0o600)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(sockets, "postgres", "postgres")
    started = False
    try:
        _run([str(PG_BIN / "initdb"), "-D", str(data), "--no-sync", "-A", "trust", "-U", "postgres",
              "-E", "UTF8", "--locale=C"])  # fmt: skip
        (data / "pg_hba.conf").write_text(HBA)
        for attempt in range(3):
            port = _free_port()
            options = (
                f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={sockets} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=30 "
                "-c shared_buffers=16MB "
                f"-c ssl=on -c ssl_cert_file={tls.server_cert} -c ssl_key_file={tls.server_key}"
            )
            try:
                _run([str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-t", "15",
                      "-o", options, "start"])  # fmt: skip
                started = True
                break
            except subprocess.CalledProcessError:
                if attempt == 2:
                    raise
        passwords = {role: secrets.token_urlsafe(32) for role in ROLES}
        cluster = Cluster(port, str(sockets), passwords, str(tls.ca_cert))
        with psycopg.connect(host=str(sockets), port=port, user="postgres", dbname="postgres",
                             autocommit=True, connect_timeout=5) as conn:  # fmt: skip
            conn.execute(f"CREATE DATABASE {DATABASE}")
            for role, method in ROLES.items():
                encryption = "md5" if method == "md5" else "scram-sha-256"
                conn.execute(f"SET password_encryption = '{encryption}'")
                conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{passwords[role]}'")
        yield cluster
    finally:
        if started:
            _stop(data)
        shutil.rmtree(root, ignore_errors=True)


def _stop(data: Path) -> None:
    try:
        _run([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "-t", "10", "stop"])
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)  # the postmaster this fixture started


@dataclass(frozen=True)
class MariaDB:
    port: int
    ca_file: str  # the CA of the server's certificate (for 127.0.0.1 and localhost, not 127.0.0.2)
    tls_password: str = field(repr=False)  # of ``access_tls``@'%', which must come over TLS
    tls_user: str = "access_tls"

    def admin(self) -> pymysql.Connection[Any]:
        """``root``, over TCP with no password."""
        return pymysql.connect(
            host="127.0.0.1", port=self.port, user="root", connect_timeout=5, autocommit=True
        )


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDB]:
    root = Path(tempfile.mkdtemp(prefix="access-mariadb-"))
    data = root / "data"
    tls = make_ca(root / "tls")
    as_root = ["--user=root"] if os.geteuid() == 0 else []
    server: subprocess.Popen[bytes] | None = None
    try:
        for attempt in range(2):  # once more on a failure (seen once with several sessions' servers starting)
            shutil.rmtree(data, ignore_errors=True)
            installed = subprocess.run(
                ["mariadb-install-db", "--no-defaults", f"--datadir={data}", *as_root, "--skip-test-db",
                 "--auth-root-authentication-method=normal"],
                capture_output=True, text=True, timeout=BOUND * 3,
            )  # fmt: skip
            if installed.returncode == 0:
                break
            if attempt == 1:
                raise AssertionError(
                    f"mariadb-install-db failed ({installed.returncode}): {installed.stdout[-2000:]}"
                    f"{installed.stderr[-2000:]}"
                )
        for attempt in range(3):
            port = _free_port()
            with (root / "server.log").open("ab") as log:
                server = subprocess.Popen(
                    ["mariadbd", "--no-defaults", f"--datadir={data}", *as_root, f"--port={port}",
                     "--bind-address=127.0.0.1,127.0.0.2", f"--socket={root / 'sock'}",
                     f"--pid-file={root / 'pid'}", "--plugin-load-add=auth_ed25519",
                     "--innodb-buffer-pool-size=16M", "--skip-log-bin", "--max-connections=40",
                     f"--ssl-ca={tls.ca_cert}", f"--ssl-cert={tls.server_cert}",
                     f"--ssl-key={tls.server_key}"],
                    stdout=log, stderr=log,
                )  # fmt: skip
            if _mariadb_up(server, port):
                break
            server.kill()
            server.wait(BOUND)
            server = None
            if attempt == 2:
                log = (root / "server.log").read_text()
                raise AssertionError(f"the private MariaDB did not start: {log}")
        password = secrets.token_urlsafe(24)
        made = MariaDB(port, str(tls.ca_cert), password)
        with made.admin() as admin, admin.cursor() as cursor:
            cursor.execute("CREATE USER 'access_tls'@'%%' IDENTIFIED BY %s REQUIRE SSL", (password,))
        yield made
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(BOUND)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(BOUND)
        shutil.rmtree(root, ignore_errors=True)


def _mariadb_up(server: subprocess.Popen[bytes], port: int) -> bool:
    """Whether ``server`` answers on ``port`` within BOUND (False: it exited, e.g. the port was taken)."""
    deadline = time.monotonic() + BOUND
    while server.poll() is None and time.monotonic() < deadline:
        try:
            pymysql.connect(host="127.0.0.1", port=port, user="root", connect_timeout=2).close()
            return True
        except pymysql.err.OperationalError:
            time.sleep(0.05)  # a bounded poll for the server's port, not a synchronisation
    return False
