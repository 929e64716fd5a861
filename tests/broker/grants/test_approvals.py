"""Approvals on SQLite and PostgreSQL: votes, the tally, who may review, the two clocks, reloads,
and races that end in exactly one outcome (PostgreSQL, two threads)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from access.broker import grants
from access.broker.auth import identity
from access.broker.auth.principal import AuthContext
from access.broker.clock import FakeClock
from access.broker.errors import BrokerError, Conflict, Forbidden, InvalidRequest, NotFound
from access.broker.rollout import reload_file
from access.broker.runtime import Broker
from access.broker.store import principals
from access.shared.models import Grant, GrantState
from tests.broker.conftest import audit_rows
from tests.broker.grants.test_grants import req
from tests.conftest import write_policy


def policy_with(*clauses: dict[str, Any], wait: str = "10m") -> dict[str, Any]:
    """svc-payments: read auto for sre; write for sre needs approval by ``clauses``."""
    return {
        "services": [
            {
                "name": "svc-payments",
                "kind": "postgres",
                "target": "127.0.0.1:5432",
                "scopes": ["read", "write"],
                "max_ttl": "1h",
                "options": {"database": "test", "user": "postgres"},
            }
        ],
        "rules": [
            {
                "name": "sre-read",
                "subjects": {"groups": ["sre"]},
                "services": ["svc-payments"],
                "scopes": ["read"],
            },
            {
                "name": "payments-write",
                "subjects": {"groups": ["sre", "ci"]},
                "services": ["svc-payments"],
                "scopes": ["write"],
                "require": "approval",
                "approval": {"reviewers": list(clauses), "wait": wait},
            },
        ],
        "audit": {"readers": {"groups": ["security-audit"]}},
    }


LEADS_2 = {"groups": ["leads"], "count": 2}


def person(
    broker: Broker, name: str, *groups: str, kind: str = "user", owner: str | None = None
) -> AuthContext:
    """A principal in the directory (inserted directly: no password hashing, which is slow and
    tested elsewhere), and its context as a signed-in request would have it."""
    with broker.transaction() as conn:
        principals.insert(
            conn,
            principal_id=str(uuid.uuid4()),
            name=name,
            kind=kind,
            groups=groups,
            created_at=broker.clock.now(),
            owner=owner,
        )
    return context(broker, name)


def context(broker: Broker, name: str) -> AuthContext:
    with broker.transaction() as conn:
        found = principals.by_name(conn, name)
    assert found is not None
    return AuthContext(
        principal_id=found.id,
        name=found.name,
        kind=found.kind,
        groups=found.groups,
        session_id="s-test",
        token_id="t-test",
        expires_at=broker.clock.now() + timedelta(hours=2),
    )


def write(ttl: str = "20m") -> Any:
    return req(scope="write", ttl=ttl)


@pytest.fixture
def make(make_broker: Callable[..., Broker], db_url: str) -> Callable[..., Broker]:
    def factory(*clauses: dict[str, Any], wait: str = "10m") -> Broker:
        broker: Broker = make_broker(db_url=db_url, policy=policy_with(*clauses, wait=wait))
        return broker

    return factory


def clock_of(broker: Broker) -> FakeClock:
    assert isinstance(broker.clock, FakeClock)
    return broker.clock


def test_one_reviewer_approves_and_the_ttl_counts_from_the_approval(make: Callable[..., Broker]) -> None:
    broker = make({"groups": ["leads"]})
    clock = clock_of(broker)
    alice, bob = person(broker, "alice", "sre"), person(broker, "bob", "leads")
    asked = grants.request_grant(broker, alice, write("20m"))
    assert asked.state == GrantState.PENDING
    assert asked.expires_at == clock.now() + timedelta(minutes=10)
    assert [g.id for g in grants.pending_for(broker, bob)] == [asked.id]
    assert grants.pending_for(broker, alice) == []  # not her own
    shown = grants.get_grant(broker, bob, asked.id)  # reviewers may look at it
    assert shown.review is not None and shown.review.can_review
    assert grants.get_grant(broker, alice, asked.id).review.can_review is False  # type: ignore[union-attr]
    clock.advance(timedelta(minutes=7))  # the review takes its time: the TTL does not run meanwhile
    approved = grants.approve(broker, bob, asked.id, "ok, INC-1")
    assert approved.state == GrantState.ACTIVE
    assert approved.approved_at == clock.now()
    assert approved.expires_at == clock.now() + timedelta(minutes=20)
    assert approved.seconds_left == 1200
    assert approved.review is not None and approved.review.missing == ""
    assert [(a.reviewer, a.decision, a.comment) for a in approved.review.approvals] == [
        ("bob", "approve", "ok, INC-1")
    ]
    [vote] = audit_rows(broker, "grant.approve")
    assert (vote["actor"], vote["details"]["comment"], vote["details"]["missing"]) == ("bob", "ok, INC-1", "")
    issue = audit_rows(broker, "grant.issue")[-1]["details"]
    assert (issue["requirement"], issue["approvers"]) == ("approval", ["bob"])
    assert grants.pending_for(broker, bob) == []
    assert grants.open_for_tunnel(broker, alice, asked.id).grant_id == asked.id
    clock.advance(timedelta(minutes=20))
    assert grants.get_grant(broker, alice, asked.id).state == GrantState.EXPIRED


def test_two_of_a_group_and_one_vote_each(make: Callable[..., Broker]) -> None:
    broker = make(LEADS_2)
    alice = person(broker, "alice", "sre")
    bob, carol = person(broker, "bob", "leads"), person(broker, "carol", "leads")
    asked = grants.request_grant(broker, alice, write())
    first = grants.approve(broker, bob, asked.id)
    assert first.state == GrantState.PENDING
    assert first.review is not None and first.review.missing == "1 more of group:leads"
    assert first.review.clauses[0].approved_by == ["bob"] and not first.review.can_review
    with pytest.raises(Conflict, match="you already approved grant"):
        grants.approve(broker, bob, asked.id)
    assert grants.approve(broker, carol, asked.id).state == GrantState.ACTIVE
    assert [r["details"]["missing"] for r in audit_rows(broker, "grant.approve")] == [
        "1 more of group:leads",
        "",
    ]


def test_an_and_of_two_groups_counts_a_reviewer_in_both_once(make: Callable[..., Broker]) -> None:
    broker = make({"groups": ["leads"]}, {"groups": ["security"]})
    alice = person(broker, "alice", "sre")
    dana = person(broker, "dana", "leads", "security")
    erin = person(broker, "erin", "security")
    asked = grants.request_grant(broker, alice, write())
    after_dana = grants.approve(broker, dana, asked.id)
    assert after_dana.state == GrantState.PENDING  # dana fills one clause, not both
    assert after_dana.review is not None
    assert after_dana.review.missing in ("1 more of group:leads", "1 more of group:security")
    done = grants.approve(broker, erin, asked.id)
    assert done.state == GrantState.ACTIVE
    assert done.review is not None
    assert sorted(name for clause in done.review.clauses for name in clause.approved_by) == ["dana", "erin"]


def test_nobody_approves_their_own_request_nor_their_service_accounts(make: Callable[..., Broker]) -> None:
    broker = make({"groups": ["leads"]})
    lead = person(broker, "lena", "sre", "leads")  # a lead who may request too
    bob, carol = person(broker, "bob", "leads"), person(broker, "carol", "leads")
    own = grants.request_grant(broker, lead, write())
    assert grants.pending_for(broker, lead) == []
    with pytest.raises(Forbidden, match="nobody reviews their own request"):
        grants.approve(broker, lead, own.id)
    bot = person(broker, "deploy-bot", "ci", kind="service_account", owner="bob")
    asked = grants.request_grant(broker, bot, write())
    assert [g.id for g in grants.pending_for(broker, bob)] == [own.id]  # not the bot's
    with pytest.raises(Forbidden, match="deploy-bot is a service account you own"):
        grants.approve(broker, bob, asked.id)
    with pytest.raises(Forbidden, match="service account you own"):
        grants.deny(broker, bob, asked.id, "no")
    assert grants.approve(broker, carol, asked.id).state == GrantState.ACTIVE
    assert grants.pending_for(broker, bot) == []  # service accounts never review
    with pytest.raises(InvalidRequest, match="no user named 'nobody'"):
        identity.create_service_account(broker, "other-bot", ["ci"], owner="nobody")


def test_a_reviewer_dropped_by_a_reload_can_no_longer_approve(
    make: Callable[..., Broker], tmp_path: Path
) -> None:
    broker = make({"groups": ["leads"], "users": ["bob"]})
    alice, bob = person(broker, "alice", "sre"), person(broker, "bob")
    asked = grants.request_grant(broker, alice, write())
    assert [g.id for g in grants.pending_for(broker, bob)] == [asked.id]
    done = reload_file(
        broker, write_policy(tmp_path / "p1.yaml", policy_with({"groups": ["leads"]})), "admin:t"
    )
    assert done.ended == ()  # its rule still asks for approval: it still waits, for leads now
    assert grants.pending_for(broker, bob) == []
    with pytest.raises(NotFound):
        grants.approve(broker, bob, asked.id)
    assert grants.get_grant(broker, alice, asked.id).state == GrantState.PENDING
    # A policy that no longer asks for approval ends what waits (the requester asks again).
    auto = policy_with({"groups": ["leads"]})
    auto["rules"][1].update(require="auto", approval=None)
    done = reload_file(broker, write_policy(tmp_path / "p2.yaml", auto), "admin:t")
    assert done.ended == (asked.id,)
    ended = grants.get_grant(broker, alice, asked.id)
    assert (ended.state, ended.ended_reason) == (GrantState.REVOKED, "policy")


def test_an_approved_grant_survives_a_reload_that_still_asks_for_approval(
    make: Callable[..., Broker], tmp_path: Path
) -> None:
    broker = make({"groups": ["leads"]})
    alice, bob = person(broker, "alice", "sre"), person(broker, "bob", "leads")
    asked = grants.request_grant(broker, alice, write())
    grants.approve(broker, bob, asked.id)
    done = reload_file(broker, write_policy(tmp_path / "p.yaml", policy_with(LEADS_2)), "admin:t")
    assert done.ended == ()
    assert grants.get_grant(broker, alice, asked.id).state == GrantState.ACTIVE


def test_a_request_expires_unreviewed(make: Callable[..., Broker]) -> None:
    broker = make({"groups": ["leads"]}, wait="5m")
    clock = clock_of(broker)
    alice, bob = person(broker, "alice", "sre"), person(broker, "bob", "leads")
    asked = grants.request_grant(broker, alice, write())
    clock.advance(timedelta(minutes=4, seconds=59))
    assert grants.get_grant(broker, bob, asked.id).review.seconds_left == 1  # type: ignore[union-attr]
    clock.advance(timedelta(seconds=1))  # the review deadline
    shown = grants.get_grant(broker, alice, asked.id)
    assert (shown.state, shown.ended_reason) == (GrantState.EXPIRED, "unreviewed")
    assert grants.pending_for(broker, bob) == []
    assert grants.list_grants(broker, alice) == []
    with pytest.raises(Conflict, match="expired unreviewed"):
        grants.approve(broker, bob, asked.id)
    assert grants.expire_due(broker) == [asked.id]
    assert grants.expire_due(broker) == []
    [entry] = audit_rows(broker, "grant.expired")
    assert (entry["actor"], entry["details"]["reason"]) == ("broker", "unreviewed")


def test_a_denied_request_cannot_be_approved_and_a_cancelled_one_neither(make: Callable[..., Broker]) -> None:
    broker = make(LEADS_2)
    alice = person(broker, "alice", "sre")
    bob, carol = person(broker, "bob", "leads"), person(broker, "carol", "leads")
    asked = grants.request_grant(broker, alice, write())
    grants.approve(broker, bob, asked.id)
    with pytest.raises(InvalidRequest, match="say why"):
        grants.deny(broker, carol, asked.id, "  ")
    denied = grants.deny(broker, carol, asked.id, "not during the freeze")
    assert (denied.state, denied.ended_reason) == (GrantState.DENIED, "denied")
    with pytest.raises(Conflict, match="already denied by carol at"):
        grants.approve(broker, carol, asked.id)
    [reject] = audit_rows(broker, "grant.reject")
    assert reject["details"] == {"grant_id": asked.id, "reviewer": "carol", "reason": "not during the freeze"}
    again = grants.request_grant(broker, alice, write())
    cancelled = grants.revoke_grant(broker, alice, again.id)
    assert (cancelled.state, cancelled.ended_reason) == (GrantState.REVOKED, "cancelled")
    with pytest.raises(Conflict, match="was cancelled by alice"):
        grants.approve(broker, bob, again.id)


def _race(broker: Broker, *votes: Callable[[], Grant]) -> tuple[list[Grant], list[BrokerError]]:
    """Run the votes in threads released together; what each returned or raised."""
    barrier = threading.Barrier(len(votes))
    won: list[Grant] = []
    lost: list[BrokerError] = []

    def run(vote: Callable[[], Grant]) -> None:
        barrier.wait(timeout=10)
        try:
            won.append(vote())
        except BrokerError as exc:
            lost.append(exc)

    threads = [threading.Thread(target=run, args=(vote,)) for vote in votes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return won, lost


@pytest.mark.parametrize("rounds", [3])
def test_races_end_in_exactly_one_outcome_on_postgresql(
    make_broker: Callable[..., Broker], pg_url: str, rounds: int
) -> None:
    broker = make_broker(db_url=pg_url, policy=policy_with({"groups": ["leads"]}))
    alice = person(broker, "alice", "sre")
    bob, carol = person(broker, "bob", "leads"), person(broker, "carol", "leads")
    for _ in range(rounds):
        first = grants.request_grant(broker, alice, write()).id
        won, lost = _race(
            broker,
            lambda: grants.approve(broker, bob, first),  # noqa: B023 - joined within the round
            lambda: grants.approve(broker, carol, first),  # noqa: B023
        )
        assert len(won) == 1 and len(lost) == 1 and won[0].state == GrantState.ACTIVE
        assert isinstance(lost[0], Conflict) and "was already approved by" in lost[0].message
        assert won[0].review is not None and len(won[0].review.approvals) == 1
        second = grants.request_grant(broker, alice, write()).id
        won, lost = _race(
            broker,
            lambda: grants.approve(broker, bob, second),  # noqa: B023
            lambda: grants.deny(broker, carol, second, "no"),  # noqa: B023
        )
        assert len(won) == 1 and len(lost) == 1 and isinstance(lost[0], Conflict)
        final = grants.get_grant(broker, alice, second)
        assert final.state == won[0].state and final.state in (GrantState.ACTIVE, GrantState.DENIED)
        expected = "already approved" if final.state == GrantState.ACTIVE else "already denied"
        assert expected in lost[0].message
    issued = [r["details"]["grant_id"] for r in audit_rows(broker, "grant.issue")]
    assert len(issued) == len(set(issued))  # no grant issued twice
