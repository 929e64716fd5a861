"""How fast a revoke on one replica cuts a tunnel on another: NOTIFY against the poll, in one run.

    python benchmarks/replicas.py [--trials 20] [--output benchmarks/replicas.json]

It makes a throwaway PostgreSQL database at ``--pg`` (dropped at the end), a service account, and
an echo server (``servers.py``), then twice: three ``access-broker serve`` replicas (A, B, C) on
that database, sharing one data directory (their keys), first with the defaults (ends heard by
LISTEN/NOTIFY, the poll every 2 s as the safety net), then with ``ACCESS_BROKER_DB_NOTIFY=false``
(the poll alone, every 0.25 s by default). Each time, ``--trials`` tunnels are opened with
``access connect`` through B and C in turn (the service account logged in to each with
``access login``), one echo connection through each; then one after another each grant is
revoked through A's API (``POST /v1/grants/{id}/revoke``, a kept-alive HTTPS connection, called
from a thread of its own), and the time is taken from the revoke's call to the moment the
client's socket sees the tunnel close (and, beside it, to A's answer).

It prints p50, p99 and max for both, and the poll's over NOTIFY as ratios. Needs PostgreSQL at
``--pg`` (default postgresql://postgres@127.0.0.1:5432/postgres) whose role may create databases.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import sqlalchemy as sa
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BIN, Processes, log, percentile, start_target, workspace

REPLICAS = ("a", "b", "c")
KEYS = ("p50_ms", "p99_ms", "max_ms")
ANSWERED = "revoke_answered_p50_ms"
BATCH = 4  # `access connect`s started at once (each a Python start and a grant)
CUT_TIMEOUT = 10.0  # seconds: a cut not seen by then is a failure of the run, not a sample


def _broker_env(tmp: Path, database_url: str, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ACCESS_", "PG"))}
    return {
        **base,
        "ACCESS_BROKER_DATA_DIR": str(tmp / "broker"),
        "ACCESS_BROKER_DATABASE_URL": database_url,
        "ACCESS_BROKER_LOG_LEVEL": "warning",
        "ACCESS_BROKER_MAX_TUNNELS_PER_USER": "256",
        **extra,
    }


def start_replicas(procs: Processes, tmp: Path, ca: Any, env: dict[str, str], tag: str) -> dict[str, str]:
    """Three replicas (A first: it makes the shared keys); returns each one's URL."""
    urls: dict[str, str] = {}
    for name in REPLICAS:
        ready = tmp / f"{tag}-{name}.url"
        proc = procs.start(
            f"broker-{tag}-{name}",
            [str(BIN / "access-broker"), "serve", "--policy", str(tmp / "policy.yaml"), "--port", "0",
             "--tls-cert", str(ca.server_cert), "--tls-key", str(ca.server_key), "--ready-file", str(ready)],
            env=env,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not ready.exists() or not ready.read_text().strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"replica {name} did not start: see {procs.logdir}")
            time.sleep(0.05)
        urls[name] = ready.read_text().strip()
    return urls


def login(tmp: Path, url: str, ca: Any, account: dict[str, str], home: str) -> dict[str, str]:
    """``access login`` of the service account to ``url``, in a config home of its own."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ACCESS_", "PG"))}
    env = {
        **base,
        "XDG_CONFIG_HOME": str(tmp / home / "config"),
        "XDG_RUNTIME_DIR": str(tmp / home / "run"),
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
        "NO_COLOR": "1",
    }
    secret = tmp / "client-secret"
    subprocess.run(
        [str(BIN / "access"), "login", "--broker", url, "--ca-file", str(ca.ca_cert),
         "--client-id", account["client_id"], "--client-secret-file", str(secret)],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    return env


def open_tunnels(procs: Processes, envs: list[dict[str, str]], trials: int, tag: str) -> list[dict[str, Any]]:
    """``trials`` tunnels, through the replicas of ``envs`` in turn, ``BATCH`` started at once;
    each with its grant id, its process and one live echo connection through it."""
    tunnels: list[dict[str, Any]] = []
    for first in range(0, trials, BATCH):
        starting = []  # each its own reason: `access connect` would reuse a grant that matches
        for i in range(first, min(first + BATCH, trials)):
            proc = procs.start(
                f"connect-{tag}-{i}",
                [str(BIN / "access"), "connect", "bench-echo", "--scope", "read", "--ttl", "30m",
                 "--reason", f"replicas benchmark {tag} {i}", "-o", "json"],
                env=envs[i % len(envs)], stdout=subprocess.PIPE,
            )  # fmt: skip
            starting.append(proc)
        tunnels += [_tunnel(procs, proc) for proc in starting]
    return tunnels


def _tunnel(procs: Processes, proc: subprocess.Popen[Any]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"access connect failed: see {procs.logdir}")
    info = json.loads(line)
    sock = socket.create_connection(("127.0.0.1", int(info["port"])), timeout=CUT_TIMEOUT)
    sock.sendall(b"ping")
    if sock.recv(16) != b"ping":
        raise RuntimeError("the echo through the tunnel did not answer")
    return {"grant_id": info["grant_id"], "sock": sock, "proc": proc}


def access_token(client: httpx.Client, account: dict[str, str]) -> str:
    answer = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "client_id": account["client_id"],
              "client_secret": account["client_secret"]},
    )  # fmt: skip
    answer.raise_for_status()
    return str(answer.json()["access_token"])


def cut_seconds(client: httpx.Client, tunnel: dict[str, Any]) -> tuple[float, float]:
    """Revoke the tunnel's grant through A; seconds from the call until its socket is closed,
    and until A answered the call. The call runs in a thread of its own while this one waits on
    the socket: the cut comes after A's commit, and may come before A's answer."""
    sock: socket.socket = tunnel["sock"]
    sock.settimeout(CUT_TIMEOUT)
    answered: list[float] = []
    started = time.perf_counter()

    def revoke() -> None:
        client.post(f"/v1/grants/{tunnel['grant_id']}/revoke").raise_for_status()
        answered.append(time.perf_counter() - started)

    caller = threading.Thread(target=revoke)
    caller.start()
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    took = time.perf_counter() - started
    caller.join(CUT_TIMEOUT)
    sock.close()
    tunnel["proc"].wait(CUT_TIMEOUT)  # `access connect` stops on the revoke
    if not answered:
        raise RuntimeError(f"the revoke of {tunnel['grant_id']} through A failed")
    return took, answered[0]


def measure(tmp: Path, procs: Processes, ca: Any, account: dict[str, str], env: dict[str, str],
            trials: int, tag: str) -> list[tuple[float, float]]:  # fmt: skip
    """One way's samples: its replicas and tunnels (``procs``, stopped at the end)."""
    try:
        urls = start_replicas(procs, tmp, ca, env, tag)
        envs = [login(tmp, urls[name], ca, account, f"home-{tag}-{name}") for name in ("b", "c")]
        tunnels = open_tunnels(procs, envs, trials, tag)
        with httpx.Client(base_url=urls["a"], verify=str(ca.ca_cert), timeout=CUT_TIMEOUT) as client:
            client.headers["Authorization"] = f"Bearer {access_token(client, account)}"
            return [cut_seconds(client, tunnel) for tunnel in tunnels]
    finally:
        procs.stop()


def summary(samples: list[tuple[float, float]]) -> dict[str, float]:
    cuts, answers = [cut for cut, _ in samples], [answer for _, answer in samples]
    return {
        "p50_ms": round(percentile(cuts, 50) * 1000, 1),
        "p99_ms": round(percentile(cuts, 99) * 1000, 1),
        "max_ms": round(max(cuts) * 1000, 1),
        "revoke_answered_p50_ms": round(percentile(answers, 50) * 1000, 1),
    }


def main(argv: list[str] | None = None) -> int:
    from access.shared.devca import make_ca

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=20, help="revokes per way (at least 20 for a p99)")
    parser.add_argument("--output", type=Path, default=None, help="also write the figures as JSON")
    parser.add_argument(
        "--pg", default=os.environ.get("ACCESS_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    args = parser.parse_args(argv)
    name = f"access_bench_replicas_{secrets.token_hex(4)}"
    with psycopg.connect(args.pg, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    database_url = sa.engine.make_url(args.pg).set(database=name).render_as_string(hide_password=False)
    try:
        with workspace() as (tmp, procs):
            echo = start_target(procs, "echo")
            ca = make_ca(tmp / "ca")
            policy = {
                "services": [{"name": "bench-echo", "kind": "tcp", "target": f"127.0.0.1:{echo}",
                              "scopes": ["read"], "max_ttl": "2h"}],
                "rules": [{"name": "bench", "subjects": {"groups": ["bench"]}, "services": ["bench-echo"],
                           "scopes": ["read"], "max_ttl": "2h", "require": "auto"}],
            }  # fmt: skip
            (tmp / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
            env = _broker_env(tmp, database_url)
            made = subprocess.run(
                [str(BIN / "access-broker"), "service-accounts", "add", "bench-bot", "--group", "bench",
                 "-o", "json"],
                env=env, check=True, capture_output=True, text=True,
            )  # fmt: skip
            account = json.loads(made.stdout)
            secret = tmp / "client-secret"
            secret.touch(mode=0o600)
            secret.write_text(account["client_secret"])
            results: dict[str, dict[str, float]] = {}
            raw: dict[str, list[list[float]]] = {}  # per trial: [cut, answered] in ms
            for tag, extra in (("notify", {}), ("poll", {"ACCESS_BROKER_DB_NOTIFY": "false"})):
                log(f"{tag}: 3 replicas, {args.trials} revokes through A of tunnels on B and C")
                samples = measure(
                    tmp, Processes(procs.logdir), ca, account, {**env, **extra}, args.trials, tag
                )
                results[tag] = {"trials": len(samples), **summary(samples)}
                raw[tag] = [[round(cut * 1000, 1), round(answer * 1000, 1)] for cut, answer in samples]
    finally:
        with psycopg.connect(args.pg, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    notify, poll = results["notify"], results["poll"]
    rows = [("revoke on A -> tunnel on B/C closed", "p50 ms", "p99 ms", "max ms", "answer p50")]
    rows.append(("NOTIFY (poll 2 s behind it)", *(str(notify[k]) for k in (*KEYS, ANSWERED))))
    rows.append(("poll alone (0.25 s)", *(str(poll[k]) for k in (*KEYS, ANSWERED))))
    ratios = {k: round(poll[k] / notify[k], 2) for k in KEYS}
    rows.append(("poll / NOTIFY", *(f"{ratios[k]:.2f}x" for k in KEYS)))
    for row in rows:
        print(f"{row[0]:40} " + " ".join(cell.rjust(8) for cell in row[1:]))
    print(f"trials: {notify['trials']} each; >1.00x means NOTIFY cuts sooner; answer: A answered the revoke")
    if args.output is not None:
        figures = {**results, "poll_over_notify": ratios, "samples_ms": raw}
        args.output.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
