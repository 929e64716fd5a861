"""``access approve``, ``deny``, ``grants --pending``, ``wait`` and ``request --wait/--no-wait``
against the real broker in-process, on its FakeClock; the wait's sleep is injected (FakeTime moves
the CLI's monotonic clock and the broker's together, and lets the world act meanwhile)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta

import pytest

from access.broker import grants
from access.broker.store import principals
from access.cli import review
from access.shared.errors import ExitCode
from tests.broker.grants.test_approvals import LEADS_2, context, person, policy_with
from tests.cli.conftest import BrokerApp, LiveBroker
from tests.cli.test_login import FakeTime

WRITE = ("request", "svc-payments", "-s", "write", "-t", "20m", "-r", "CHG-42")


@pytest.fixture
def live(broker_app: BrokerApp) -> LiveBroker:
    return make_live(broker_app)


def make_live(broker_app: BrokerApp, wait: str = "10m") -> LiveBroker:
    made = broker_app(policy=policy_with(LEADS_2, wait=wait), users={})
    # Inserted directly (no password hashing, which is slow and tested elsewhere): sign_in opens sessions.
    for name, group in [("alice", "sre"), ("bob", "leads"), ("carol", "leads"), ("eve", "marketing")]:
        person(made.broker, name, group)
        with made.broker.transaction() as conn:
            made.users[name] = principals.by_name(conn, name)
    return made


@pytest.fixture
def instant(live: LiveBroker, monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    clock = FakeTime(live)
    monkeypatch.setattr(review, "SLEEP", clock.sleep)
    monkeypatch.setattr(review, "MONOTONIC", clock.monotonic)
    return clock


def ask(live: LiveBroker, *extra: str) -> str:
    """alice asks for write (needs 2 of group:leads) without waiting: the pending grant's id."""
    live.sign_in("alice")
    result = live.invoke(*WRITE, "--no-wait", "-o", "json", *extra)
    assert result.exit_code == ExitCode.PENDING, result.stderr
    grant = json.loads(result.stdout)
    assert grant["state"] == "pending"
    gid: str = grant["id"]
    assert f"access wait {gid}" in result.stderr
    return gid


def by(live: LiveBroker, name: str, gid: str) -> Callable[[], None]:
    """``name`` approves ``gid`` through the broker: a reviewer at another terminal."""
    return lambda: grants.approve(live.broker, context(live.broker, name), gid, "")


def test_no_wait_prints_the_pending_grant_and_exits_5(live: LiveBroker) -> None:
    live.sign_in("alice")
    result = live.invoke(*WRITE)  # not a terminal: no waiting unless --wait
    assert result.exit_code == ExitCode.PENDING
    assert "state      pending" in result.stdout
    assert "reviewers  2 of group:leads" in result.stdout
    assert "needs      2 more of group:leads" in result.stdout
    assert "waits for approval by 2 more of group:leads" in result.stderr
    services = live.invoke("services")
    assert "write (approval: 2 of group:leads)" in services.stdout


def test_reviewers_see_approve_and_deny(live: LiveBroker) -> None:
    gid = ask(live)
    live.sign_in("alice")
    own = live.invoke("approve", gid)
    assert own.exit_code == ExitCode.DENIED and "nobody reviews their own request" in own.stderr
    live.sign_in("bob")
    listed = live.invoke("grants", "--pending")
    assert listed.exit_code == 0, listed.stderr
    header, row = listed.stdout.splitlines()[:2]
    assert header.split() == ["ID", "REQUESTER", "SERVICE", "SCOPE", "TTL", "AGE", "NEEDS", "REASON"]
    assert row.split()[:6] == [gid, "alice", "svc-payments", "write", "20m", "0s"]
    assert "2 more of group:leads" in row and row.endswith("CHG-42")
    first = live.invoke("approve", gid, "--comment", "looks right")
    assert first.exit_code == 0, first.stderr
    assert "it still needs 1 more of group:leads" in first.stderr
    assert 'bob approved ("looks right")' in first.stdout
    again = live.invoke("approve", gid)
    assert again.exit_code == ExitCode.ERROR and "you already approved grant" in again.stderr
    assert live.invoke("grants", "--pending").stderr.strip() == "Nothing waits for your review."
    live.sign_in("eve")
    assert live.invoke("approve", gid).exit_code == ExitCode.NOT_FOUND  # not hers to see
    live.sign_in("carol")
    assert live.invoke("deny", gid).exit_code == ExitCode.USAGE  # a no needs a why
    denied = live.invoke("deny", gid, "--reason", "not during the freeze")
    assert denied.exit_code == 0 and "Denied grant" in denied.stderr
    live.sign_in("alice")
    waited = live.invoke("wait", gid)
    assert waited.exit_code == ExitCode.DENIED
    assert "denied by carol: not during the freeze" in waited.stderr


def test_request_wait_prints_the_grant_once_approved(live: LiveBroker, instant: FakeTime) -> None:
    live.sign_in("alice")
    holder: list[str] = []

    def approve_as(name: str) -> Callable[[], None]:
        def act() -> None:
            if not holder:
                [pending] = grants.list_grants(live.broker, context(live.broker, "alice"))
                holder.append(pending.id)
            by(live, name, holder[0])()

        return act

    instant.during[2] = approve_as("bob")
    instant.during[4] = approve_as("carol")
    result = live.invoke(*WRITE, "--wait", "-o", "json")
    assert result.exit_code == 0, result.stderr
    grant = json.loads(result.stdout)
    assert grant["state"] == "active" and grant["id"] == holder[0]
    assert instant.sleeps == [review.POLL_INTERVAL] * 4  # bounded polls, no busy loop
    approved = grants.get_grant(live.broker, context(live.broker, "alice"), holder[0])
    assert approved.approved_at is not None
    assert approved.expires_at == approved.approved_at + timedelta(minutes=20)  # from the approval
    assert "waiting for 2 more of group:leads" in result.stderr
    assert "waiting for 1 more of group:leads (bob approved; needs 2 of group:leads)" in result.stderr
    assert "Granted write on svc-payments for 20m" in result.stderr


def test_a_wait_ends_at_the_review_deadline(broker_app: BrokerApp, monkeypatch: pytest.MonkeyPatch) -> None:
    live = make_live(broker_app, wait="1m")
    clock = FakeTime(live)
    monkeypatch.setattr(review, "SLEEP", clock.sleep)
    monkeypatch.setattr(review, "MONOTONIC", clock.monotonic)
    gid = ask(live)
    result = live.invoke("wait", gid)
    assert result.exit_code == ExitCode.EXPIRED
    assert f"grant {gid} expired unreviewed" in result.stderr
    assert 60 <= sum(clock.sleeps) <= 60 + review.GRACE + review.POLL_INTERVAL  # bounded by the deadline


def test_ctrl_c_leaves_the_request_pending(live: LiveBroker, instant: FakeTime) -> None:
    gid = ask(live)

    def interrupt() -> None:
        raise KeyboardInterrupt

    instant.during[1] = interrupt
    result = live.invoke("wait", gid)
    assert result.exit_code == ExitCode.PENDING
    assert "stays pending until reviewed" in result.stderr
    assert f"pick it up with `access wait {gid}`" in result.stderr
    assert grants.get_grant(live.broker, context(live.broker, "alice"), gid).state == "pending"
    cancelled = live.invoke("revoke", gid)
    assert cancelled.exit_code == 0 and "Cancelled request" in cancelled.stderr


def test_exec_on_a_request_that_needs_approval(live: LiveBroker) -> None:
    live.sign_in("alice")
    result = live.invoke("exec", "svc-payments", "-s", "write", "--no-wait", "--", "true")
    assert result.exit_code == ExitCode.PENDING
    assert "waits for approval by 2 more of group:leads" in result.stderr
    again = live.invoke("exec", "svc-payments", "-s", "write", "--no-wait", "--", "true")
    assert again.exit_code == ExitCode.PENDING  # the same request, not a second one for the reviewers
    [pending] = grants.list_grants(live.broker, context(live.broker, "alice"))
    assert f"your request {pending.id} for it waits for approval" in again.stderr
    assert len(live.sent("POST", "/v1/grants")) == 1


def test_connect_and_exec_wait_for_the_reviewers(live: LiveBroker, instant: FakeTime) -> None:
    from access.cli.client import BrokerClient
    from access.cli.commands.tunnel import _grant_for
    from access.cli.tokens import FileStore
    from tests.cli.conftest import BROKER

    live.sign_in("alice")
    client = BrokerClient(
        BROKER, transport=live.transport, token_store=FileStore(live.config_dir / "tokens.json"), now=live.now
    )
    seen: list[str] = []

    def vote(name: str) -> Callable[[], None]:
        def act() -> None:
            if not seen:
                [pending] = grants.list_grants(live.broker, context(live.broker, "alice"))
                seen.append(pending.id)
            by(live, name, seen[0])()

        return act

    instant.during[1], instant.during[2] = vote("bob"), vote("carol")
    grant = _grant_for(client, "svc-payments", "write", "20m", None, None, True)
    assert (grant.id, grant.state, grant.seconds_left) == (seen[0], "active", 1200)
    client.close()
