"""Real servers of the tests' own: a private PostgreSQL cluster with password logins.

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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from access.broker.wire.base import TargetLogin
from access.shared.devca import make_ca

__all__ = ["BOUND", "DATABASE", "ROLES", "Cluster", "pg_cluster"]

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
