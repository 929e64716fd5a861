"""What the demo's service points at: the local PostgreSQL, or the built-in echo service."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time

from access.cli.demo import console

__all__ = ["EchoService", "hold_session", "policy", "postgres_reachable"]


def postgres_reachable() -> bool:
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


class EchoService:
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


def policy(target: str, kind: str, options: dict[str, str]) -> str:
    """The demo's policy: one service, ``demo-db``; the group ``sre`` may read it for 30 minutes."""
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


def hold_session(kind: str, port: int, options: dict[str, str]) -> tuple[float, str]:
    """Hold a live session through the tunnel until the broker cuts it; return when, and what."""
    if kind == "postgres":
        env = {**os.environ, "PGCONNECT_TIMEOUT": "5"}
        cmd = ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", options["user"], "-d", options["database"]]
        console.command(
            ["psql", "-h", "127.0.0.1", "-p", "PORT", "-c", "select pg_sleep(60)"], "   (a long query)"
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
