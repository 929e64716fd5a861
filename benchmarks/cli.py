"""The CLI's start-up: wall time of ``access`` commands against ``python -c pass``, in one run.

    python benchmarks/cli.py [--runs 20] [--before SRC]

Starts a real ``access-broker`` serving TLS (``run.py``'s setup: throwaway CA, a service account
signed in with the real ``access login``, tokens in the 0600 file as on a headless Linux), then
runs each command ``--runs`` times, interleaved, and prints the median wall time of each and
its ratio to the bare interpreter's (the same ``python``, the same environment):

- ``python -c pass``: what any Python program pays before its first line;
- ``access --version`` and ``access --help``: no broker involved;
- ``access grants -o json``: an API command, one authenticated request to the running broker.

Each run is a new process started as a user's shell starts it (the console script), with
stdout and stderr discarded, and with compiled bytecode to load, as from an installed package:
``PYTHONDONTWRITEBYTECODE`` is dropped and the ``.pyc`` files go to a folder of the run's own
(``PYTHONPYCACHEPREFIX``), written by the warm-up, never beside the sources. Beside the wall
time, the CPU time the process used (user and system, from ``getrusage``): on a machine that
other work shares, it moves less from run to run.

``--before SRC`` also runs each ``access`` command from another checkout (``PYTHONPATH=SRC``,
e.g. ``git archive main | tar -x -C SRC``), interleaved with the others: a change's before and
after in one run. The figures are in docs/cli.md ("Start-up").
"""

from __future__ import annotations

import argparse
import resource
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


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of ``argv`` from start to exit; fails when it does not exit 0."""
    cpu = _children_cpu()
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv!r} exited {done.returncode}: {done.stderr.decode(errors='replace')}")
    return elapsed, _children_cpu() - cpu  # runs one at a time: the children's growth is this one's


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=20, help="runs of each command (the median is shown)")
    parser.add_argument("--before", type=Path, metavar="SRC", help="also run the access commands from SRC")
    args = parser.parse_args(argv)
    with workspace() as (tmp, procs):
        unused = {"echo": 9, "sink": 9}  # run.py's tcp services; nothing here connects to them
        _, _, env = start_broker(procs, tmp, unused, "postgresql://postgres@127.0.0.1:5432")
        # Without .pyc files every run would compile this checkout's modules again: a cost
        # no installed CLI has (pip compiles what it installs).
        env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        runs = {name: (command, env) for name, command in COMMANDS.items()}
        if args.before is not None:
            before = {**env, "PYTHONPATH": str(args.before.resolve())}
            for name, command in COMMANDS.items():
                if name != BASELINE:
                    runs[f"{name} (before)"] = (command, before)
        for command, command_env in runs.values():
            timed(command, command_env)  # warm-up: files cached, and the command works
        log(f"{len(runs)} commands, {args.runs} runs each, interleaved")
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
        for _ in range(args.runs):
            for name, (command, command_env) in runs.items():
                samples[name].append(timed(command, command_env))
    wall = {name: statistics.median(w for w, _ in taken) * 1000 for name, taken in samples.items()}
    cpu = {name: statistics.median(c for _, c in taken) * 1000 for name, taken in samples.items()}
    width = max(map(len, runs))
    print(f"{'median of ' + str(args.runs):{width}}  {'wall':>8}  {'ratio':>6}  {'CPU':>8}  {'ratio':>6}")
    order = list(COMMANDS)

    def row(name: str) -> tuple[int, bool]:  # each command's "before" just above it
        return order.index(name.removesuffix(" (before)")), not name.endswith(" (before)")

    for name in sorted(runs, key=row):
        print(
            f"{name:{width}}  {wall[name]:5.1f} ms  {wall[name] / wall[BASELINE]:5.1f}x  "
            f"{cpu[name]:5.1f} ms  {cpu[name] / cpu[BASELINE]:5.1f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
