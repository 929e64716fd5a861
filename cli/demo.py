"""``access demo``: the whole product in under 30 seconds, against a throwaway broker it starts.

It runs the real programs (``access-broker serve`` with TLS from a throwaway CA, the ``access``
CLI) as a person would, printing each command before running it. The one step a person would do
in a browser, the device-login page, it does itself through the same HTML forms, and says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import typer

__all__ = ["demo"]

_BIN = Path(sys.executable).parent
_CUT_TTL = "8s"


def _say(text: str) -> None:
    typer.secho(text, err=True, bold=True)


def _note(text: str) -> None:
    typer.echo(f"  {text}", err=True)


def _program(name: str) -> str:
    local = _BIN / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def _postgres_reachable() -> bool:
    """True when psql can run a query on 127.0.0.1:5432 as postgres (the demo's real target)."""
    if shutil.which("psql") is None:
        return False
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=0.5):
            pass
    except OSError:
        return False
    env = {**os.environ, "PGCONNECT_TIMEOUT": "2"}
    result = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-Atc", "select 1", "-w"],
        capture_output=True,
        text=True,
        env=env,
        timeout=10,
        check=False,
    )
    return result.returncode == 0


class _DemoService:
    """The built-in demo service (when no PostgreSQL is reachable): greets, then echoes lines."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    @staticmethod
    def _handle(conn: socket.socket) -> None:
        with conn:
            conn.sendall(b"hello from the access demo service\n")
            with contextlib.suppress(OSError):
                while data := conn.recv(65536):
                    conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


def _policy(target: str, kind: str, options: dict[str, str]) -> str:
    import yaml

    return yaml.safe_dump(
        {
            "services": [
                {
                    "name": "demo-db",
                    "kind": kind,
                    "target": target,
                    "description": "the demo target",
                    "scopes": ["read", "write"],
                    "max_ttl": "1h",
                    "options": options,
                }
            ],
            "rules": [
                {
                    "name": "sre-demo",
                    "subjects": {"groups": ["sre"]},
                    "services": ["demo-db"],
                    "scopes": ["read"],
                    "max_ttl": "30m",
                    "require": "auto",
                }
            ],
            "audit": {"readers": {"groups": ["sre"]}},
        },
        sort_keys=False,
    )


def _pump(stream: Any, lines: queue.Queue[str]) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)
    stream.close()


class _Demo:
    def __init__(self, workdir: Path) -> None:
        from access.shared.devca import make_ca

        self.workdir = workdir
        self.ca = make_ca(workdir / "ca")
        self.broker: subprocess.Popen[str] | None = None
        self.url = ""
        self.broker_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ACCESS_")},
            "ACCESS_BROKER_DATA_DIR": str(workdir / "broker"),
            "ACCESS_BROKER_DEVICE_POLL_INTERVAL": "1",
            "ACCESS_BROKER_LOG_LEVEL": "warning",
        }
        self.cli_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("ACCESS_", "PYTHON_KEYRING"))},
            "XDG_CONFIG_HOME": str(workdir / "config"),
            "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
            "ACCESS_CA_FILE": str(self.ca.ca_cert),
            "NO_COLOR": "1",
        }

    def start_broker(self, policy: Path) -> None:
        cmd = [
            _program("access-broker"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-cert",
            str(self.ca.server_cert),
            "--tls-key",
            str(self.ca.server_key),
            "--policy",
            str(policy),
        ]
        self.broker = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.broker_env,
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_pump, args=(self.broker.stderr, lines), daemon=True).start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                line = lines.get(timeout=0.5)
                match = re.search(r"listening on (\S+)", line)
                if match:
                    self.url = match.group(1)
                    self.cli_env["ACCESS_BROKER_URL"] = self.url
                    return
            if self.broker.poll() is not None:
                break
        raise RuntimeError("the demo broker did not start")

    def stop_broker(self) -> None:
        if self.broker and self.broker.poll() is None:
            self.broker.terminate()
            try:
                self.broker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.broker.kill()

    def admin(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        _note("$ access-broker " + " ".join(args))
        return subprocess.run(
            [_program("access-broker"), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.broker_env,
            timeout=60,
            check=True,
        )

    def access(self, *args: str, show: bool = True, check: bool = True) -> subprocess.CompletedProcess[str]:
        typer.secho("$ access " + " ".join(args), err=True, fg=typer.colors.CYAN)
        result = subprocess.run(
            [_program("access"), *args],
            capture_output=True,
            text=True,
            env=self.cli_env,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if show:
            for stream in (result.stdout, result.stderr):
                for line in stream.rstrip().splitlines():
                    typer.echo(f"    {line}", err=True)
        if check and result.returncode != 0:
            raise RuntimeError(f"`access {' '.join(args)}` exited {result.returncode}")
        return result

    def login(self, username: str, password: str) -> None:
        from access.cli.browser import complete_device_login

        typer.secho("$ access login --no-browser", err=True, fg=typer.colors.CYAN)
        proc = subprocess.Popen(
            [_program("access"), "login", "--no-browser"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.cli_env,
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stderr, lines), daemon=True).start()
        code = None
        deadline = time.monotonic() + 20
        while code is None and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                line = lines.get(timeout=0.5)
                typer.echo(f"    {line.rstrip()}", err=True)
                match = re.search(r"\b([B-DF-HJ-NP-TV-XZ]{4}-[B-DF-HJ-NP-TV-XZ]{4})\b", line)
                if match:
                    code = match.group(1)
        if code is None:
            proc.kill()
            raise RuntimeError("access login printed no user code")
        _say(
            f"[demo] acting as your browser: opening {self.url}/device, signing in as {username!r}, "
            f"entering {code} and pressing Approve"
        )
        complete_device_login(self.url, code, username, password, ca_file=str(self.ca.ca_cert))
        proc.wait(timeout=30)
        while not lines.empty():
            typer.echo(f"    {lines.get().rstrip()}", err=True)
        if proc.returncode != 0:
            raise RuntimeError(f"access login exited {proc.returncode}")


def _hold_connection(port: int) -> tuple[float, bytes]:
    """Open a connection through the local tunnel and wait until the far side cuts it."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
        conn.settimeout(60)
        received = b""
        with contextlib.suppress(OSError):
            while chunk := conn.recv(65536):
                received += chunk
        return time.time(), received


def demo(
    keep: bool = typer.Option(
        False, "--keep", help="Keep the demo's temporary directory and print where it is"
    ),
) -> None:
    """Run the whole loop against a throwaway broker: login, request, exec, cut at expiry, audit."""
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="access-demo-"))
    service: _DemoService | None = None
    run = _Demo(workdir)
    try:
        if _postgres_reachable():
            target, kind, options = "127.0.0.1:5432", "postgres", {"database": "postgres", "user": "postgres"}
            command = [
                "psql",
                "-Atc",
                "select 'connected to PostgreSQL as ' || current_user || ' at ' || now()",
            ]
            _say("[demo] target: the local PostgreSQL on 127.0.0.1:5432")
        else:
            service = _DemoService()
            target, kind, options = f"127.0.0.1:{service.port}", "tcp", {}
            client = (
                "import os,socket;"
                "s=socket.create_connection((os.environ['ACCESS_HOST'],int(os.environ['ACCESS_PORT'])));"
                "print(s.recv(100).decode().strip())"
            )
            command = [sys.executable, "-c", client]
            _say("[demo] no PostgreSQL reachable on 127.0.0.1:5432: using the built-in demo service")
        policy = workdir / "policy.yaml"
        policy.write_text(_policy(target, kind, options))
        password = secrets.token_urlsafe(12)

        _say("\n1. An operator starts a broker (TLS from a throwaway CA) and adds a user")
        run.admin("users", "add", "demo", "--group", "sre", "--password-stdin", stdin=password + "\n")
        run.start_broker(policy)
        _note(f"$ access-broker serve --policy {policy.name} ...   -> {run.url}")

        _say("\n2. An engineer signs in with the device flow (RFC 8628)")
        run.login("demo", password)
        run.access("whoami")
        run.access("services")

        _say("\n3. They ask for a grant; policy decides, the ledger records it")
        run.access("request", "demo-db", "--scope", "write", "--ttl", "5m", "--reason", "DEMO-1", check=False)
        run.access("request", "demo-db", "--scope", "read", "--ttl", _CUT_TTL, "--reason", "DEMO-1")
        grants = json.loads(run.access("grants", "-o", "json", show=False).stdout)
        run.access("grants")

        _say("\n4. access exec: tunnel up, command runs with the connection in its environment, tunnel down")
        run.access("exec", "demo-db", "--scope", "read", "--", *command)

        _say("\n5. A live connection is cut when the grant expires")
        connect = subprocess.Popen(
            [_program("access"), "connect", "demo-db", "--scope", "read", "-o", "json"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=run.cli_env,
        )
        typer.secho(
            "$ access connect demo-db --scope read -o json   (in the background)",
            err=True,
            fg=typer.colors.CYAN,
        )
        assert connect.stdout is not None
        info = json.loads(connect.stdout.readline())
        _note(f"tunnel on {info['address']}; grant {info['grant_id']} expires at {info['expires_at']}")
        from datetime import datetime

        expires = datetime.fromisoformat(info["expires_at"].replace("Z", "+00:00")).timestamp()
        cut_at, _ = _hold_connection(info["port"])
        _note(f"live connection cut {cut_at - expires:+.2f}s after the grant's expiry")
        _note("a new connection is refused" if _refused(info["port"]) else "a new connection was NOT refused")
        connect.terminate()
        _, err = connect.communicate(timeout=10)
        for line in err.strip().splitlines()[-4:]:
            typer.echo(f"    {line}", err=True)
        del grants

        _say("\n6. The audit trail, and the ledger's verification")
        run.access("audit", "--since", "10m")
        run.stop_broker()
        verify = run.admin("audit", "verify")
        for line in (verify.stdout + verify.stderr).strip().splitlines():
            typer.echo(f"    {line}", err=True)
        _say(f"\ndemo finished in {time.monotonic() - started:.1f}s")
    except (RuntimeError, subprocess.SubprocessError, OSError, ValueError) as exc:
        typer.secho(f"demo failed: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from exc
    finally:
        run.stop_broker()
        if service:
            service.close()
        if keep:
            typer.echo(f"demo files kept in {workdir}", err=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _refused(port: int) -> bool:
    """True when a new connection through the tunnel gets nothing: refused, or closed at once."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as again:
            again.settimeout(10)
            return again.recv(100) == b""
    except OSError:
        return True
