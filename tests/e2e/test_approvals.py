"""Approvals end to end: the real broker process, the real CLI as several people's subprocesses,
each from their own CLI config. One broker per test, logins in parallel.

- Two leads approve (SQLite, with a loopback webhook receiver that checks signatures): alice asks
  for write, which needs 2 of group:leads: ``--no-wait`` exits 5 with the id; a second request
  with ``--wait`` runs as a subprocess while bob and carol find it with ``access grants
  --pending`` and approve it; it then prints the active grant, whose expiry counts from the
  approval. alice cannot approve her own; bob denies the first request.
- The harder cases (SQLite): an AND of two groups, where a reviewer in both counts once; a
  service account's owner refused as its reviewer; a request expiring unreviewed while
  ``access wait`` waits for it; approve against deny from two terminals at once.
- That race three times on PostgreSQL (row locks rather than SQLite's one writer).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from access.shared.devca import DevCA
from tests.broker.grants.test_approvals import LEADS_2, policy_with
from tests.e2e.conftest import BrokerProcess, Cli, Watched, make_broker_process, running
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
            # Three people sign in at once (each its own admin command and device login).
            with ThreadPoolExecutor(3) as pool:
                people = [("alice", "sre"), ("bob", "leads"), ("carol", "leads")]
                alice, bob, carol = pool.map(lambda p: _person(tmp_path, proc, *p), people)

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


def _rule(
    name: str, scope: str, *clauses: dict[str, Any], who: str = "sre", wait: str = "10m"
) -> dict[str, Any]:
    return {
        "name": name,
        "subjects": {"groups": [who]},
        "services": ["svc-payments"],
        "scopes": [scope],
        "require": "approval",
        "approval": {"reviewers": list(clauses), "wait": wait},
    }


LEADS = {"groups": ["leads"]}
# One service, a scope per case: write needs 2 leads AND 1 of security; deploy (for the ci bot)
# and admin need a lead; debug needs a lead within 3 seconds.
HARDER = {
    "services": [
        {
            "name": "svc-payments",
            "kind": "postgres",
            "target": "127.0.0.1:5432",
            "scopes": ["write", "deploy", "admin", "debug"],
            "max_ttl": "1h",
            "options": {"database": "test", "user": "postgres"},
        }
    ],
    "rules": [
        _rule("leads-and-security", "write", LEADS_2, {"groups": ["security"]}),
        _rule("bot-deploys", "deploy", LEADS, who="ci"),
        _rule("one-lead", "admin", LEADS),
        _rule("quick-review", "debug", LEADS, wait="3s"),
    ],
}


def _ask(cli: Cli, scope: str, reason: str = "CHG-7") -> dict[str, Any]:
    """``access request svc-payments -s SCOPE --no-wait``: pending, exit 5; the grant."""
    asked = cli.run(
        "request", "svc-payments", "-s", scope, "-t", "5m", "-r", reason, "--no-wait", "-o", "json"
    )
    assert asked.returncode == 5, asked.stderr
    grant: dict[str, Any] = json.loads(asked.stdout)
    assert grant["state"] == "pending"
    return grant


def _people(tmp_path: Path, proc: BrokerProcess, *people: tuple[str, ...]) -> list[Cli]:
    """Each (name, *groups) added and signed in through the device page, all at once."""
    with ThreadPoolExecutor(len(people)) as pool:
        return list(pool.map(lambda p: _person(tmp_path, proc, *p), people))


@contextlib.contextmanager
def _watching(cli: Cli, *args: str) -> Iterator[Watched]:
    watched = cli.watch(*args)
    try:
        yield watched
    finally:
        watched.kill()


def _and_of_two_groups(alice: Cli, bob: Cli, dana: Cli, erin: Cli) -> None:
    """2 of group:leads and 1 of group:security: dana (leads and security) and bob (leads) fill
    two seats, not three; erin (security only) completes it; the TTL counts from her approval."""
    gid = _ask(alice, "write")["id"]
    for lead in (dana, bob):
        said = lead.run("approve", gid)
        assert said.returncode == 0, said.stderr
        assert f"Approved grant {gid}; it still needs 1 more of group:" in said.stderr
    [item] = [i for i in _pending(erin) if i["id"] == gid]
    missing = item["review"]["missing"]
    assert missing in ("1 more of group:leads", "1 more of group:security")
    assert [a["reviewer"] for a in item["review"]["approvals"]] == ["dana", "bob"]
    with _watching(alice, "wait", gid, "-o", "json") as waiting:
        # The requester's wait says what is missing before erin approves (its first look).
        waiting.until(
            rf"waiting for {missing} \(dana, bob approved; needs 2 of group:leads and 1 of group:security\)"
        )
        done = erin.run("approve", gid)
        assert done.returncode == 0 and f"grant {gid} for alice is active now" in done.stderr
        result = waiting.finish()
    assert result.returncode == 0, result.stderr
    grant = json.loads(result.stdout)
    assert grant["state"] == "active"
    votes = {a["reviewer"]: _at(a["at"]) for a in grant["review"]["approvals"]}
    approved_at = _at(grant["approved_at"])
    assert approved_at == votes["erin"] >= max(votes["dana"], votes["bob"])
    assert _at(grant["expires_at"]) == approved_at + timedelta(minutes=5)


def _owned_service_account(tmp_path: Path, proc: BrokerProcess, alice: Cli, bob: Cli) -> None:
    """deploy-bot, owned by alice (a lead), asks for deploy: alice may not approve it, bob may."""
    creds = proc.add_service_account("deploy-bot", "ci", owner="alice")
    secret_file = tmp_path / "bot.secret"
    secret_file.write_text(creds["client_secret"])
    secret_file.chmod(0o600)
    home = tmp_path / "home-deploy-bot"
    home.mkdir()
    bot = Cli(home=home, broker=proc)
    login = bot.run("login", "--client-id", creds["client_id"], "--client-secret-file", str(secret_file))
    assert login.returncode == 0, login.stderr
    asked = _ask(bot, "deploy", "release 7")
    assert asked["subject"] == "deploy-bot"
    assert asked["id"] not in [i["id"] for i in _pending(alice)]
    own = alice.run("approve", asked["id"])
    assert own.returncode == 4, own.stderr
    assert "deploy-bot is a service account you own: nobody reviews their own request" in own.stderr
    approved = bob.run("approve", asked["id"])
    assert approved.returncode == 0 and "for deploy-bot is active now" in approved.stderr
    got = bot.run("wait", asked["id"], "-o", "json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["state"] == "active"


def _finished(waiting: Watched) -> tuple[subprocess.CompletedProcess[str], float]:
    """What ``waiting`` printed, and when it exited (this machine's wall clock, as the broker's)."""
    result = waiting.finish(timeout=30)
    return result, time.time()


def _approve_against_deny(alice: Cli, bob: Cli, dana: Cli, rounds: int = 3) -> None:
    """bob approves while dana denies, from two terminals at once: one decides, the other is told
    what happened (exit 1); the requester sees the grant in the state of the one that won."""
    outcomes: dict[str, str] = {}
    for _ in range(rounds):
        gid = _ask(alice, "admin")["id"]
        yes = bob.popen("approve", gid, "-o", "json")
        no = dana.popen("deny", gid, "--reason", "x", "-o", "json")
        try:
            yes_out, yes_err = yes.communicate(timeout=30)
            no_out, no_err = no.communicate(timeout=30)
        finally:
            for racer in (yes, no):
                if racer.poll() is None:
                    racer.kill()
                    racer.communicate(timeout=10)
        assert sorted((yes.returncode, no.returncode)) == [0, 1], yes_err + no_err
        if yes.returncode == 0:
            outcomes[gid] = json.loads(yes_out)["state"]
            assert f"grant {gid} was already approved by bob at " in no_err
        else:
            outcomes[gid] = json.loads(no_out)["state"]
            assert f"grant {gid} was already denied by dana at " in yes_err
    listed = alice.run("grants", "--all", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    states = {g["id"]: g["state"] for g in json.loads(listed.stdout) if g["id"] in outcomes}
    assert states == outcomes and set(outcomes.values()) <= {"active", "denied"}


def test_the_harder_cases_from_terminals(tmp_path: Path, devca: DevCA) -> None:
    proc = make_broker_process(
        tmp_path, devca, f"sqlite:///{tmp_path / 'broker-data' / 'broker.db'}", policy=HARDER
    )
    with running(proc), ThreadPoolExecutor(1) as pool:
        people = [
            ("alice", "sre", "leads"),
            ("bob", "leads"),
            ("dana", "leads", "security"),
            ("erin", "security"),
        ]
        alice, bob, dana, erin = _people(tmp_path, proc, *people)

        # Nobody reviews this one: alice's `access wait` runs while the other cases do.
        quick = _ask(alice, "debug")
        deadline = _at(quick["review"]["review_expires_at"])
        waiting = alice.watch("wait", quick["id"])
        try:
            ended: Future[tuple[subprocess.CompletedProcess[str], float]] = pool.submit(_finished, waiting)
            _and_of_two_groups(alice, bob, dana, erin)
            _owned_service_account(tmp_path, proc, alice, bob)
            _approve_against_deny(alice, bob, dana, rounds=1)  # three rounds on PostgreSQL below
            expired, exited = ended.result(timeout=40)
        finally:
            waiting.kill()
        assert expired.returncode == 6, expired.stderr
        assert f"grant {quick['id']} expired unreviewed: nobody approved it in time" in expired.stderr
        # By the broker's deadline, not before it and not long after (the CLI polls every 1.5 s).
        assert 0 <= exited - deadline.timestamp() <= 3, (deadline, exited)
        late = bob.run("approve", quick["id"])
        assert late.returncode == 1
        assert f"grant {quick['id']} expired unreviewed at " in late.stderr


def test_approve_against_deny_on_postgresql(tmp_path: Path, devca: DevCA, pg_url: str) -> None:
    proc = make_broker_process(tmp_path, devca, pg_url, policy=HARDER)
    with running(proc):
        alice, bob, dana = _people(tmp_path, proc, ("alice", "sre"), ("bob", "leads"), ("dana", "leads"))
        _approve_against_deny(alice, bob, dana)
