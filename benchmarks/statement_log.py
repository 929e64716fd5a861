"""What the statement log costs: microseconds per statement in ``add`` (the event loop's share),
the flush's (worker thread) share, and ledger entries per 10 000 statements.

    python benchmarks/statement_log.py [--statements 10000] [--per-add 1] [--connections 4]
                                       [--database-url URL] [--rounds 3]

A real broker on a fresh SQLite file (or ``--database-url``, e.g. a PostgreSQL database you made
for it); pgbench -S-like statements, ``--per-add`` of them per ``add`` call (one Tap.take() batch
per client chunk: 1 for a client waiting on each answer), spread over ``--connections`` channels.
Prints the best of ``--rounds``. Entries are counted for a flush at the end (full 500-statement
batches: the fewest) and for a flush every 100 statements per channel (a slower client whose
statements are written every second, about the most a one-second interval gives).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this worktree, not an installed access

from access.broker.audit.statements import statement_log_for
from access.broker.clock import SystemClock
from access.broker.policy import policy_from_data
from access.broker.runtime import Broker
from access.broker.settings import Settings
from access.broker.wire.base import Statement


def make_broker(data_dir: Path, url: str | None) -> Broker:
    settings = Settings(
        data_dir=data_dir,
        database_url=url or f"sqlite:///{data_dir / 'broker.db'}",
        statement_log_limit=10_000_000,
        statement_log_bytes=2**31,
    )
    return Broker.from_settings(settings, clock=SystemClock(), policy=policy_from_data({}))


def run(
    broker: Broker, total: int, per_add: int, connections: int, flush_every: int | None
) -> dict[str, float]:
    log = statement_log_for(broker)
    before = log.entries
    select = "SELECT abalance FROM pgbench_accounts WHERE aid = "
    chunks = [
        [Statement("query", select + f"{i * per_add + j};") for j in range(per_add)]
        for i in range(total // per_add)
    ]
    add_seconds = flush_seconds = 0.0
    per_channel = [0] * connections
    for i, chunk in enumerate(chunks):
        channel = i % connections
        started = time.thread_time()
        ok = log.add(
            connection_id=f"c-{channel:016x}",
            grant_id="g-00000000000000aa",
            service="svc-bench",
            actor="bench",
            statements=chunk,
        )
        add_seconds += time.thread_time() - started
        assert ok
        per_channel[channel] += len(chunk)
        if flush_every is not None and per_channel[channel] >= flush_every and channel == connections - 1:
            started = time.thread_time()
            log.flush()
            flush_seconds += time.thread_time() - started
            per_channel = [0] * connections
    started = time.thread_time()
    log.flush()
    flush_seconds += time.thread_time() - started
    count = len(chunks) * per_add
    return {
        "add_us": add_seconds / count * 1e6,
        "flush_us": flush_seconds / count * 1e6,
        "entries_per_10k": (log.entries - before) * 10_000 / count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statements", type=int, default=10_000)
    parser.add_argument("--per-add", type=int, default=1)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--database-url")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = make_broker(Path(tmp), args.database_url)
        where = broker.engine.dialect.name
        for label, every in (("flush at the end", None), ("flush every 100 per channel", 100)):
            results = [
                run(broker, args.statements, args.per_add, args.connections, every)
                for _ in range(args.rounds)
            ]
            add = min(r["add_us"] for r in results)
            flush = min(r["flush_us"] for r in results)
            entries = results[0]["entries_per_10k"]
            print(
                f"{where}, {label}: add {add:.2f} us/statement ({args.per_add} per add, "
                f"{args.connections} channels), flush {flush:.2f} us/statement, "
                f"{entries:.0f} ledger entries per 10k statements"
            )
        broker.engine.dispose()


if __name__ == "__main__":
    main()
