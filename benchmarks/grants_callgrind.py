"""Instructions per ``POST /v1/grants`` on the served broker, counted by callgrind.

    python benchmarks/grants_callgrind.py [--db sqlite|postgres] [--concurrency 8] [--per-client 25]

CPU time per request moves by tens of percent on a shared machine; the instructions a request
costs much less (5-10% here: the background loops run by the clock, so a slower run counts
more of them; compare runs made at the same load). ``access-broker serve`` runs under ``valgrind
--tool=callgrind --instr-atstart=no`` as ``benchmarks/grants.py`` starts it; after a warm-up,
counting is switched on from outside (``callgrind_control -i on``, ``-z``) around
``--concurrency`` clients x ``--per-client`` requests on keep-alive connections, then dumped
(``-d``). The thread pool, uvicorn, the middleware and the background loops are all counted.
Needs valgrind. A run takes a minute or two: the broker runs about 50 times slower under it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grants as bench_grants  # the benchmark's broker start and client
import run as bench


def count(out: Path) -> int:
    """The instructions in callgrind's dump ``out`` (its ``summary:`` line)."""
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"no summary in {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--per-client", type=int, default=25)
    args = parser.parse_args()
    # The broker starts about 50 times slower under valgrind: stretch the start's deadline.
    bench_grants.time = types.SimpleNamespace(monotonic=lambda: time.monotonic() / 10, sleep=time.sleep)  # type: ignore[assignment]
    pg_db = f"access_bench_callgrind_{os.getpid()}"
    with bench.workspace() as (tmp, procs):
        out = tmp / "callgrind.out"
        start = procs.start

        def under_valgrind(name: str, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
            # Queued behind the slowed broker, a request may wait long for SQLite's one connection.
            kw["env"] = {**kw.get("env", {}), "ACCESS_BROKER_DB_POOL_TIMEOUT": "120"}
            cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
            return start(name, [*cmd, *argv], **kw)

        procs.start = under_valgrind  # type: ignore[method-assign]
        url = bench_grants.create_database(pg_db) if args.db == "postgres" else None
        try:
            port, _pid = bench_grants.start_broker(procs, tmp, args.db, url)
            token = bench_grants.service_account_token(tmp, args.db, url, port)
            request = (
                f"POST /v1/grants HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {token}\r\nContent-Length: {len(bench_grants.BODY)}\r\n\r\n"
            ).encode() + bench_grants.BODY

            async def clients(each: int) -> None:
                async def client() -> None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    for _ in range(each):
                        await bench_grants._one(reader, writer, request, None)
                    writer.close()

                await asyncio.gather(*(client() for _ in range(args.concurrency)))

            asyncio.run(clients(5))  # warm-up: connections, caches, the lazily built routes
            pid = str(procs.procs[-1].pid)
            control = ["callgrind_control"]
            subprocess.run([*control, "-i", "on", pid], check=True, capture_output=True)
            subprocess.run([*control, "-z", pid], check=True, capture_output=True)
            asyncio.run(clients(args.per_client))
            subprocess.run([*control, "-d", "measured", pid], check=True, capture_output=True)
            subprocess.run([*control, "-i", "off", pid], check=True, capture_output=True)
            deadline = time.monotonic() + 30
            while not (dumps := sorted(tmp.glob("callgrind.out.*"))) or "summary:" not in dumps[-1].read_text(
                errors="replace"
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError("callgrind wrote no dump")
                time.sleep(0.2)
            requests = args.concurrency * args.per_client
            print(bench.access_build())
            print(
                f"{args.db}: {count(dumps[-1]) / requests / 1e6:.3f} M instructions per request "
                f"({requests} requests at concurrency {args.concurrency})"
            )
        finally:
            procs.stop()
            if args.db == "postgres":
                bench_grants.drop_database(pg_db)
    return 0


if __name__ == "__main__":
    sys.exit(main())
