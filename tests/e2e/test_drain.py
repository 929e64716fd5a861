"""A graceful stop behind a load balancer (docs/deploy.md): SIGTERM to replica A of two, with
``access connect`` holding a tunnel through A. A stops accepting; the open connection goes on;
a new one lands on replica B through the same URL; at the drain's end A cuts what is left,
writes its connection.close entries and exits 0; `access connect` carries on through B.

The balancer is a loopback TCP proxy that sends each connection to A while A accepts, else to B
(as a health-checking balancer does). Both replicas share one SQLite file and their keys (one
data directory) and are reached at the balancer's URL (their public URL, the tokens' issuer).
"""

from __future__ import annotations

import dataclasses
import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from access.shared.devca import DevCA
from tests.e2e.conftest import Cli, make_broker_process, new_cli
from tests.e2e.test_tunnel import RecordingTarget, _open_echo, _wait_for_cut
from tests.fakes.tcpproxy import TcpProxy

pytestmark = pytest.mark.e2e

DRAIN = 3.0
BOUND = 20.0


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class Balancer(TcpProxy):
    """Each connection to the first replica that accepts it, in order."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.routed: list[int] = []

        def route() -> tuple[str, int] | None:
            for port in self.ports:
                if _accepts(port):
                    self.routed.append(port)
                    return "127.0.0.1", port
            return None

        super().__init__(route)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def echo() -> Iterator[RecordingTarget]:
    target = RecordingTarget()
    yield target
    target.close()


def _policy(echo_port: int) -> dict[str, Any]:
    return {
        "services": [
            {
                "name": "svc-echo",
                "kind": "tcp",
                "target": f"127.0.0.1:{echo_port}",
                "scopes": ["read"],
                "max_ttl": "1h",
            }
        ],
        "rules": [
            {
                "name": "sre",
                "subjects": {"groups": ["sre"]},
                "services": ["svc-echo"],
                "scopes": ["read"],
                "max_ttl": "30m",
                "require": "auto",
            }
        ],
        "audit": {"readers": {"groups": ["sre"]}},
    }


def test_sigterm_drains_a_replica_and_the_cli_moves_to_the_other(
    tmp_path: Path, devca: DevCA, sqlite_url: str, echo: RecordingTarget
) -> None:
    balancer = Balancer()
    public = {"ACCESS_BROKER_PUBLIC_URL": f"https://localhost:{balancer.port}"}
    first = make_broker_process(
        tmp_path, devca, sqlite_url, _policy(echo.port), ACCESS_BROKER_DRAIN_TIMEOUT=str(DRAIN), **public
    )
    second = make_broker_process(tmp_path, devca, sqlite_url, _policy(echo.port), **public)
    first.add_user("alice", "alice-password-1", "sre")
    # Their own ports (the URL they print is the balancer's, their public URL).
    ports = [_free_port(), _free_port()]
    first.start(ports[0])
    second.start(ports[1])
    connect: subprocess.Popen[str] | None = None
    try:
        balancer.ports = ports
        alice: Cli = new_cli(tmp_path, dataclasses.replace(first, url=f"https://localhost:{balancer.port}"))
        assert alice.device_login("alice", "alice-password-1").returncode == 0
        connect = alice.popen(
            "connect", "svc-echo", "--scope", "read", "--ttl", "10m", "--reason", "drain", "-o", "json"
        )
        assert connect.stdout is not None
        info = json.loads(connect.stdout.readline())
        kept = _open_echo(info["port"])
        assert first.proc is not None
        balancer.routed.clear()

        first.proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        deadline = stopped + BOUND
        while _accepts(ports[0]):  # it stops accepting at once
            assert time.monotonic() < deadline, "the drained replica still accepts connections"
            time.sleep(0.05)
        kept.sendall(b"still here\n")  # the open connection goes on through A
        assert kept.recv(100) == b"still here\n"
        moved = _open_echo(info["port"])  # a new one: a new WebSocket, through the balancer, to B
        assert balancer.routed and set(balancer.routed) == {ports[1]}, balancer.routed

        cut = _wait_for_cut(kept, timeout=BOUND) - time.time() + time.monotonic() - stopped
        kept.close()
        assert DRAIN - 0.5 <= cut <= DRAIN + 2.0, f"cut {cut:.2f} s after SIGTERM"
        assert first.proc.wait(timeout=BOUND) == 0
        moved.sendall(b"through B\n")
        assert moved.recv(100) == b"through B\n"
        moved.close()
        assert connect.poll() is None  # `access connect` carries on

        # A wrote the close of the connection it cut before it exited.
        engine = sa.create_engine(sqlite_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.text("SELECT details FROM audit_log WHERE action = 'connection.close'")
                ).all()
        finally:
            engine.dispose()
        assert "shutdown" in [json.loads(row.details)["why"] for row in rows]
    finally:
        if connect is not None:
            connect.terminate()
            _, err = connect.communicate(timeout=BOUND)
        first.stop()
        second.stop()
        balancer.close()
    assert "the broker is restarting: 1 open connection(s) go on for up to 3 s" in err, err
    assert "were cut; new ones go through another" in err, err
