"""`access extend` end to end: a live `access connect` with a connection open through it, extended
from another CLI process, survives its original expiry and is cut at the new one; the connect
warned before the end, only of the expiry in force; an extension past the maximum is refused
while the tunnel stays up; the ledger has it."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from access.shared.devca import DevCA
from access.shared.durations import parse_duration
from access.shared.errors import ExitCode
from tests.e2e.conftest import Cli, make_broker_process, new_cli, running
from tests.e2e.test_tunnel import _expires, _open_echo, _start_connect, _wait_for_cut
from tests.fakes.echo import echo_server

pytestmark = pytest.mark.e2e

GRANT_TTL = "6s"  # short, so the warnings and the cut come within the test
MAX_TTL = "20s"
CUT_WINDOW = 1.0  # the cut lands within a second of the (new) expiry
WARNING_SLACK = 1.5  # a warning's "ends in" vs the truth (whole seconds, the broker's rounding)


def _policy(echo_port: int) -> dict[str, Any]:
    return {
        "services": [
            {
                "name": "svc-echo",
                "kind": "tcp",
                "target": f"127.0.0.1:{echo_port}",
                "scopes": ["read"],
                "max_ttl": "1h",
            }
        ],
        "rules": [
            {
                "name": "sre-echo",
                "subjects": {"groups": ["sre"]},
                "services": ["svc-echo"],
                "scopes": ["read"],
                "max_ttl": MAX_TTL,
                "require": "auto",
            }
        ],
        "audit": {"readers": {"groups": ["sre"]}},
    }


@pytest.fixture
def alice(tmp_path: Path, devca: DevCA, sqlite_url: str) -> Iterator[Cli]:
    with echo_server(timeout=60) as port:
        proc = make_broker_process(tmp_path, devca, sqlite_url, _policy(port))
        proc.add_user("alice", "alice-password-1", "sre")
        with running(proc):
            cli = new_cli(tmp_path, proc)
            assert cli.device_login("alice", "alice-password-1").returncode == 0
            yield cli


def _pump_stderr(stream: Any, lines: list[tuple[float, str]]) -> None:
    for line in iter(stream.readline, ""):
        lines.append((time.time(), line.rstrip("\n")))


def _ping(conn: Any) -> None:
    conn.sendall(b"still here\n")
    assert conn.recv(100) == b"still here\n"


def test_extend_keeps_a_live_connection_past_the_old_expiry_and_connect_warns_before_the_new_one(
    alice: Cli,
) -> None:
    proc, info = _start_connect(alice, "svc-echo", "--ttl", GRANT_TTL, "--reason", "INC-7")
    stderr: list[tuple[float, str]] = []
    assert proc.stderr is not None
    pump = threading.Thread(target=_pump_stderr, args=(proc.stderr, stderr), daemon=True)
    pump.start()
    grant_id = info["grant_id"]
    old_expiry = _expires(info)
    try:
        conn = _open_echo(info["port"])
        # From another terminal (another CLI process).
        extend_started = time.time()
        result = alice.run("extend", grant_id, "--ttl", "10s", "-o", "json")
        extend_done = time.time()
        assert result.returncode == 0, result.stderr
        assert extend_done < old_expiry, "the machine is too slow for this test: extended after the expiry"
        new_expiry = _expires(json.loads(result.stdout))
        assert new_expiry - extend_started >= 9.0 and new_expiry > old_expiry + 3

        # Past the maximum (20s from the grant's start): refused, the tunnel stays up.
        over = alice.run("extend", grant_id, "--ttl", "30s")
        assert over.returncode == ExitCode.DENIED, over.stderr
        assert "the maximum for read on svc-echo is 20s" in over.stderr
        assert "hint: request a new grant" in over.stderr
        _ping(conn)

        # The ledger has the extension (alice reads the audit log), with the old and new expiry.
        audit = alice.run("audit", "--grant", grant_id, "-o", "json")
        assert audit.returncode == 0, audit.stderr
        [entry] = [e for e in json.loads(audit.stdout) if e["action"] == "grant.extend"]
        assert abs(_expires({"expires_at": entry["details"]["old_expires_at"]}) - old_expiry) < 0.001
        assert abs(_expires({"expires_at": entry["details"]["expires_at"]}) - new_expiry) < 0.001

        # The connection lives on past the original expiry (each round trip proves it).
        while time.time() < old_expiry + CUT_WINDOW + 0.5:
            _ping(conn)
            time.sleep(0.2)  # pacing the round trips, not waiting for anything
        # ... and is cut at the new one.
        cut = _wait_for_cut(conn, timeout=new_expiry - time.time() + 10)
        conn.close()
        late = cut - new_expiry
        assert -0.05 <= late <= CUT_WINDOW, f"cut {late:+.2f}s from the new expiry"
        assert proc.wait(timeout=10) == ExitCode.EXPIRED
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    pump.join(timeout=5)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()

    warnings = [(at, text) for at, text in stderr if text.startswith(f"warning: grant {grant_id} ends in")]
    assert warnings, "\n".join(text for _, text in stderr)
    for at, text in warnings:
        assert f"`access extend {grant_id} --ttl TTL`" in text
        stated = parse_duration(re.search(r"ends in (\S+?):", text).group(1)).total_seconds()  # type: ignore[union-attr]
        # Which expiry was in force when it was printed (either one while the extension ran).
        truths = [new_expiry - at] if at >= extend_done else [old_expiry - at, new_expiry - at]
        if at < extend_started:
            truths = [old_expiry - at]
        assert any(abs(stated - truth) <= WARNING_SLACK for truth in truths), (text, at, truths)
    # The connect followed the extension: it warned before the NEW expiry too.
    assert any(at >= extend_done for at, _ in warnings), warnings
    print(
        f"\nextend: old expiry +{old_expiry - extend_started:.2f}s, extended in "
        f"{extend_done - extend_started:.2f}s, cut {late:+.3f}s from the new expiry, "
        f"{len(warnings)} warnings"
    )
