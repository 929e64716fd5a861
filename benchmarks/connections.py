"""One broker holding many tunnel connections with traffic, and grant requests beside them.

``python benchmarks/connections.py [--connections 1000] [--seconds 60] [--grants-per-s 5]``

Through one `access connect` (which opens a WebSocket per 256 connections) to an echo target:
opens ``--connections`` connections, measures the broker's and the CLI's memory per idle
connection, then for ``--seconds`` sends 64 bytes on every connection about once a second
(staggered) and times each round trip, while a thread asks for grants at ``--grants-per-s``.
The same load runs first through `ssh -L` and straight to the target, for the ratios. Prints the
figures as JSON: any error (a wrong echo, a reset, a timeout, a refused grant) is counted,
never hidden. Needs sshd and ssh (as run.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory import rss_mib
from run import (
    Processes,
    percentile,
    start_access_connect,
    start_broker,
    start_ssh,
    start_target,
    workspace,
)

PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"  # named in the policy, never connected to
MESSAGE = 64
ROUND_TRIP_TIMEOUT = 10.0


async def _open(port: int, count: int) -> tuple[list[tuple[asyncio.StreamReader, asyncio.StreamWriter]], int]:
    """``count`` connections to ``port``, each checked with one echo; (connections, errors)."""
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    errors = 0
    for start in range(0, count, 50):  # in steps: a burst of 1000 SYNs overflows listen backlogs
        batch = await asyncio.gather(
            *(asyncio.open_connection("127.0.0.1", port) for _ in range(min(50, count - start))),
            return_exceptions=True,
        )
        for item in batch:
            if isinstance(item, BaseException):
                errors += 1
            else:
                conns.append(item)
    checks = await asyncio.gather(*(_round_trip(r, w) for r, w in conns), return_exceptions=True)
    errors += sum(1 for c in checks if isinstance(c, BaseException))
    return conns, errors


async def _round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
    payload = random.randbytes(MESSAGE)
    started = time.perf_counter()
    writer.write(payload)
    got = await asyncio.wait_for(reader.readexactly(MESSAGE), ROUND_TRIP_TIMEOUT)
    if got != payload:
        raise ValueError("the echo differs")
    return time.perf_counter() - started


async def _load(
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]], seconds: float
) -> dict[str, Any]:
    """Every connection: a round trip about once a second for ``seconds``."""
    rtts: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal errors
        await asyncio.sleep(random.random())  # staggered
        while time.monotonic() < deadline:
            try:
                rtts.append(await _round_trip(reader, writer))
            except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError):
                errors += 1
                return
            await asyncio.sleep(1.0)

    await asyncio.gather(*(one(r, w) for r, w in conns))
    rtts.sort()
    return {
        "round_trips": len(rtts),
        "errors": errors,
        "rtt_p50_ms": round(percentile(rtts, 50) * 1000, 2) if rtts else None,
        "rtt_p99_ms": round(percentile(rtts, 99) * 1000, 2) if rtts else None,
    }


def _close(conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for _, writer in conns:
        writer.close()


class Grants(threading.Thread):
    """Grant requests at a steady rate, for as long as the load runs."""

    def __init__(self, url: str, ca: Path, tmp: Path, rate: float) -> None:
        super().__init__(daemon=True)
        self.url, self.ca, self.tmp, self.rate = url, ca, tmp, rate
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.errors: list[str] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, verify=str(self.ca), timeout=30) as http:
            got = http.post(
                "/oauth/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": (self.tmp / "client-id").read_text().strip(),
                    "client_secret": (self.tmp / "client-secret").read_text().strip(),
                },
            )
            got.raise_for_status()
            headers = {"Authorization": f"Bearer {got.json()['access_token']}"}
            body = {"service": "bench-echo", "scope": "read", "ttl": "5m", "reason": "load benchmark"}
            next_at = time.monotonic()
            while not self.stop.is_set():
                started = time.perf_counter()
                try:
                    answer = http.post("/v1/grants", json=body, headers=headers)
                    if answer.status_code >= 300:
                        self.errors.append(f"{answer.status_code} {answer.text[:200]}")
                    else:
                        self.latencies.append(time.perf_counter() - started)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                next_at += 1 / self.rate
                self.stop.wait(max(0.0, next_at - time.monotonic()))


async def _through(port: int, count: int, seconds: float) -> tuple[dict[str, Any], Any]:
    conns, errors = await _open(port, count)
    result = await _load(conns, seconds)
    result["open_errors"] = errors
    result["connections"] = len(conns)
    return result, conns


def measure(procs: Processes, tmp: Path, count: int, seconds: float, rate: float) -> dict[str, Any]:
    targets = {"echo": start_target(procs, "echo"), "sink": start_target(procs, "sink")}
    ssh = start_ssh(procs, tmp, {"echo": targets["echo"]})
    url, ca, env = start_broker(
        procs,
        tmp,
        targets,
        PG_URL,
        # One user's connections through one process: the default (512) is a per-person guard.
        broker_settings={"ACCESS_BROKER_MAX_CHANNELS_PER_USER": str(count + 100)},
    )
    broker = next(p for p in procs.procs if "serve" in p.args)
    port = start_access_connect(procs, "bench-echo", env)
    cli = procs.procs[-1]
    results: dict[str, Any] = {}
    short = min(seconds, 20.0)
    for name, target in (("direct", targets["echo"]), ("ssh -L", ssh["echo"])):
        results[name] = asyncio.run(_through_and_close(target, count, short))
    time.sleep(1)
    idle = {"broker": rss_mib(broker.pid), "cli": rss_mib(cli.pid)}

    async def access() -> dict[str, Any]:
        conns, errors = await _open(port, count)
        await asyncio.sleep(2)  # settle
        held = {"broker": rss_mib(broker.pid), "cli": rss_mib(cli.pid)}
        grants = Grants(url, ca, tmp, rate)
        grants.start()
        result = await _load(conns, seconds)
        grants.stop.set()
        grants.join(30)
        _close(conns)
        grants.latencies.sort()
        result.update(
            open_errors=errors,
            connections=len(conns),
            broker_kib_per_connection=round((held["broker"] - idle["broker"]) * 1024 / max(1, len(conns)), 1),
            cli_kib_per_connection=round((held["cli"] - idle["cli"]) * 1024 / max(1, len(conns)), 1),
            grants_issued=len(grants.latencies),
            grant_errors=len(grants.errors),
            grant_error_samples=grants.errors[:3],
            grant_p50_ms=round(percentile(grants.latencies, 50) * 1000, 1) if grants.latencies else None,
            grant_p99_ms=round(percentile(grants.latencies, 99) * 1000, 1) if grants.latencies else None,
        )
        return result

    results["access"] = asyncio.run(access())
    for name in ("direct", "ssh -L"):
        if results[name]["rtt_p99_ms"] and results["access"]["rtt_p99_ms"]:
            results["access"][f"rtt_p99_vs_{name.replace(' ', '_')}"] = round(
                results["access"]["rtt_p99_ms"] / results[name]["rtt_p99_ms"], 2
            )
    return results


async def _through_and_close(port: int, count: int, seconds: float) -> dict[str, Any]:
    result, conns = await _through(port, count, seconds)
    _close(conns)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--grants-per-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    with workspace() as (tmp, procs):
        results = measure(procs, tmp, args.connections, args.seconds, args.grants_per_s)
    print(json.dumps(results, indent=2))
    access = results["access"]
    failed = access["errors"] + access["open_errors"] + access["grant_errors"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
