"""The demo's policy, and the built-in echo service its service points at when no PostgreSQL is
reachable (``postgres`` has the PostgreSQL side)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

__all__ = ["EchoService", "hold_echo", "policy"]


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


def policy(target: str, kind: str, options: dict[str, str], credentials: dict[str, Any] | None = None) -> str:
    """The demo's policy: one service, ``demo-db``; the group ``sre`` may read it for 30 minutes,
    and write to it for 15 once one of the group ``leads`` approves."""
    import yaml

    service: dict[str, Any] = {
        "name": "demo-db",
        "kind": kind,
        "target": target,
        "description": "the demo target",
        "scopes": ["read", "write"],
        "max_ttl": "1h",
        "options": options,
    }
    if credentials is not None:
        service["credentials"] = credentials
    return yaml.safe_dump(
        {
            "services": [service],
            "rules": [
                {
                    "name": "sre-demo",
                    "subjects": {"groups": ["sre"]},
                    "services": ["demo-db"],
                    "scopes": ["read"],
                    "max_ttl": "30m",
                    "require": "auto",
                },
                {
                    # A write waits for a second person: one of the leads (never the requester).
                    "name": "sre-demo-write",
                    "subjects": {"groups": ["sre"]},
                    "services": ["demo-db"],
                    "scopes": ["write"],
                    "max_ttl": "15m",
                    "require": "approval",
                    "approval": {"reviewers": [{"groups": ["leads"]}], "wait": "10m"},
                },
            ],
            "audit": {"readers": {"groups": ["sre"]}},
        },
        sort_keys=False,
    )


def hold_echo(port: int) -> tuple[float, str]:
    """Hold a connection to the echo service through the tunnel until the broker cuts it; when."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
        conn.settimeout(60)
        conn.recv(100)
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass
        return time.time(), "the open connection to the demo service was closed"
