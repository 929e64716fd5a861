"""The audit stream with real processes: ``access audit --follow`` against a running broker and
``access-broker audit export --follow`` against its database print new entries as JSON lines as
they are written, stop cleanly (exit 0) on SIGINT / SIGTERM, and resume after a seq."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
from typing import Any

from tests.e2e.conftest import ACCESS_BROKER, BrokerProcess, Cli, _pump


class Lines:
    """A process's stdout read line by line as it comes; ``next`` waits a bounded time."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.seen: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=_pump, args=(proc.stdout, self.seen, self._queue), daemon=True)
        self._thread.start()

    def until(self, action: str, timeout: float = 30) -> list[dict[str, Any]]:
        """Entries read from now up to and with the first of ``action``."""
        got = []
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                self.stop(signal.SIGKILL)
                raise AssertionError(f"no {action} entry came: {self.seen}") from None
            entry = json.loads(line)
            got.append(entry)
            if entry["action"] == action:
                return got

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self._thread.join(timeout=5)
            if self.proc.stderr is not None:
                self.proc.stderr.close()


def _request(cli: Cli) -> str:
    done = cli.run(
        "request", "svc-payments", "--scope", "read", "--ttl", "10m", "--reason", "INC-9", "-o", "json"
    )
    assert done.returncode == 0, done.stderr
    grant: str = json.loads(done.stdout)["id"]
    return grant


def test_access_audit_follow_streams_stops_on_ctrl_c_and_resumes(cli: Cli, broker: BrokerProcess) -> None:
    assert cli.device_login("alice", "alice-password-1").returncode == 0
    grant = _request(cli)
    follow = Lines(cli.popen("audit", "--follow", "--since-seq", "0"))  # a pipe: JSON lines
    backlog = follow.until("grant.issue")
    seqs = [e["seq"] for e in backlog]
    assert seqs == sorted(seqs) and seqs[0] == 1 and len(set(seqs)) == len(seqs)
    issued = backlog[-1]["seq"]

    assert cli.run("revoke", grant).returncode == 0  # written while the follow waits
    new = follow.until("grant.revoke")
    assert new[0]["seq"] == issued + 1 and new[-1]["target"].endswith(grant)
    assert follow.stop(signal.SIGINT) == 0  # Ctrl-C ends a follow cleanly

    resumed = cli.run("audit", "--since-seq", str(issued))  # everything after, then exit
    assert resumed.returncode == 0, resumed.stderr
    lines = [json.loads(line) for line in resumed.stdout.splitlines()]
    assert [e["seq"] for e in lines] == [e["seq"] for e in new]
    assert lines[-1]["action"] == "grant.revoke"


def test_broker_audit_export_follow_streams_and_stops_on_sigterm(cli: Cli, broker: BrokerProcess) -> None:
    assert cli.device_login("alice", "alice-password-1").returncode == 0
    _request(cli)
    last = int(broker.admin("audit", "export").stdout.splitlines()[-1].split('"seq":')[1].split(",")[0])
    export = Lines(
        subprocess.Popen(
            [ACCESS_BROKER, "audit", "export", "--follow", "--since-seq", str(last - 1), "--interval", "0.2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=broker.env,
        )
    )
    first = export.until("grant.issue")
    assert [e["seq"] for e in first] == [last]  # resumed after last - 1: that one only
    assert {"prev_hash", "hash"} <= set(first[0])
    grant = _request(cli)
    more = export.until("grant.issue")
    assert more[0]["seq"] == last + 1 and more[-1]["target"].endswith(grant)
    assert export.stop(signal.SIGTERM) == 0
