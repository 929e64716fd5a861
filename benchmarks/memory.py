"""The broker's memory (RSS) under the attacks of issue 9, and after them.

    python benchmarks/memory.py [--channels 256] [--settle 6] [--output benchmarks/memory.json]

Starts a real ``access-broker`` serving TLS (``run.py``'s setup: throwaway CA, a service account
signed in with client credentials) and a target that streams without end (``servers.py stream``),
then reads the broker process's resident set size (``/proc/PID/status``, VmRSS) at each step:

1. idle, after one ordinary request;
2. while four unauthenticated connections each send a 32 MiB header that never ends;
3. while one connection holds a request with an 8 MiB header (and what it was answered);
4. while one WebSocket that stopped reading holds ``--channels`` channels of the streaming target;
5. after everything is closed.

Each "while" figure is the highest RSS seen over ``--settle`` seconds with the attack in place.
Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import socket
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # the benchmark's own helpers

from access.shared.muxframe import OPEN, SUBPROTOCOL, header
from access.shared.wsframe import masked_frame

MIB = 1024 * 1024
PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"  # named in the policy, never connected to


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def peak_over(pid: int, seconds: float) -> float:
    """The highest RSS seen over ``seconds`` (sampled every 0.1 s)."""
    deadline = time.monotonic() + seconds
    peak = rss_mib(pid)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        peak = max(peak, rss_mib(pid))
    return peak


class Attack:
    """Connections to the broker that an attacker holds open (TLS unless ``ca`` is None)."""

    def __init__(self, url: str, ca: Path | None) -> None:
        self.host, port = url.split("://", 1)[1].split(":")
        self.port = int(port)
        self.context = ssl.create_default_context(cafile=str(ca)) if ca is not None else None
        self.socks: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.answers: list[str] = []

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        if self.context is not None:
            sock = self.context.wrap_socket(sock, server_hostname=self.host)
        self.socks.append(sock)
        return sock

    def send_in_background(self, sock: socket.socket, data: bytes, *, then_read: bool = False) -> None:
        """Send ``data`` (the broker may stop reading, or close) and, if asked, read the answer."""

        def go() -> None:
            # The broker may stop reading and close (or we close it, still sending).
            with contextlib.suppress(OSError, ValueError):
                sock.sendall(data)
            if not then_read:
                return
            try:
                # What the broker answered, if anything (it may have answered early and closed).
                status = sock.recv(64).split(b"\r\n", 1)[0].decode("latin-1")
                self.answers.append(status or "closed without an answer")
            except (OSError, ValueError):
                self.answers.append("no answer")

        thread = threading.Thread(target=go, daemon=True)
        thread.start()
        self.threads.append(thread)

    def close(self) -> None:
        for sock in self.socks:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self.threads:
            thread.join(10)
        self.socks.clear()
        self.threads.clear()


def unfinished_head(size: int) -> bytes:
    return b"GET /v1/services HTTP/1.1\r\nHost: broker\r\nX-Big: " + b"a" * size


def big_head(size: int) -> bytes:
    return b"GET /healthz HTTP/1.1\r\nHost: broker\r\nX-Big: " + b"a" * size + b"\r\n\r\n"


def tunnel_head(grant_id: str, token: str, host: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /v1/tunnel?grant={grant_id} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()


def sign_in(url: str, ca: Path | None, tmp: Path) -> tuple[str, str]:
    """An access token for the benchmark's service account, and a grant to bench-stream."""
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca)) if ca is not None else False
    with httpx.Client(base_url=url, verify=verify, timeout=30) as http:
        got = http.post(
            "/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": (tmp / "client-id").read_text().strip(),
                "client_secret": (tmp / "client-secret").read_text().strip(),
            },
        )
        got.raise_for_status()
        token = str(got.json()["access_token"])
        made = http.post(
            "/v1/grants",
            json={"service": "bench-stream", "scope": "read", "ttl": "1h", "reason": "memory benchmark"},
            headers={"Authorization": f"Bearer {token}"},
        )
        made.raise_for_status()
        return token, str(made.json()["id"])


def heads(pid: int, url: str, ca: Path | None, settle: float, figures: dict[str, Any]) -> None:
    attack = Attack(url, ca)
    for _ in range(4):
        attack.send_in_background(attack.connect(), unfinished_head(32 * MIB), then_read=True)
    key = "4 unfinished 32 MiB heads"
    figures[key] = peak_over(pid, settle)
    attack.close()
    figures[f"{key}: answers"] = sorted(set(attack.answers))
    bench.log(f"{key}: {figures[key]:.1f} MiB")

    attack = Attack(url, ca)
    attack.send_in_background(attack.connect(), big_head(8 * MIB), then_read=True)
    key = "8 MiB head"
    figures[key] = peak_over(pid, settle)
    attack.close()
    figures[f"{key}: answer"] = attack.answers
    bench.log(f"{key}: {figures[key]:.1f} MiB, answered {attack.answers}")


def tunnel(
    pid: int, url: str, ca: Path | None, tmp: Path, channels: int, settle: float, figures: dict[str, Any]
) -> None:
    token, grant_id = sign_in(url, ca, tmp)
    attack = Attack(url, ca)
    sock = attack.connect()
    sock.sendall(tunnel_head(grant_id, token, attack.host))
    answer = b""
    while b"\r\n\r\n" not in answer:
        piece = sock.recv(1)  # byte by byte: nothing past the head is read
        if not piece:
            break
        answer += piece
    status = answer.split(b"\r\n", 1)[0].decode("latin-1")
    if not status.startswith("HTTP/1.1 101"):
        raise RuntimeError(f"the tunnel was refused: {status}")
    # Open every channel, then never read again: the broker relays the stream into a
    # connection whose reader has stopped.
    sock.sendall(masked_frame(b"".join(header(OPEN, i, 0) for i in range(1, channels + 1))))
    key = f"non-reading WebSocket, {channels} channels"
    figures[key] = peak_over(pid, settle)
    bench.log(f"{key}: {figures[key]:.1f} MiB")
    attack.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--channels", type=int, default=256, help="channels of the non-reading WebSocket")
    parser.add_argument("--settle", type=float, default=6.0, help="seconds each attack is held")
    parser.add_argument("--output", type=Path, default=None, help="also write the figures as JSON")
    parser.add_argument("--only", choices=["heads", "tunnel"], default=None, help="run only these attacks")
    parser.add_argument("--no-tls", action="store_true", help="plain HTTP on loopback (to compare)")
    args = parser.parse_args(argv)
    figures: dict[str, Any] = {}
    with bench.workspace() as (tmp, procs):
        targets = {name: bench.start_target(procs, name) for name in ("echo", "sink", "stream")}
        url, ca_file, _env = bench.start_broker(procs, tmp, targets, PG_URL, tls=not args.no_tls)
        ca = None if args.no_tls else ca_file
        pid = next(p for p in procs.procs if "serve" in p.args).pid
        sign_in(url, ca, tmp)  # one ordinary request first: what every broker has loaded
        figures["idle"] = peak_over(pid, 1.0)
        bench.log(f"idle: {figures['idle']:.1f} MiB")
        if args.only in (None, "heads"):
            heads(pid, url, ca, args.settle, figures)
        if args.only in (None, "tunnel"):
            tunnel(pid, url, ca, tmp, args.channels, args.settle, figures)
        time.sleep(args.settle / 2)
        figures["after close"] = rss_mib(pid)
        bench.log(f"after close: {figures['after close']:.1f} MiB")
        figures["broker"] = bench.access_build() + ("" if ca else ", plain HTTP")
    width = max(len(k) for k in figures)
    for name, value in figures.items():
        shown = f"{value:8.1f} MiB" if isinstance(value, float) else str(value)
        print(f"{name.ljust(width)}  {shown}")
    if args.output is not None:
        args.output.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
