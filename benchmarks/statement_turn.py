"""Instructions per statement on the event loop's side of statement audit, counted by callgrind.

    python benchmarks/statement_turn.py [--mode simple|prepared] [--turns 2000] [--wall]

What a logged-in PostgreSQL channel runs per client chunk besides the relay: the tap
(``PostgresTap.feed`` of a pgbench -S chunk: a Query, or with ``prepared`` a Bind, Describe,
Execute and Sync), the hand-off (``AddSide.add``) and the end of the loop turn (the journal
line, the journal's append, the hand-over to the writer's queue), for three connections, one
add each per turn. Nothing is flushed to the ledger (that is the writer's thread). The process
runs itself twice under ``valgrind --tool=callgrind`` (``--turns`` and 500 more), so what
Python's start costs cancels out; ``--wall`` times it once instead. The broker's heap is frozen
first as ``server.freeze_startup_heap`` does. Uses the installed ``access``: run it from outside
the checkout, with the Python of a compiled install (``access --version``), or it measures the
pure-Python modules.
"""

from __future__ import annotations

import argparse
import gc
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONNECTIONS = 3
BASE_TURNS = 500


def _message(letter: bytes, body: bytes) -> bytes:
    return letter + struct.pack("!I", 4 + len(body)) + body


def _chunk(mode: str, number: int) -> bytes:
    if mode == "simple":
        # pgbench's own query text with its number in it: bytes for the tap, never sent anywhere
        return _message(b"Q", b"SELECT abalance FROM pgbench_accounts WHERE aid = %d;\0" % number)
    bind = b"\0P_0\0\0\0\0\x01\0\0\0\x04" + struct.pack("!I", number) + b"\0\x01\0\x01"
    return _message(b"B", bind) + _message(b"D", b"P\0") + _message(b"E", b"\0\0\0\0\0") + _message(b"S", b"")


def drive(mode: str, turns: int) -> float:
    """Run ``turns`` loop turns (after as many to warm up); their seconds."""
    from access.broker.audit.statements import statement_log_for
    from access.broker.clock import SystemClock
    from access.broker.policy import policy_from_data
    from access.broker.runtime import Broker
    from access.broker.settings import Settings
    from access.broker.wire import postgres

    with tempfile.TemporaryDirectory() as scratch:
        settings = Settings(data_dir=Path(scratch), database_url=f"sqlite:///{scratch}/broker.db")
        broker = Broker.from_settings(settings, clock=SystemClock(), policy=policy_from_data({}))
        log = statement_log_for(broker)
        side = log.side
        taps = [postgres.tap() for _ in range(CONNECTIONS)]
        if mode == "prepared":
            parse = _message(b"P", b"P_0\0SELECT abalance FROM pgbench_accounts WHERE aid = $1;\0\0\0")
            for tap in taps:
                tap.client_bytes(parse)
                tap.take()
        chunks = [_chunk(mode, number) for number in range(1000)]
        ids = [f"c-{number:016x}" for number in range(CONNECTIONS)]

        def run(count: int) -> None:
            for turn in range(count):
                for connection in range(CONNECTIONS):
                    tap = taps[connection]
                    tap.feed(chunks[(turn * CONNECTIONS + connection) % len(chunks)])
                    side.add(ids[connection], "g-00000000000000aa", "svc-bench", "bench", tap.take())
                log._end_turn()
                if len(log._queue) > 3000:  # written, as far as the ceiling is concerned
                    log._queue.clear()
                    side.done, side.done_bytes = side.added, side.added_bytes

        gc.collect()
        gc.freeze()
        run(turns)
        started = time.perf_counter()
        run(turns)
        return time.perf_counter() - started


def _instructions(mode: str, turns: int, out: Path) -> int:
    subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--mode",
            mode,
            "--turns",
            str(turns),
            "--wall",
        ],
        check=True,
        capture_output=True,
    )
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from grants_callgrind import count  # the instructions in a callgrind dump

    return count(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--mode", choices=("simple", "prepared"), default="simple")
    parser.add_argument("--turns", type=int, default=2000)
    parser.add_argument("--wall", action="store_true", help="time one run, no callgrind")
    args = parser.parse_args()
    if args.wall:
        seconds = drive(args.mode, args.turns)
        print(f"{args.mode}: {seconds / args.turns / CONNECTIONS * 1e6:.2f} us per statement (wall)")
        return 0
    import access.broker.audit.turn as turn

    print(f"turn: {turn.__file__}")
    with tempfile.TemporaryDirectory() as scratch:
        few = _instructions(args.mode, BASE_TURNS, Path(scratch) / "few.out")
        many = _instructions(args.mode, BASE_TURNS + args.turns, Path(scratch) / "many.out")
    # each run warms up with as many turns as it measures: 2 x the difference in turns
    per = (many - few) / (2 * args.turns * CONNECTIONS)
    print(f"{args.mode}: {per:,.0f} instructions per statement")
    return 0


if __name__ == "__main__":
    sys.exit(main())
