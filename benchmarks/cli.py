"""The CLI's start-up: wall time of ``access`` commands against ``python -c pass``, in one run.

    python benchmarks/cli.py [--runs 20]

Starts a real ``access-broker`` serving TLS (``run.py``'s setup: throwaway CA, a service account
signed in with the real ``access login``, tokens in the 0600 file as on a headless Linux), then
runs each command ``--runs`` times, interleaved, and prints the median wall time of each and
its ratio to the bare interpreter's (the same ``python``, the same environment):

- ``python -c pass``: what any Python program pays before its first line;
- ``access --version`` and ``access --help``: no broker involved;
- ``access grants -o json``: an API command, one authenticated request to the running broker.

Each run is a new process started as a user's shell starts it (the console script), with
stdout and stderr discarded. The figures are in docs/cli.md ("Start-up").
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import BIN, log, start_broker, workspace  # the benchmark's own helpers

ACCESS = str(BIN / "access")
COMMANDS: dict[str, list[str]] = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "access --version": [ACCESS, "--version"],
    "access --help": [ACCESS, "--help"],
    "access grants -o json": [ACCESS, "grants", "-o", "json"],
}
BASELINE = "python -c pass"


def timed(argv: list[str], env: dict[str, str]) -> float:
    """Seconds from start to exit of ``argv``; fails when it does not exit 0."""
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv!r} exited {done.returncode}: {done.stderr.decode(errors='replace')}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=20, help="runs of each command (the median is shown)")
    args = parser.parse_args(argv)
    with workspace() as (tmp, procs):
        unused = {"echo": 9, "sink": 9}  # run.py's tcp services; nothing here connects to them
        _, _, env = start_broker(procs, tmp, unused, "postgresql://postgres@127.0.0.1:5432")
        for command in COMMANDS.values():
            timed(command, env)  # warm-up: files cached, and the command works
        log(f"{len(COMMANDS)} commands, {args.runs} runs each, interleaved")
        samples: dict[str, list[float]] = {name: [] for name in COMMANDS}
        for _ in range(args.runs):
            for name, command in COMMANDS.items():
                samples[name].append(timed(command, env))
    medians = {name: statistics.median(values) * 1000 for name, values in samples.items()}
    base = medians[BASELINE]
    width = max(map(len, COMMANDS))
    print(f"{'':{width}}  {'median':>9}  vs {BASELINE}")
    for name, value in medians.items():
        print(f"{name:{width}}  {value:6.1f} ms  {value / base:5.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
