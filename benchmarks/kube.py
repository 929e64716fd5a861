"""kubectl request latency, direct to an API server and through ``access connect``.

    python benchmarks/kube.py [--samples 40]

Starts the Kubernetes API stand-in of the tests (tests/fakes/kubeapi.py: TLS, token auth, the
real discovery documents), a real ``access-broker`` with a ``kubernetes`` service for it, a
service account logged in with ``access login``, one ``access connect`` and its kubeconfig
(``access kubeconfig``). Then runs ``kubectl get pods -A`` the given number of times each way,
interleaved, after one warm-up run each (kubectl caches discovery in its HOME, as it does on a
laptop), and prints the wall time per run (p50, p90) and what access adds. Each run is a new
kubectl process: /version (the Cloud SDK dispatcher), then the list, over a new connection.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.fakes: the stand-in the tests use

from run import BIN, log, percentile, start_access_connect, start_broker, workspace  # noqa: E402

from tests.fakes.kubeapi import kube_api, kubectl_env  # noqa: E402


def _timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return elapsed * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=40)
    args = parser.parse_args(argv)
    with workspace() as (tmp, procs), kube_api(tmp / "kube-api") as api:
        token = tmp / "kube-token"
        token.write_text(api.token)
        cluster = {
            "name": "bench-kube",
            "kind": "kubernetes",
            "scopes": ["read"],
            "max_ttl": "2h",
            "kubernetes": {"server": api.url, "ca_file": str(api.ca_file), "token_file": str(token)},
        }
        unused = {"echo": 9, "sink": 9}  # run.py's tcp services; nothing here connects to them
        pg = "postgresql://postgres@127.0.0.1:5432"
        _, _, env = start_broker(procs, tmp, unused, pg, extra_services=(cluster,))
        start_access_connect(procs, "bench-kube", env)
        through = tmp / "kubeconfig-access"
        subprocess.run(
            [str(BIN / "access"), "kubeconfig", "bench-kube", "--file", str(through)],
            env=env,
            check=True,
            capture_output=True,
        )
        ways = {
            "direct": kubectl_env(tmp / "home-direct", api.kubeconfig(tmp / "kubeconfig-direct")),
            "access": kubectl_env(tmp / "home-access", through),
        }
        command = ["kubectl", "get", "pods", "-A"]
        samples: dict[str, list[float]] = {way: [] for way in ways}
        for way_env in ways.values():
            _timed(command, way_env)  # warm-up: discovery cached
        log(f"kubectl get pods -A, {args.samples} runs each way, interleaved")
        for _ in range(args.samples):
            for way, way_env in ways.items():
                samples[way].append(_timed(command, way_env))
    results = {
        way: {"p50_ms": round(percentile(values, 50), 1), "p90_ms": round(percentile(values, 90), 1)}
        for way, values in samples.items()
    }
    for way, figures in results.items():
        print(f"{way:>7}: p50 {figures['p50_ms']:7.1f} ms   p90 {figures['p90_ms']:7.1f} ms")
    added = results["access"]["p50_ms"] - results["direct"]["p50_ms"]
    print(f"access adds {added:.1f} ms per kubectl run at p50")
    return 0


if __name__ == "__main__":
    sys.exit(main())
