"""CPU per pgbench transaction in the tunnel's processes: access (CLI + broker) vs ssh -L (ssh + sshd).

    python benchmarks/cpu.py [--seconds 6] [--rounds 2] [--no-tls]

Starts the same broker, `access connect` and `ssh -L` as ``run.py``, runs ``pgbench -S`` through
each, and reads each process's user and system CPU time from ``/proc/PID/stat`` before and after
(the broker's also split into its event loop, the main thread, and the rest: worker threads,
the statement log's writer among them): the figures behind "where the time goes" in
docs/tunnel.md. ``--no-tls`` serves the broker over plain HTTP on loopback, to see what TLS
costs (never a deployment setting). Linux only.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # the benchmark's own helpers

TICK = os.sysconf("SC_CLK_TCK")
PG_URL = "postgresql://postgres@127.0.0.1:5432"


def _ticks(stat_files: list[str]) -> tuple[int, int]:
    """User and system clock ticks summed over ``/proc`` stat files (gone ones count nothing)."""
    user = system = 0
    for stat_file in stat_files:
        try:
            fields = Path(stat_file).read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user, system


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """User and system CPU seconds of ``pids`` (all threads), as /proc reports them."""
    user, system = _ticks([f"/proc/{pid}/stat" for pid in pids])
    return user / TICK, system / TICK


def main_thread_seconds(pids: list[int]) -> float:
    """User plus system CPU seconds of the main thread (the event loop) of ``pids``."""
    return sum(_ticks([f"/proc/{pid}/task/{pid}/stat" for pid in pids])) / TICK


def pids_named(name: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == name:
                    found.append(int(entry))
            except OSError:
                pass
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--no-tls", action="store_true", help="plain-HTTP broker (comparison only)")
    args = parser.parse_args()
    print(bench.access_build(), flush=True)
    with bench.workspace() as (tmp, procs):
        bench.prepare_pgbench(PG_URL)
        targets = {
            "pg": 5432,
            "echo": bench.start_target(procs, "echo"),
            "sink": bench.start_target(procs, "sink"),
            "pgtcp": 5432,  # the same PostgreSQL as a tcp service: the relay without login or audit
        }
        _url, _ca, env = bench.start_broker(procs, tmp, targets, PG_URL, tls=not args.no_tls)
        ssh_port = bench.start_ssh(procs, tmp, targets)["pg"]
        access_port = bench.start_access_connect(procs, "bench-pg", env)
        relay_port = bench.start_access_connect(procs, "bench-pgtcp", env)
        broker = [p.pid for p in procs.procs if "serve" in map(str, p.args)]
        clis = [p.pid for p in procs.procs if "connect" in map(str, p.args)]
        ssh = [p.pid for p in procs.procs if Path(str(p.args[0])).name == "ssh"]
        for round_no in range(1, args.rounds + 1):
            for way, port in (("ssh -L", ssh_port), ("access", access_port), ("tcp", relay_port)):
                parts = (
                    {"ssh": ssh, "sshd": pids_named("sshd")}
                    if way == "ssh -L"
                    else {"cli": [clis[0] if way == "access" else clis[1]], "broker": broker}
                )
                before = {name: cpu_seconds(pids) for name, pids in parts.items()}
                loop_before = main_thread_seconds(broker)
                tps = bench.pgbench_tps(port, "postgres", args.clients, args.seconds)
                loop_after = main_thread_seconds(broker)
                after = {name: cpu_seconds(pids) for name, pids in parts.items()}
                tx = tps * args.seconds
                cells = []
                for name in parts:
                    user = (after[name][0] - before[name][0]) / tx * 1e6
                    total = user + (after[name][1] - before[name][1]) / tx * 1e6
                    cells.append(f"{name} {total:.1f} us (user {user:.1f})")
                    if name == "broker":  # its event loop (the main thread) and the rest (worker threads)
                        loop = (loop_after - loop_before) / tx * 1e6
                        cells.append(f"[loop {loop:.1f}, threads {total - loop:.1f}]")
                print(f"round {round_no} {way:7} {tps:9,.0f} tps  " + "  ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
