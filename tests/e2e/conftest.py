"""End-to-end harness: the real broker process on a random loopback port, the real CLI as a subprocess.

Nothing here is faked: ``access-broker serve`` runs with TLS from a throwaway CA, users are added
with ``access-broker users add`` (the command run in the test's process, like a fixture: a process
of its own for each user cost about a second), and logins go through the HTML device page.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from access.shared.devca import DevCA, make_ca
from tests.conftest import DEFAULT_POLICY, LIGHT_PASSWORD_HASHING, _start_from_migrated, write_policy

BIN = Path(sys.executable).parent
ACCESS = str(BIN / "access")
ACCESS_BROKER = str(BIN / "access-broker")
START_TIMEOUT = 30.0
_IN_PROCESS = threading.Lock()


def _require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: run `bash .ci/run` or install the Debian client packages (README)"
        )
    return path


@pytest.fixture(scope="session")
def devca(tmp_path_factory: pytest.TempPathFactory) -> DevCA:
    return make_ca(tmp_path_factory.mktemp("ca"))


def _pump(stream: Any, sink: list[str], lines: queue.Queue[str]) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line)
        lines.put(line)
    stream.close()


@dataclass
class BrokerProcess:
    """A running ``access-broker serve``. ``url`` is known once it listens."""

    data_dir: Path
    database_url: str
    policy: Path
    ca: DevCA
    env: dict[str, str]
    proc: subprocess.Popen[str] | None = None
    url: str = ""
    output: list[str] = field(default_factory=list)
    args: tuple[str, ...] = ()  # more flags for ``serve``

    def admin(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``access-broker ARGS`` against this broker's database."""
        result = subprocess.run(
            [ACCESS_BROKER, *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"access-broker {' '.join(args)} failed ({result.returncode}): {result.stderr}"
            )
        return result

    def start(self, port: int = 0) -> None:
        lines: queue.Queue[str] = queue.Queue()
        self.proc = subprocess.Popen(
            [
                ACCESS_BROKER,
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--tls-cert",
                str(self.ca.server_cert),
                "--tls-key",
                str(self.ca.server_key),
                "--policy",
                str(self.policy),
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=self.env,
        )
        threading.Thread(target=_pump, args=(self.proc.stderr, self.output, lines), daemon=True).start()
        while True:
            try:
                line = lines.get(timeout=START_TIMEOUT)
            except queue.Empty:
                self.stop()
                raise AssertionError("broker did not start in time:\n" + "".join(self.output)) from None
            match = re.search(r"listening on (\S+)", line)
            if match:
                self.url = match.group(1)
                return
            if self.proc.poll() is not None:
                raise AssertionError("broker exited:\n" + "".join(self.output))

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        code = self.proc.returncode
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None
        return code

    def admin_here(self, *args: str, input: str | None = None) -> str:
        """Run the command ``access-broker ARGS`` in this process, in the environment ``admin``
        gives it: for setting a test up, where a new process would add only its start (a Python
        start and its imports: about a second each time) to the command. What it printed."""
        from typer.testing import CliRunner

        from access.broker.admin.main import app

        env: dict[str, str | None] = {name: None for name in os.environ if name not in self.env}
        env.update(self.env)
        # CliRunner swaps this process's stdin, stdout and environment while it runs: one at a time
        # (tests add users from several threads).
        with _IN_PROCESS:
            result = CliRunner().invoke(app, list(args), input=input, env=env)
        if result.exit_code != 0:
            raise AssertionError(
                f"access-broker {' '.join(args)} failed ({result.exit_code}): {result.stderr}"
                f"{result.exception!r}"
            )
        return result.stdout

    def add_user(self, name: str, password: str, *groups: str) -> None:
        """``access-broker users add NAME --password-stdin [--group G]...``, run in this process."""
        args = ["users", "add", name, "--password-stdin"]
        for group in groups:
            args += ["--group", group]
        self.admin_here(*args, input=password + "\n")

    def add_service_account(self, name: str, *groups: str, owner: str | None = None) -> dict[str, str]:
        """``access-broker service-accounts add NAME -o json [--group G]... [--owner O]``, run in
        this process: its client id and secret."""
        import json

        args = ["service-accounts", "add", name, "-o", "json"]
        for group in groups:
            args += ["--group", group]
        if owner is not None:
            args += ["--owner", owner]
        result: dict[str, str] = json.loads(self.admin_here(*args))
        return result


class Watched:
    """A CLI subprocess whose stderr is read as it comes, to wait for a line it prints (bounded)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self.proc = proc
        self.seen: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        self._pump = threading.Thread(target=_pump, args=(proc.stderr, self.seen, self._lines), daemon=True)
        self._pump.start()

    def until(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        """The first line from now on that matches ``pattern``; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise AssertionError(f"no line matched {pattern!r}:\n" + "".join(self.seen)) from None
            match = re.search(pattern, line)
            if match:
                return match

    def finish(self, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Wait for it to exit (killing it after ``timeout``); what it printed."""
        try:
            self.proc.wait(timeout=timeout)
        finally:
            self.kill()
        assert self.proc.stdout is not None
        stdout = self.proc.stdout.read()
        self.proc.stdout.close()
        self._pump.join(timeout=5)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, stdout, "".join(self.seen))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _sigint_as_in_a_terminal() -> None:
    """SIGINT back to its default in the child, as a terminal's Ctrl-C finds it: a shell starts a
    background job (a CI runner's, say) with SIGINT ignored, and every child inherits that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Cli:
    """Runs the real ``access`` CLI as a subprocess with its own config dir and no keyring."""

    home: Path
    broker: BrokerProcess

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCESS_", "PYTHON_KEYRING"))}
        env.update(
            HOME=str(self.home),
            XDG_CONFIG_HOME=str(self.home / "config"),
            XDG_DATA_HOME=str(self.home / "data"),
            PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
            ACCESS_BROKER_URL=self.broker.url,
            ACCESS_CA_FILE=str(self.broker.ca.ca_cert),
            NO_COLOR="1",
        )
        return env

    def run(
        self, *args: str, input: str | None = None, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ACCESS, *args],
            input=input,
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [ACCESS, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**self.env, **(env or {})},
            preexec_fn=_sigint_as_in_a_terminal,
        )

    def watch(self, *args: str, env: dict[str, str] | None = None) -> Watched:
        """``access ARGS`` started, its stderr read line by line as it comes (``Watched.until``)."""
        return Watched(self.popen(*args, env=env))

    def device_login(
        self, username: str, password: str, *, approve: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``access login --no-browser``, completing the HTML form as a browser would."""
        from access.cli.browser import complete_device_login

        login = self.watch("login", "--no-browser")
        code = login.until(r"\b([B-DF-HJ-NP-TV-XZ]{4}-[B-DF-HJ-NP-TV-XZ]{4})\b").group(1)
        complete_device_login(
            self.broker.url, code, username, password, ca_file=str(self.broker.ca.ca_cert), approve=approve
        )
        return login.finish()


@pytest.fixture(params=["sqlite", "postgresql"])
def e2e_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'broker-data' / 'broker.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


_MIGRATED: list[Path] = []  # this worker's migrated SQLite file (``migrated_sqlite``)


@pytest.fixture(scope="session", autouse=True)
def _migrated_for_processes(migrated_sqlite: Path) -> None:
    _MIGRATED.append(migrated_sqlite)


def make_broker_process(
    tmp_path: Path, devca: DevCA, database_url: str, policy: dict[str, Any] | None = None, **env: str
) -> BrokerProcess:
    """A broker process to start. A SQLite file that does not exist yet starts as a copy of the
    worker's migrated one (PostgreSQL's ``pg_url`` is a copy of a migrated template): the broker's
    own ``migrate`` finds it at head, as it would after the first start."""
    data_dir = tmp_path / "broker-data"
    if _MIGRATED:
        _start_from_migrated(database_url, _MIGRATED[0], data_dir)
    policy_path = write_policy(tmp_path / "policy.yaml", policy if policy is not None else DEFAULT_POLICY)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("ACCESS_")}
    base_env.update(LIGHT_PASSWORD_HASHING)
    base_env.update(
        ACCESS_BROKER_DATA_DIR=str(data_dir),
        ACCESS_BROKER_DATABASE_URL=database_url,
        ACCESS_BROKER_DEVICE_POLL_INTERVAL="1",
        ACCESS_BROKER_CHECKPOINT_INTERVAL="1",
        ACCESS_BROKER_LOG_LEVEL="warning",
        ACCESS_BROKER_DRAIN_TIMEOUT="1",  # a stop drains live tunnels this long (test_drain sets its own)
    )
    base_env.update(env)
    return BrokerProcess(
        data_dir=data_dir, database_url=database_url, policy=policy_path, ca=devca, env=base_env
    )


@contextlib.contextmanager
def running(proc: BrokerProcess) -> Iterator[BrokerProcess]:
    """Start ``proc`` and stop it afterwards, whatever happens in between."""
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def new_cli(tmp_path: Path, broker: BrokerProcess) -> Cli:
    """A CLI user with a home (config dir, token file) of their own."""
    home = tmp_path / "home"
    home.mkdir()
    return Cli(home=home, broker=broker)


@pytest.fixture
def broker(tmp_path: Path, devca: DevCA, e2e_db: str) -> Iterator[BrokerProcess]:
    """A running broker (SQLite and PostgreSQL) with alice (sre) and bob (no groups)."""
    proc = make_broker_process(tmp_path, devca, e2e_db)
    proc.add_user("alice", "alice-password-1", "sre")
    proc.add_user("bob", "bob-password-1")
    with running(proc):
        yield proc


@pytest.fixture
def cli(tmp_path: Path, broker: BrokerProcess) -> Cli:
    return new_cli(tmp_path, broker)
