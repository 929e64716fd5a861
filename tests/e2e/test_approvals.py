"""Approvals end to end: the real broker process (SQLite), the real CLI as three people's
subprocesses, and a loopback webhook receiver that checks signatures. One broker for every check.

alice asks for write, which needs 2 of group:leads: ``--no-wait`` exits 5 with the id; a second
request with ``--wait`` runs as a subprocess while bob and carol, each from their own CLI config,
find it with ``access grants --pending`` and approve it; it then prints the active grant, whose
expiry counts from the approval. alice cannot approve her own; bob denies the first request.
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tests.broker.grants.test_approvals import LEADS_2, policy_with
from tests.e2e.conftest import Cli, DevCA, make_broker_process, running
from tests.fakes.webhooks import receiver

WRITE = ("request", "svc-payments", "-s", "write", "-t", "5m", "-r", "CHG-42", "-o", "json")


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _person(tmp_path: Path, proc: Any, name: str, *groups: str) -> Cli:
    password = f"{name}-password-1"
    proc.add_user(name, password, *groups)
    home = tmp_path / f"home-{name}"
    home.mkdir()
    cli = Cli(home=home, broker=proc)
    login = cli.device_login(name, password)
    assert login.returncode == 0, login.stderr
    return cli


def _pending(cli: Cli) -> list[dict[str, Any]]:
    result = cli.run("grants", "--pending", "-o", "json")
    assert result.returncode == 0, result.stderr
    items: list[dict[str, Any]] = json.loads(result.stdout)
    return items


def test_two_leads_approve_from_their_own_terminals(tmp_path: Path, devca: DevCA) -> None:
    secret = secrets.token_hex(32).encode()
    secret_file = tmp_path / "webhook.secret"
    secret_file.write_bytes(secret)
    secret_file.chmod(0o600)
    with receiver(secret, time.time) as hook:
        hooks = [{"name": "ops", "url": hook.url, "format": "json", "secret_file": str(secret_file)}]
        proc = make_broker_process(
            tmp_path,
            devca,
            f"sqlite:///{tmp_path / 'broker-data' / 'broker.db'}",
            policy=policy_with(LEADS_2, wait="10m"),
            ACCESS_BROKER_WEBHOOKS=json.dumps(hooks),
        )
        with running(proc):
            alice = _person(tmp_path, proc, "alice", "sre")
            bob = _person(tmp_path, proc, "bob", "leads")
            carol = _person(tmp_path, proc, "carol", "leads")

            first = alice.run(*WRITE, "--no-wait")
            assert first.returncode == 5, first.stderr  # pending, for scripts
            parked = json.loads(first.stdout)
            assert parked["state"] == "pending" and f"access wait {parked['id']}" in first.stderr

            waiting = alice.popen(*WRITE, "--wait")
            try:
                deadline = time.monotonic() + 20
                while len(items := _pending(bob)) < 2:
                    assert time.monotonic() < deadline, "the second request never showed up for review"
                    time.sleep(0.2)
                assert [i["subject"] for i in items] == ["alice", "alice"]
                second = next(i["id"] for i in items if i["id"] != parked["id"])

                own = alice.run("approve", second)
                assert own.returncode == 4 and "nobody reviews their own request" in own.stderr
                approved = bob.run("approve", second, "--comment", "checked CHG-42")
                assert approved.returncode == 0, approved.stderr
                assert "still needs 1 more of group:leads" in approved.stderr
                time.sleep(1.1)  # the TTL counts from the second approval, not from the request
                done = carol.run("approve", second)
                assert done.returncode == 0 and "is active now" in done.stderr
                out, err = waiting.communicate(timeout=30)
            finally:
                if waiting.poll() is None:
                    waiting.kill()
                    waiting.communicate(timeout=10)
            assert waiting.returncode == 0, err
            grant = json.loads(out)
            assert (grant["id"], grant["state"]) == (second, "active")
            approved_at, requested_at = _at(grant["approved_at"]), _at(grant["created_at"])
            assert approved_at - requested_at >= timedelta(seconds=1)
            assert _at(grant["expires_at"]) == approved_at + timedelta(minutes=5)
            assert "waiting for 1 more of group:leads (bob approved" in err

            denied = bob.run("deny", parked["id"], "--reason", "one at a time")
            assert denied.returncode == 0, denied.stderr
            assert alice.run("wait", parked["id"]).returncode == 4
            got = hook.wait_for(6, timeout=20)
    assert all(r.signed for r in got)
    events = [(r.json["event"], r.json["grant"]["id"]) for r in got]
    assert sorted(events) == sorted(
        [
            ("grant.requested", parked["id"]),
            ("grant.requested", second),
            ("grant.approved", second),
            ("grant.approved", second),
            ("grant.issued", second),
            ("grant.denied", parked["id"]),
        ]
    )
    requested = next(r.json for r in got if r.json["event"] == "grant.requested")
    assert requested["details"]["reviewers"] == "2 of group:leads"
    approvals = [r.json["details"] for r in got if r.json["event"] == "grant.approved"]
    assert sorted((a["reviewer"], a["missing"]) for a in approvals) == [
        ("bob", "1 more of group:leads"),
        ("carol", ""),
    ]
