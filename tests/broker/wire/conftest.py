"""A private PostgreSQL cluster with password logins, and a tiny asyncio driver for the machines.

The machine's shared PostgreSQL trusts every loopback login, so it cannot show that the broker
answers SCRAM, MD5 or a cleartext request. ``pg_cluster`` starts a cluster of its own (one per
pytest-xdist worker: the fixture is session-scoped, and each worker is its own session) from
/usr/lib/postgresql/15/bin, on a random loopback port, with a role per method::

    access_scram  scram-sha-256      access_md5  md5 (an MD5-stored password)
    access_clear  password (cleartext)

The superuser ``postgres`` logs in over the cluster's Unix socket only (trust). initdb refuses
to run as root, so as root the cluster runs as the ``postgres`` OS user (runuser).

``PgDriver`` is what the tunnel will be, minus the tunnel: a loopback listener whose every
connection runs ``postgres.handshake`` against the cluster, then relays through a ``tap``.
"""

from __future__ import annotations

import asyncio
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

from access.broker.wire import postgres
from access.broker.wire.base import Statement, TargetLogin, WireError

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DATABASE = "wiretest"
ROLES = {"access_scram": "scram-sha-256", "access_md5": "md5", "access_clear": "password"}
BOUND = 20.0  # seconds: every wait in the fixture and the driver


@dataclass(frozen=True)
class Cluster:
    port: int
    socket_dir: str
    passwords: dict[str, str] = field(repr=False)

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
                "-c shared_buffers=16MB"
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
        cluster = Cluster(port, str(sockets), passwords)
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


@dataclass
class Channel:
    handshake: postgres.PostgresHandshake
    tap: postgres.PostgresTap


class PgDriver:
    """A loopback listener: each connection runs the handshake against the cluster, then relays."""

    def __init__(self, cluster: Cluster, login: TargetLogin, *, allow_cleartext: bool = False) -> None:
        self.cluster = cluster
        self.login = login
        self.allow_cleartext = allow_cleartext
        self.channels: list[Channel] = []
        self.errors: list[WireError] = []
        self.cancels: list[str] = []  # "forwarded" or "refused", one per CancelRequest served
        self.cancelled = asyncio.Condition()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> PgDriver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await asyncio.wait_for(self._server.wait_closed(), BOUND)

    def statements(self) -> list[Statement]:
        return [statement for channel in self.channels for statement in channel.tap.take()]

    def conninfo(self, **extra: str) -> str:
        params = {"host": "127.0.0.1", "port": str(self.port), "dbname": DATABASE, "user": "nobody",
                  "passfile": "/dev/null", "connect_timeout": "10", **extra}  # fmt: skip
        return " ".join(f"{key}={value}" for key, value in params.items())

    async def wait_cancels(self, count: int) -> list[str]:
        async with asyncio.timeout(BOUND), self.cancelled:
            await self.cancelled.wait_for(lambda: len(self.cancels) >= count)
        return self.cancels

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        machine = postgres.handshake(self.login, allow_cleartext=self.allow_cleartext)
        target: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            async with asyncio.timeout(BOUND):
                while not machine.done:
                    if machine.cancel_request is not None:
                        await self._cancel(machine.cancel_request)
                        return
                    writer.write(machine.data_to_client())
                    if machine.wants_target and target is None:
                        target = await asyncio.open_connection("127.0.0.1", self.cluster.port)
                    if target is not None:
                        target[1].write(machine.data_to_target())
                    if target is None:
                        data = await reader.read(65536)
                        if not data:
                            return
                        machine.feed_client(data)
                    else:
                        data = await target[0].read(65536)
                        if not data:
                            raise WireError("the target hung up during the login")
                        machine.feed_target(data)
            assert target is not None
            channel = Channel(machine, postgres.tap())
            self.channels.append(channel)
            to_target, to_client = machine.leftovers()
            writer.write(machine.data_to_client() + to_client)
            channel.tap.client_bytes(to_target)
            target[1].write(to_target)
            await asyncio.gather(
                self._pump(reader, target[1], channel.tap), self._pump(target[0], writer, None)
            )
        except WireError as exc:
            self.errors.append(exc)
            writer.write(exc.client_message)
        finally:
            for stream in (writer, *(target[1:] if target else ())):
                stream.close()
                with contextlib.suppress(OSError):
                    await asyncio.wait_for(stream.wait_closed(), BOUND)

    @staticmethod
    async def _pump(
        source: asyncio.StreamReader, sink: asyncio.StreamWriter, recorder: postgres.PostgresTap | None
    ) -> None:
        while data := await source.read(65536):
            if recorder is not None:
                recorder.client_bytes(data)
            sink.write(data)
            await sink.drain()
        sink.close()

    async def _cancel(self, presented: tuple[int, int]) -> None:
        outcome = "refused"
        for channel in self.channels:
            target_key = channel.handshake.target_key
            if target_key is not None and postgres.cancel_key_matches(
                channel.handshake.client_key, presented
            ):
                _, sink = await asyncio.open_connection("127.0.0.1", self.cluster.port)
                sink.write(postgres.cancel_message(*target_key))
                await sink.drain()
                sink.close()
                await asyncio.wait_for(sink.wait_closed(), BOUND)
                outcome = "forwarded"
        async with self.cancelled:
            self.cancels.append(outcome)
            self.cancelled.notify_all()
