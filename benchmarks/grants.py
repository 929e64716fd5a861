"""Grant issuance: ``POST /v1/grants`` on the broker (SQLite, PostgreSQL) against a bare endpoint.

    python benchmarks/grants.py [--seconds 8] [--concurrency 8] [--rounds 1] [--only sqlite,postgres,bare]

In one run, each as its own process served by uvicorn with the broker's settings (uvloop,
httptools, plain HTTP on loopback, access log off):

- the broker, started as users start it (``access-broker serve``, so ``server.run``), on SQLite
  in a temporary data directory, and on PostgreSQL in a throwaway database on ``--pg``
  (``access_bench_grants_<pid>``, dropped at the end); a service account in group ``bench``
  signs in with client credentials (``POST /oauth/token``), and a policy gives the group
  ``bench-svc`` scope ``read`` with ``require: auto``, so every request is decided, audited
  and stored as a new active grant (there is no "reuse an active grant": each 201 is a new
  ``g-...`` id, checked below);
- a bare FastAPI app (``bare``): one sync ``POST`` route that parses the same ``GrantRequest``
  body and returns a small JSON object: what FastAPI, pydantic and uvicorn cost on their own.

``--concurrency`` clients, each on one keep-alive connection (a small client on raw asyncio
streams, so the load generator's own CPU stays small beside the server's), send requests for
``--seconds`` after a short warm-up. Printed per server: requests/s, p50 and p99 latency, the
server's CPU per request (user + system from ``/proc/PID/stat``), and each broker's ratio
against ``bare`` in the same round. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # the benchmark's own helpers

TICK = os.sysconf("SC_CLK_TCK")
PG_URL = "postgresql://postgres@127.0.0.1:5432"
BODY = json.dumps(
    {"service": "bench-svc", "scope": "read", "ttl": "1h", "reason": "grant benchmark"}
).encode()
WARMUP = 1.0  # seconds of requests before the measured window (first connections, caches)

# The bare app: the same route shape as POST /v1/grants (a sync route, a pydantic body) and
# uvicorn's settings as server.run gives the broker's.
BARE = textwrap.dedent(
    """
    import socket, sys
    import uvicorn
    from fastapi import FastAPI
    from access.shared.models import GrantRequest

    app = FastAPI(docs_url=None, redoc_url=None)

    @app.post("/v1/grants", status_code=201)
    def grant(body: GrantRequest) -> dict[str, str]:
        return {"id": "g-0", "service": body.service, "scope": body.scope}

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(app, loop="uvloop", http="httptools", ws="websockets-sansio",
                            lifespan="on", log_level="warning", access_log=False,
                            server_header=False, proxy_headers=False)
    uvicorn.Server(config).run(sockets=[sock])
    """
)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


# -- servers -------------------------------------------------------------------------------------


def write_policy(path: Path) -> None:
    policy = {
        "services": [
            {
                "name": "bench-svc",
                "kind": "tcp",
                "target": "127.0.0.1:9",
                "scopes": ["read"],
                "max_ttl": "2h",
            }
        ],
        "rules": [
            {
                "name": "bench",
                "subjects": {"groups": ["bench"]},
                "services": ["bench-svc"],
                "scopes": ["read"],
                "max_ttl": "2h",
                "require": "auto",
            }
        ],
    }
    path.write_text(yaml.safe_dump(policy, sort_keys=False))


def start_broker(procs: bench.Processes, tmp: Path, name: str, database_url: str | None) -> tuple[int, int]:
    """``access-broker serve`` on plain HTTP with its own data directory. Returns (port, pid)."""
    policy = tmp / "policy.yaml"
    if not policy.exists():
        write_policy(policy)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCESS_", "PG"))}
    env = {**base_env, "ACCESS_BROKER_DATA_DIR": str(tmp / name), "ACCESS_BROKER_LOG_LEVEL": "warning"}
    if database_url is not None:
        env["ACCESS_BROKER_DATABASE_URL"] = database_url
    ready = tmp / f"{name}.url"
    proc = procs.start(
        name,
        [
            str(bench.BIN / "access-broker"),
            "serve",
            "--policy",
            str(policy),
            "--port",
            "0",
            "--ready-file",
            str(ready),
        ],
        env=env,
    )
    deadline = time.monotonic() + 60
    while not ready.exists() or not ready.read_text().strip():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the broker did not start: see {procs.logdir / (name + '.log')}")
        time.sleep(0.05)
    port = int(ready.read_text().strip().rsplit(":", 1)[1].rstrip("/"))
    return port, proc.pid


def service_account_token(tmp: Path, name: str, database_url: str | None, port: int) -> str:
    """A service account in group ``bench`` (``access-broker service-accounts add``), signed in
    with client credentials: its access token."""
    import httpx

    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCESS_", "PG"))}
    env = {**base_env, "ACCESS_BROKER_DATA_DIR": str(tmp / name)}
    if database_url is not None:
        env["ACCESS_BROKER_DATABASE_URL"] = database_url
    account = bench.add_service_account(env)
    answer = httpx.post(
        f"http://127.0.0.1:{port}/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": account["client_id"],
            "client_secret": account["client_secret"],
        },
        timeout=30,
    )
    answer.raise_for_status()
    token: str = answer.json()["access_token"]
    return token


def start_bare(procs: bench.Processes, tmp: Path) -> tuple[int, int]:
    script = tmp / "bare.py"
    script.write_text(BARE)
    proc = procs.start("bare", [sys.executable, str(script)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    bench.wait_port(port, proc=proc)
    return port, proc.pid


# -- load ----------------------------------------------------------------------------------------


async def _one(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes, ids: set[bytes] | None
) -> None:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = head[9:12]
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    body = await reader.readexactly(length)
    if status != b"201":
        raise RuntimeError(f"expected 201, got {head[:12]!r}: {body[:300]!r}")
    if ids is not None:
        grant_id = json.loads(body)["id"]
        if grant_id in ids:
            raise RuntimeError(f"grant {grant_id} came back twice: a request did not issue a new grant")
        ids.add(grant_id)


async def drive(port: int, token: str | None, clients: int, seconds: float) -> tuple[int, list[float]]:
    """``clients`` keep-alive connections sending POST /v1/grants back to back: (requests in the
    measured window, their latencies in ms)."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = (
        f"POST /v1/grants HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"{auth}Content-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY
    ids: set[bytes] | None = set() if token else None
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from = start + WARMUP
    stop_at = measure_from + seconds
    latencies: list[float] = []

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                began = loop.time()
                if began >= stop_at:
                    return
                await _one(reader, writer, request, ids)
                if began >= measure_from:
                    latencies.append((loop.time() - began) * 1000)
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return len(latencies), latencies


def measure(port: int, pid: int, token: str | None, clients: int, seconds: float) -> dict[str, float]:
    async def warm_then_measure() -> tuple[int, list[float], float]:
        # CPU is read at the start of the measured window: a task that waits out the warm-up.
        cpu_at: list[float] = []

        async def read_cpu() -> None:
            await asyncio.sleep(WARMUP)
            cpu_at.append(cpu_seconds(pid))

        reader = asyncio.create_task(read_cpu())
        count, latencies = await drive(port, token, clients, seconds)
        await reader
        return count, latencies, cpu_at[0]

    count, latencies, cpu_before = asyncio.run(warm_then_measure())
    cpu = cpu_seconds(pid) - cpu_before
    return {
        "rps": count / seconds,
        "p50_ms": statistics.median(latencies),
        "p99_ms": bench.percentile(latencies, 99),
        "cpu_ms": cpu / count * 1000,
    }


def create_database(name: str) -> str:
    import psycopg

    with psycopg.connect(PG_URL + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", default="bare,sqlite,postgres", help="which servers, comma-separated")
    parser.add_argument(
        "--pid-file", type=Path, help="write the brokers' pids here (name pid), for a profiler"
    )
    args = parser.parse_args()
    which = args.only.split(",")
    print(bench.access_build(), flush=True)
    pg_db = f"access_bench_grants_{os.getpid()}"
    with bench.workspace() as (tmp, procs):
        servers: dict[str, tuple[int, int, str | None]] = {}
        try:
            if "bare" in which:
                port, pid = start_bare(procs, tmp)
                servers["bare"] = (port, pid, None)
            for name in ("sqlite", "postgres"):
                if name not in which:
                    continue
                url = create_database(pg_db) if name == "postgres" else None
                port, pid = start_broker(procs, tmp, name, url)
                servers[name] = (port, pid, service_account_token(tmp, name, url, port))
            if args.pid_file:
                args.pid_file.write_text("".join(f"{n} {s[1]}\n" for n, s in servers.items()))
            for round_no in range(1, args.rounds + 1):
                results = {
                    name: measure(port, pid, token, args.concurrency, args.seconds)
                    for name, (port, pid, token) in servers.items()
                }
                bare = results.get("bare")
                for name, r in results.items():
                    ratio = f"  {r['rps'] / bare['rps']:.2f}x bare" if bare and name != "bare" else ""
                    print(
                        f"round {round_no} {name:8} {r['rps']:7,.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                        f"p99 {r['p99_ms']:6.2f} ms  cpu {r['cpu_ms']:5.2f} ms/req{ratio}",
                        flush=True,
                    )
        finally:
            procs.stop()
            if "postgres" in which:
                drop_database(pg_db)
    return 0


if __name__ == "__main__":
    sys.exit(main())
