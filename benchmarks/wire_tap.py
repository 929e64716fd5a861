"""CPU the PostgreSQL statement tap costs per MB of client traffic, for the tunnel's hot-path decision.

    python benchmarks/wire_tap.py [--megabytes 8] [--rounds 3] [--path DIR]

Feeds PostgreSQL's tap (``broker/wire/pgtap.py``) the client-to-server bytes of pgbench-like workloads,
one chunk per round trip as a client sends them (and, for comparison, the same bytes packed into
64 KiB chunks, as a pipelining client or a busy relay would), and prints CPU microseconds per MB
and nanoseconds per message: the best of ``--rounds``. No server is involved: it is the tap alone.
``--path`` puts another tree holding ``access/`` first (e.g. the site-packages of a compiled
install, where ``access/broker/wire/pgtap.py`` is compiled with mypyc), to compare; the default is
this worktree.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

_path = sys.argv[sys.argv.index("--path") + 1] if "--path" in sys.argv else None
sys.path.insert(0, _path or str(Path(__file__).resolve().parent.parent))  # not an installed access

from access.broker.wire import pgtap, postgres  # noqa: E402  (after the path it comes from)


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def bind(statement: bytes, value: bytes) -> bytes:
    return message(
        b"B", b"\0" + statement + b"\0" + b"\0\0\0\1" + struct.pack("!i", len(value)) + value + b"\0\0"
    )


SYNC = message(b"S", b"")
SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"
SELECT_P = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
TPCB = (
    "BEGIN;",
    "UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid};",
    "SELECT abalance FROM pgbench_accounts WHERE aid = {aid};",
    "UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = {tid};",
    "UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = {bid};",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({tid}, {bid}, {aid}, {delta}, "
    "CURRENT_TIMESTAMP);",
    "END;",
)


def simple_select(n: int) -> list[bytes]:
    """pgbench -S: one Query per transaction."""
    return [message(b"Q", SELECT.format(aid=n).encode() + b"\0")]


def extended_select(n: int) -> list[bytes]:
    """pgbench -S -M extended: Parse, Bind, Describe, Execute, Sync of the unnamed statement."""
    return [
        message(b"P", b"\0" + SELECT_P + b"\0\0\0")
        + bind(b"", str(n).encode())
        + message(b"D", b"P\0")
        + message(b"E", b"\0\0\0\0\0")
        + SYNC
    ]


def prepared_select(n: int) -> list[bytes]:
    """pgbench -S -M prepared: Bind, Describe, Execute, Sync of a prepared statement."""
    return [bind(b"P0_1", str(n).encode()) + message(b"D", b"P\0") + message(b"E", b"\0\0\0\0\0") + SYNC]


def simple_tpcb(n: int) -> list[bytes]:
    """pgbench (TPC-B like): seven Queries, one round trip each."""
    values = {"aid": n, "tid": n % 10, "bid": n % 3, "delta": n % 5000 - 2500}
    return [message(b"Q", query.format(**values).encode() + b"\0") for query in TPCB]


def copy_in(n: int) -> list[bytes]:
    """COPY ... FROM STDIN: 64 KiB CopyData messages."""
    return [message(b"d", b"%d\tsome row text\n" % n * 3000)]


WORKLOADS: dict[str, Callable[[int], list[bytes]]] = {
    "pgbench -S (simple)": simple_select,
    "pgbench -S -M extended": extended_select,
    "pgbench -S -M prepared": prepared_select,
    "pgbench TPC-B (simple)": simple_tpcb,
    "COPY FROM STDIN": copy_in,
}


def traffic(workload: Callable[[int], list[bytes]], megabytes: float) -> list[bytes]:
    chunks: list[bytes] = []
    size, n = 0, 0
    if workload is prepared_select:  # the statement is prepared once, at the start
        chunks.append(message(b"P", b"P0_1\0" + SELECT_P + b"\0\0\0") + SYNC)
    while size < megabytes * 1e6:
        for chunk in workload(n):
            chunks.append(chunk)
            size += len(chunk)
        n += 1
    return chunks


def packed(chunks: list[bytes], size: int = 65536) -> list[bytes]:
    stream = b"".join(chunks)
    return [stream[i : i + size] for i in range(0, len(stream), size)]


def count_messages(chunks: list[bytes]) -> int:
    stream, count, pos = b"".join(chunks), 0, 0
    while pos < len(stream):
        pos += 1 + struct.unpack_from("!I", stream, pos + 1)[0]
        count += 1
    return count


def cpu_seconds(chunks: list[bytes], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        recorder = postgres.tap(pending_ceiling=100_000)  # a 64 KiB chunk can hold ~10000 queries
        start = time.process_time()
        for chunk in chunks:
            recorder.client_bytes(chunk)
            recorder.take()  # the relay hands the statements on after each chunk
        best = min(best, time.process_time() - start)
        assert recorder.dropped == 0
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--megabytes", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--path", help="a tree holding access/ to import instead of this worktree's")
    args = parser.parse_args()
    print(f"{'workload':26} {'chunking':12} {'msgs/MB':>9} {'CPU µs/MB':>10} {'ns/msg':>7} {'MB/s':>7}")
    for name, workload in WORKLOADS.items():
        per_trip = traffic(workload, args.megabytes)
        size = sum(len(chunk) for chunk in per_trip) / 1e6
        messages = count_messages(per_trip)
        for chunking, chunks in (("round trip", per_trip), ("64 KiB", packed(per_trip))):
            seconds = cpu_seconds(chunks, args.rounds)
            print(
                f"{name:26} {chunking:12} {messages / size:9.0f} {seconds / size * 1e6:10.0f} "
                f"{seconds / messages * 1e9:7.0f} {size / seconds:7.0f}",
                flush=True,
            )
    build = "compiled (mypyc)" if pgtap.__file__ and not pgtap.__file__.endswith(".py") else "pure Python"
    print(f"({build}, Python {sys.version.split()[0]}; best of {args.rounds}; CPU time of this process)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
