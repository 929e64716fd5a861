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
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

__all__ = ["demo"]

_BIN = Path(sys.executable).parent
_CUT_TTL = "6s"


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


def _hold_session(kind: str, port: int, options: dict[str, str]) -> tuple[float, str]:
    """Hold a live session through the tunnel until the broker cuts it; return when, and what."""
    if kind == "postgres":
        env = {**os.environ, "PGCONNECT_TIMEOUT": "5"}
        cmd = ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", options["user"], "-d", options["database"]]
        typer.secho(
            "$ psql -h 127.0.0.1 -p PORT -c 'select pg_sleep(60)'   (a long query)",
            err=True,
            fg=typer.colors.CYAN,
        )
        result = subprocess.run(
            [*cmd, "-c", "select pg_sleep(60)"],
            capture_output=True,
            text=True,
            env=env,
            timeout=90,
            check=False,
        )
        at = time.time()
        last = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
        return at, f"psql exited {result.returncode} ({last.strip()})"
    with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
        conn.settimeout(60)
        conn.recv(100)
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass
        return time.time(), "the open connection to the demo service was closed"


def _replay_handshake(run: _Demo, grant_id: str) -> str:
    """Ask the broker's tunnel endpoint for ``grant_id`` directly and report its answer."""
    import base64
    import ssl

    import httpx

    from access.shared.muxframe import SUBPROTOCOL

    tokens = json.loads((run.workdir / "config" / "access" / "tokens.json").read_text())
    entry = tokens.get(run.url, tokens) if isinstance(tokens, dict) else {}
    token = entry.get("access_token", "") if isinstance(entry, dict) else ""
    headers = {
        "Authorization": f"Bearer {token}",
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Protocol": SUBPROTOCOL,
        "Sec-WebSocket-Key": base64.b64encode(secrets.token_bytes(16)).decode(),
    }
    verify = ssl.create_default_context(cafile=str(run.ca.ca_cert))
    with httpx.Client(verify=verify, timeout=10) as http:
        response = http.get(f"{run.url}/v1/tunnel", params={"grant": grant_id}, headers=headers)
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:120]
    return f"{response.status_code}: {message}"


def demo(
    keep: bool = typer.Option(
        False, "--keep", help="Keep the demo's temporary directory and print where it is"
    ),
) -> None:
    """Run the whole loop against a throwaway broker: login, request, exec, cut at expiry, audit."""
    from access.cli.errors import CliError
    from access.shared.extras import BROKER_INSTALL_HINT, missing_broker_modules

    if missing := missing_broker_modules():
        raise CliError(
            f"access demo starts a broker, and the broker's dependencies are not installed "
            f"({', '.join(missing)})",
            hint=BROKER_INSTALL_HINT,
        )
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
        grant = json.loads(
            run.access(
                "request", "demo-db", "--scope", "read", "--ttl", "5m", "--reason", "DEMO-1", "-o", "json"
            ).stdout
        )
        run.access("grants")

        _say("\n4. access exec: tunnel up, command runs with the connection in its environment, tunnel down")
        run.access("exec", "demo-db", "--scope", "read", "--", *command)
        run.access("revoke", grant["id"])

        _say(f"\n5. A live connection is cut when the grant expires ({_CUT_TTL} grant)")
        args = [
            "connect",
            "demo-db",
            "--scope",
            "read",
            "--ttl",
            _CUT_TTL,
            "--reason",
            "DEMO-2",
            "-o",
            "json",
        ]
        typer.secho("$ access " + " ".join(args) + "   (in the background)", err=True, fg=typer.colors.CYAN)
        connect = subprocess.Popen(
            [_program("access"), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=run.cli_env,
        )
        assert connect.stdout is not None
        line = connect.stdout.readline()
        if not line:
            raise RuntimeError(
                "access connect did not start: " + (connect.stderr.read() if connect.stderr else "")
            )
        info = json.loads(line)
        expires = datetime.fromisoformat(info["expires_at"]).timestamp()
        _note(
            f"tunnel on {info['address']}:{info['port']}, grant {info['grant_id']} until {info['expires_at']}"
        )
        cut_at, how = _hold_session(kind, info["port"], options)
        _note(f"{how}: cut {cut_at - expires:+.2f}s from the grant's expiry")
        _, err = connect.communicate(timeout=15)
        for text in err.strip().splitlines()[-2:]:
            typer.echo(f"    {text}", err=True)
        _note(f"access connect exited {connect.returncode}; its port is closed")
        answer = _replay_handshake(run, info["grant_id"])
        _note(
            f"[demo] replaying the tunnel handshake for {info['grant_id']}, as a client that kept it would: "
            f"the broker answers {answer}"
        )

        _say("\n6. The audit trail, and the ledger's verification")
        run.access("audit", "--since", "10m")
        run.stop_broker()
        verify = run.admin("audit", "verify")
        for line in (verify.stdout + verify.stderr).strip().splitlines():
            typer.echo(f"    {line}", err=True)
        _say(f"\ndemo finished in {time.monotonic() - started:.1f}s")
        _note(
            "a Kubernetes cluster is one more service in the policy: kind: kubernetes, its API server, "
            "its CA and a token file for the broker (docs/kubernetes.md); then "
            "`access exec CLUSTER --scope read -- kubectl get pods -A`"
        )
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
