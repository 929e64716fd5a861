"""Measure the tunnel against ``ssh -L`` and a direct connection, on loopback, in one run.

    python benchmarks/run.py [--output benchmarks/results.json] [--quick]

It starts, in a temporary directory: an echo server and a sink server (``servers.py``), a real
``access-broker`` serving TLS from a throwaway CA, a service account logged in with the real
``access login`` (client credentials), three ``access connect`` listeners, and an OpenSSH
``sshd`` on a random port with a throwaway host key, reached with ``ssh -L``. Then, the same
workloads three ways (direct, ``ssh -L``, ``access connect``), and the PostgreSQL ones a fourth:
``access relay``, the same PostgreSQL as a ``tcp`` service (the tunnel without the broker's login
and statement audit: what the audit costs is access against it):

- ``pgbench -S`` (select-only; 8 clients, 2 threads) against the machine's PostgreSQL, with the
  simple protocol, with ``-M prepared``, and with ``-C`` (a new connection, and login, per
  transaction);
- bulk ``COPY FROM STDIN`` with psql (``--copy-mib`` of CSV into an unlogged table);
- bulk throughput of one stream (1 GiB to the sink);
- connection setup: connect, send a byte, get it back (many samples);
- round trip of 64-byte messages on one connection (p50, p99).

It prints a table with ratios against ``ssh -L`` and direct and writes JSON. Needs pgbench,
psql, ssh, sshd and ssh-keygen on PATH (Debian: postgresql-client, openssh-client,
openssh-server), and PostgreSQL at ``--pg`` (default postgresql://postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
PG_DB = "access_bench"
WAYS = ("direct", "ssh -L", "access")
RELAY = "access relay"  # PostgreSQL workloads only: bench-pgtcp, a tcp service to the same server


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")
        time.sleep(0.05)


class Processes:
    """Child processes, stopped (TERM, then KILL) in reverse order on exit."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[subprocess.Popen[Any]] = []

    def start(
        self, name: str, argv: list[str], *, env: dict[str, str] | None = None, stdout: Any = None
    ) -> subprocess.Popen[Any]:
        logfile = open(self.logdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            argv,
            env=env,
            stdout=stdout if stdout is not None else logfile,
            stderr=logfile,
            stdin=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


# -- setup ---------------------------------------------------------------------------------------


def start_target(procs: Processes, kind: str) -> int:
    proc = procs.start(kind, [sys.executable, str(HERE / "servers.py"), kind], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    return int(proc.stdout.readline())


def prepare_pgbench(pg_url: str) -> None:
    admin = [shutil.which("psql") or "psql", pg_url, "-qAtX", "-v", "ON_ERROR_STOP=1"]
    exists = subprocess.run(
        [*admin, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{PG_DB}'"],  # noqa: S608 - a constant
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not exists:
        subprocess.run([*admin, "-c", f'CREATE DATABASE "{PG_DB}"'], check=True, capture_output=True)
    url = urlsplit(pg_url)
    subprocess.run(
        [
            "pgbench",
            "-i",
            "-q",
            "-s",
            "1",
            "-h",
            url.hostname or "127.0.0.1",
            "-p",
            str(url.port or 5432),
            "-U",
            url.username or "postgres",
            PG_DB,
        ],
        check=True,
        capture_output=True,
    )
    bench_url = url._replace(path=f"/{PG_DB}").geturl()
    subprocess.run(
        [
            admin[0],
            bench_url,
            *admin[2:],
            "-c",
            "CREATE UNLOGGED TABLE IF NOT EXISTS bench_copy (a int, b text)",
        ],
        check=True,
        capture_output=True,
    )


def add_service_account(env: dict[str, str]) -> dict[str, Any]:
    """``access-broker service-accounts add bench-bot --group bench`` on the broker ``env`` names:
    its JSON (client id and secret)."""
    made = subprocess.run(
        [
            str(BIN / "access-broker"),
            "service-accounts",
            "add",
            "bench-bot",
            "--group",
            "bench",
            "-o",
            "json",
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(made.stdout))


def start_broker(
    procs: Processes,
    tmp: Path,
    targets: dict[str, int],
    pg_url: str,
    *,
    tls: bool = True,
    extra_services: tuple[dict[str, Any], ...] = (),
    broker_settings: dict[str, str] | None = None,
) -> tuple[str, Path, dict[str, str]]:
    """A real broker (TLS unless ``tls`` is False: plain HTTP on loopback, for comparisons only);
    a service account logged in with `access login`. Returns (url, ca, env).

    ``extra_services``: more services for the policy (kube.py's cluster), scope read;
    ``broker_settings``: more ``ACCESS_BROKER_*`` variables for the broker (connections.py's limits)."""
    from access.shared.devca import make_ca

    ca = make_ca(tmp / "ca")
    pg = urlsplit(pg_url)
    services: list[dict[str, Any]] = [
        {
            "name": "bench-pg",
            "kind": "postgres",
            "target": f"{pg.hostname}:{pg.port or 5432}",
            "scopes": ["read"],
            "max_ttl": "2h",
            "options": {"database": PG_DB, "user": pg.username or "postgres"},
        },
        {
            "name": "bench-echo",
            "kind": "tcp",
            "target": f"127.0.0.1:{targets['echo']}",
            "scopes": ["read"],
            "max_ttl": "2h",
        },
        {
            "name": "bench-sink",
            "kind": "tcp",
            "target": f"127.0.0.1:{targets['sink']}",
            "scopes": ["read"],
            "max_ttl": "2h",
        },
    ]
    services += [  # any other target (memory.py's stream) as bench-NAME
        {
            "name": f"bench-{name}",
            "kind": "tcp",
            "target": f"127.0.0.1:{port}",
            "scopes": ["read"],
            "max_ttl": "2h",
        }
        for name, port in targets.items()
        if name not in ("pg", "echo", "sink")
    ]
    services += extra_services
    policy = {
        "services": services,
        "rules": [
            {
                "name": "bench",
                "subjects": {"groups": ["bench"]},
                "services": [s["name"] for s in services],
                "scopes": ["read"],
                "max_ttl": "2h",
                "require": "auto",
            }
        ],
    }
    (tmp / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    data_dir = tmp / "broker"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCESS_", "PG"))}
    broker_env = {**base_env, "ACCESS_BROKER_DATA_DIR": str(data_dir)}
    account = add_service_account(broker_env)
    ready = tmp / "broker.url"
    broker = procs.start(
        "broker",
        [
            str(BIN / "access-broker"),
            "serve",
            "--policy",
            str(tmp / "policy.yaml"),
            "--port",
            "0",
            *(["--tls-cert", str(ca.server_cert), "--tls-key", str(ca.server_key)] if tls else []),
            "--ready-file",
            str(ready),
        ],
        env={**broker_env, "ACCESS_BROKER_LOG_LEVEL": "warning", **(broker_settings or {})},
    )
    deadline = time.monotonic() + 30
    while not ready.exists() or not ready.read_text().strip():
        if broker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the broker did not start: see {procs.logdir / 'broker.log'}")
        time.sleep(0.05)
    url = ready.read_text().strip()
    cli_env = {
        **base_env,
        "XDG_CONFIG_HOME": str(tmp / "config"),
        "XDG_RUNTIME_DIR": str(tmp / "run"),
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
        "NO_COLOR": "1",
    }
    secret = tmp / "client-secret"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(account["client_secret"])
    (tmp / "client-id").write_text(account["client_id"])
    subprocess.run(
        [
            str(BIN / "access"),
            "login",
            "--broker",
            url,
            *(["--ca-file", str(ca.ca_cert)] if tls else []),
            "--client-id",
            account["client_id"],
            "--client-secret-file",
            str(secret),
        ],
        env=cli_env,
        check=True,
        capture_output=True,
    )
    return url, ca.ca_cert, cli_env


def start_access_connect(procs: Processes, service: str, env: dict[str, str]) -> int:
    proc = procs.start(
        f"connect-{service}",
        [
            str(BIN / "access"),
            "connect",
            service,
            "--scope",
            "read",
            "--ttl",
            "1h",
            "--reason",
            "benchmark",
            "-o",
            "json",
        ],
        env=env,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"access connect {service} failed: see {procs.logdir / f'connect-{service}.log'}")
    port = int(json.loads(line)["port"])
    wait_port(port, proc=proc)
    return port


def start_ssh(procs: Processes, tmp: Path, targets: dict[str, int]) -> dict[str, int]:
    """sshd on a random port with throwaway keys, and one `ssh -L` forwarding every target."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    keys = tmp / "ssh"
    keys.mkdir(mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "host")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "user")], check=True)
    shutil.copy(keys / "user.pub", keys / "authorized_keys")
    port = free_port()
    (keys / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host'}\nPidFile {keys / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {keys / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
        "StrictModes no\nUsePAM no\nAllowTcpForwarding yes\n"
    )
    with contextlib.suppress(OSError):
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    daemon = procs.start("sshd", [sshd, "-D", "-e", "-f", str(keys / "sshd_config")])
    wait_port(port, proc=daemon)
    local = {name: free_port() for name in targets}
    forwards = [
        arg for name, target in targets.items() for arg in ("-L", f"{local[name]}:127.0.0.1:{target}")
    ]
    client = procs.start(
        "ssh",
        [
            "ssh",
            "-N",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ExitOnForwardFailure=yes",
            "-i",
            str(keys / "user"),
            "-p",
            str(port),
            *forwards,
            f"{getpass.getuser()}@127.0.0.1",
        ],
    )
    for value in local.values():
        wait_port(value, proc=client)
    return local


# -- workloads -----------------------------------------------------------------------------------


def pgbench_tps(port: int, user: str, clients: int, seconds: int, *extra: str) -> float:
    """``pgbench -S`` tps; ``extra``: ``-M prepared``, or ``-C`` (whose tps counts the connections)."""
    argv = ["pgbench", "-S", "-n", *extra, "-c", str(clients), "-j", "2", "-T", str(seconds)]
    argv += ["-h", "127.0.0.1", "-p", str(port), "-U", user, PG_DB]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    pattern = r"tps = ([0-9.]+) \((?:without initial connection time|excluding connections establishing)\)"
    if "-C" in extra:
        pattern = r"tps = ([0-9.]+) \((?:including reconnection times|including connections establishing)\)"
    match = re.search(pattern, done.stdout)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"pgbench failed on port {port}:\n{done.stdout}\n{done.stderr}")
    return float(match.group(1))


def make_copy_file(tmp: Path, mib: int) -> Path:
    """``mib`` MiB of CSV rows (an integer and 100 characters of text) for COPY."""
    path = tmp / "copy.csv"
    row_text = "x" * 100
    rows = "".join(f"{i},{row_text}\n" for i in range(10_000)).encode()
    with path.open("wb") as f:
        for _ in range(max(1, mib * 1024 * 1024 // len(rows))):
            f.write(rows)
    return path


def copy_mb_s(port: int, user: str, source: Path) -> float:
    """MB/s of ``\\copy bench_copy FROM source`` with psql (the table emptied first, not timed)."""
    base = ["psql", "-qAtX", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port), "-U", user, PG_DB]
    subprocess.run([*base, "-c", "TRUNCATE bench_copy"], check=True, capture_output=True)
    started = time.perf_counter()
    subprocess.run(
        [*base, "-c", f"\\copy bench_copy FROM '{source}' WITH (FORMAT csv)"], check=True, capture_output=True
    )
    return source.stat().st_size / (time.perf_counter() - started) / 1e6


def bulk_mb_s(port: int, size: int) -> float:
    chunk = os.urandom(1 << 20)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.perf_counter()
        sock.sendall(struct.pack("!Q", size))
        left = size
        while left > 0:
            piece = chunk if left >= len(chunk) else chunk[:left]
            sock.sendall(piece)
            left -= len(piece)
        if sock.recv(1) != b"k":
            raise RuntimeError("the sink did not confirm")
        elapsed = time.perf_counter() - started
    return size / elapsed / 1e6


def connect_ms(port: int, samples: int) -> dict[str, float]:
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(b"x")
            if sock.recv(1) != b"x":
                raise RuntimeError("no echo")
            times.append((time.perf_counter() - started) * 1000)
    return {"p50": statistics.median(times), "p99": percentile(times, 99)}


def rtt_us(port: int, samples: int) -> dict[str, float]:
    message = os.urandom(64)
    times = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(samples + 200):
            started = time.perf_counter_ns()
            sock.sendall(message)
            got = b""
            while len(got) < len(message):
                got += sock.recv(len(message) - len(got))
            if i >= 200:  # the first ones warm up caches and the TLS session
                times.append((time.perf_counter_ns() - started) / 1000)
    return {"p50": statistics.median(times), "p99": percentile(times, 99)}


def access_build() -> str:
    """What ``access --version`` says: the version, and whether the tunnel runs compiled."""
    done = subprocess.run([str(BIN / "access"), "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def percentile(values: list[float], pct: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


# -- report --------------------------------------------------------------------------------------

# metric -> (label, unit, higher is better, how to get one number from a result)
METRICS: dict[str, tuple[str, str, bool, Callable[[Any], float]]] = {
    "pgbench_tps": ("pgbench -S", "tps", True, float),
    "pgbench_prepared_tps": ("pgbench -S -M prepared", "tps", True, float),
    "pgbench_connect_tps": ("pgbench -S -C (connect each)", "tps", True, float),
    "copy_mb_s": ("COPY FROM STDIN", "MB/s", True, float),
    "bulk_mb_s": ("bulk, one stream", "MB/s", True, float),
    "connect_ms_p50": ("connection setup p50", "ms", False, float),
    "rtt_us_p50": ("round trip p50", "us", False, float),
    "rtt_us_p99": ("round trip p99", "us", False, float),
}


def report(results: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    ratios: dict[str, dict[str, float]] = {"vs_ssh": {}, "vs_direct": {}, "vs_relay": {}}
    rows = [("metric", "direct", "ssh -L", "access", "relay", "access/ssh", "access/direct", "access/relay")]
    for key, (label, unit, higher, _) in METRICS.items():
        values = [results[way].get(key) for way in WAYS]
        if any(v is None for v in values):
            continue
        direct, ssh, access = (float(v) for v in values)  # type: ignore[arg-type]
        # Ratios are "how many times better": >1 means access wins.
        vs_ssh = access / ssh if higher else ssh / access
        vs_direct = access / direct if higher else direct / access
        ratios["vs_ssh"][key] = round(vs_ssh, 3)
        ratios["vs_direct"][key] = round(vs_direct, 3)
        relay = results.get(RELAY, {}).get(key)
        relay_cells = ("-", "-")
        if relay is not None:
            vs_relay = access / relay if higher else relay / access
            ratios["vs_relay"][key] = round(vs_relay, 3)
            relay_cells = (f"{relay:,.1f}", f"{vs_relay:.2f}x")
        rows.append(
            (
                f"{label} ({unit})",
                f"{direct:,.1f}",
                f"{ssh:,.1f}",
                f"{access:,.1f}",
                relay_cells[0],
                f"{vs_ssh:.2f}x",
                f"{vs_direct:.2f}x",
                relay_cells[1],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(
                cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
            )
        )
    print(
        "ratios: >1.00x means access is better (more throughput, or less time); relay: the same "
        "PostgreSQL as a tcp service (no login by the broker, no statement audit)"
    )
    return ratios


@contextlib.contextmanager
def workspace() -> Iterator[tuple[Path, Processes]]:
    with tempfile.TemporaryDirectory(prefix="access-bench-") as name:
        tmp = Path(name)
        (tmp / "logs").mkdir()
        procs = Processes(tmp / "logs")
        try:
            yield tmp, procs
        except BaseException:
            for logfile in sorted((tmp / "logs").glob("*.log")):
                tail = logfile.read_text(errors="replace")[-2000:]
                if tail.strip():
                    log(f"--- {logfile.name} ---\n{tail}")
            raise
        finally:
            procs.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--output", type=Path, default=HERE / "results.json", help="JSON results file")
    parser.add_argument(
        "--pg", default=os.environ.get("ACCESS_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    parser.add_argument("--seconds", type=int, default=8, help="pgbench duration per way and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the throughput runs")
    parser.add_argument("--clients", type=int, default=8, help="pgbench clients")
    parser.add_argument("--bulk-mib", type=int, default=1024, help="bulk transfer size")
    parser.add_argument("--copy-mib", type=int, default=64, help="COPY FROM STDIN size")
    parser.add_argument("--connects", type=int, default=200, help="connection setup samples")
    parser.add_argument("--round-trips", type=int, default=5000, help="round-trip samples")
    parser.add_argument(
        "--quick", action="store_true", help="short run (3 s pgbench, 256 MiB, fewer samples)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.bulk_mib, args.connects, args.round_trips, args.rounds = 3, 256, 50, 1000, 1
        args.copy_mib = 16
    pg_user = urlsplit(args.pg).username or "postgres"
    started = time.monotonic()
    with workspace() as (tmp, procs):
        log("preparing: pgbench database, targets, broker (TLS), sshd")
        prepare_pgbench(args.pg)
        pg = urlsplit(args.pg)
        targets = {
            "pg": pg.port or 5432,
            "echo": start_target(procs, "echo"),
            "sink": start_target(procs, "sink"),
            "pgtcp": pg.port or 5432,  # bench-pgtcp: the relay
        }
        for port in targets.values():
            wait_port(port)
        copy_source = make_copy_file(tmp, args.copy_mib)
        copy_bytes = copy_source.stat().st_size
        _url, _ca, cli_env = start_broker(procs, tmp, targets, args.pg)
        ports: dict[str, dict[str, int]] = {"direct": targets, "ssh -L": start_ssh(procs, tmp, targets)}
        ports["access"] = {
            "pg": start_access_connect(procs, "bench-pg", cli_env),
            "echo": start_access_connect(procs, "bench-echo", cli_env),
            "sink": start_access_connect(procs, "bench-sink", cli_env),
        }
        ports[RELAY] = {"pg": start_access_connect(procs, "bench-pgtcp", cli_env)}
        pg_ways = (*WAYS, RELAY)
        results: dict[str, dict[str, float]] = {way: {} for way in pg_ways}
        # Throughput runs are interleaved (direct, ssh, access, relay, direct, ...) and repeated,
        # and the median is reported: on a shared 2-core machine one run of each drifts by 10-20%.
        samples: dict[str, dict[str, list[float]]] = {way: {} for way in pg_ways}
        pg_workloads: list[tuple[str, str, Callable[[int], float]]] = [
            (
                "pgbench_tps",
                "pgbench -S",
                lambda port: pgbench_tps(port, pg_user, args.clients, args.seconds),
            ),
            (
                "pgbench_prepared_tps",
                "pgbench -S -M prepared",
                lambda port: pgbench_tps(port, pg_user, args.clients, args.seconds, "-M", "prepared"),
            ),
            (
                "pgbench_connect_tps",
                "pgbench -S -C",
                lambda port: pgbench_tps(port, pg_user, args.clients, args.seconds, "-C"),
            ),
            ("copy_mb_s", f"COPY {args.copy_mib} MiB", lambda port: copy_mb_s(port, pg_user, copy_source)),
        ]
        for metric, label, workload in pg_workloads:
            for round_no in range(1, args.rounds + 1):
                for way in pg_ways:
                    log(f"{label} through {way} (round {round_no}/{args.rounds})")
                    samples[way].setdefault(metric, []).append(workload(ports[way]["pg"]))
        for round_no in range(1, args.rounds + 1):
            for way in WAYS:
                log(f"bulk {args.bulk_mib} MiB through {way} (round {round_no}/{args.rounds})")
                samples[way].setdefault("bulk_mb_s", []).append(
                    bulk_mb_s(ports[way]["sink"], args.bulk_mib * 1024 * 1024)
                )
        for way in pg_ways:
            for metric, values in samples[way].items():
                results[way][metric] = statistics.median(values)
        for way in WAYS:
            log(f"connection setup through {way}")
            setup = connect_ms(ports[way]["echo"], args.connects)
            results[way]["connect_ms_p50"] = setup["p50"]
            results[way]["connect_ms_p99"] = setup["p99"]
        for way in WAYS:
            log(f"round trips through {way}")
            rtt = rtt_us(ports[way]["echo"], args.round_trips)
            results[way]["rtt_us_p50"] = rtt["p50"]
            results[way]["rtt_us_p99"] = rtt["p99"]
    ratios = report(results)
    document = {
        "results": {way: {k: round(v, 3) for k, v in values.items()} for way, values in results.items()},
        "samples": {way: {k: [round(v, 1) for v in vs] for k, vs in m.items()} for way, m in samples.items()},
        "ratios": ratios,
        "settings": {
            "pgbench": f"-S -c {args.clients} -j 2 -T {args.seconds} (and -M prepared, -C)",
            "copy_bytes": copy_bytes,
            "rounds": args.rounds,
            "bulk_bytes": args.bulk_mib * 1024 * 1024,
            "connect_samples": args.connects,
            "round_trip_samples": args.round_trips,
            "broker_tls": True,
        },
        "machine": {
            "access": access_build(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "seconds": round(time.monotonic() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    log(f"{document['machine']['access']}; wrote {args.output} ({document['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
