"""``extend_grant``: more time under the grant's own rule and its maximum, for its owner only,
audited in one transaction, and one outcome when it races another extension or a revoke."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from access.broker import grants
from access.broker.clock import FakeClock
from access.broker.errors import (
    BrokerError,
    Conflict,
    Expired,
    Forbidden,
    GrantDenied,
    InvalidRequest,
    NotFound,
)
from access.broker.events.bus import GrantExtended
from access.broker.grants import lifecycle
from access.broker.grants.lifecycle import GrantEvent
from access.broker.policy import policy_from_data
from access.broker.runtime import Broker
from access.broker.store import grants as store
from access.broker.store.grants import GrantRecord
from access.shared.models import ExtendRequest, GrantState
from tests.broker.grants.test_grants import add_principal, events, ledger, req
from tests.conftest import DEFAULT_POLICY


@pytest.fixture
def broker(make_broker: Callable[..., Broker], db_url: str) -> Broker:
    return make_broker(db_url=db_url)


@pytest.fixture
def clock(broker: Broker) -> FakeClock:
    assert isinstance(broker.clock, FakeClock)
    return broker.clock


def extend(broker: Broker, who: Any, grant_id: str, ttl: str) -> Any:
    return grants.extend_grant(broker, who, grant_id, ExtendRequest(ttl=ttl))


def stored(broker: Broker, grant_id: str) -> GrantRecord:
    with broker.transaction() as conn:
        record = store.get(conn, grant_id)
    assert record is not None
    return record


def extend_entries(broker: Broker) -> list[dict[str, Any]]:
    return [details for _, action, details in ledger(broker) if action == "grant.extend"]


def test_an_extension_within_the_maximum_counts_from_now_and_is_audited(
    broker: Broker, clock: FakeClock
) -> None:
    alice = add_principal(broker, "alice")
    grant = grants.request_grant(broker, alice, req(ttl="10m"))  # rule sre-payments: at most 30m
    seen = events(broker)
    clock.advance(timedelta(minutes=5))
    extended = extend(broker, alice, grant.id, "20m")  # 5m gone + 20m = 25m in all
    assert extended.state == GrantState.ACTIVE
    assert extended.expires_at == clock.now() + timedelta(minutes=20)
    assert extended.seconds_left == 20 * 60
    assert stored(broker, grant.id).expires_at == extended.expires_at
    [entry] = extend_entries(broker)
    assert entry["grant_id"] == grant.id
    assert entry["old_expires_at"].startswith("2030-01-01T00:10:00")
    assert entry["expires_at"].startswith("2030-01-01T00:25:00")
    assert entry["ttl"] == "20m" and entry["rule"] == "sre-payments"
    assert seen == [GrantExtended(grant.id, extended.expires_at)]  # after the commit
    # Up to the maximum exactly, from the grant's start.
    assert extend(broker, alice, grant.id, "25m").expires_at == grant.created_at + timedelta(minutes=30)


def test_an_extension_past_the_rules_maximum_is_refused_and_changes_nothing(
    broker: Broker, clock: FakeClock
) -> None:
    alice = add_principal(broker, "alice")
    grant = grants.request_grant(broker, alice, req(scope="write", ttl="20m"))
    clock.advance(timedelta(minutes=5))
    seen = events(broker)
    with pytest.raises(GrantDenied) as refused:
        extend(broker, alice, grant.id, "26m")  # 5m + 26m = 31m > 30m
    assert "the maximum for write on svc-payments is 30m" in refused.value.message
    assert refused.value.hint is not None and refused.value.hint.startswith("request a new grant")
    assert "approval" not in refused.value.hint
    assert stored(broker, grant.id).expires_at == grant.expires_at
    assert extend_entries(broker) == [] and seen == []


def test_past_the_maximum_of_a_rule_that_needs_approval_the_hint_says_so(
    make_broker: Callable[..., Broker], sqlite_url: str
) -> None:
    policy = {
        **DEFAULT_POLICY,
        "rules": [
            {
                "name": "sre-payments-write",
                "subjects": {"groups": ["sre"]},
                "services": ["svc-payments"],
                "scopes": ["write"],
                "max_ttl": "1h",
                "require": "approval",
                "approval": {"reviewers": [{"groups": ["leads"]}]},
            }
        ],
    }
    broker = make_broker(db_url=sqlite_url, policy=policy)
    alice = add_principal(broker, "alice")
    now = broker.clock.now()
    # Approved by a reviewer (approvals issue such grants; the row is what they leave).
    record = GrantRecord(
        id="g-" + secrets.token_hex(8),
        principal_id=alice.principal_id,
        subject="alice",
        service="svc-payments",
        kind="postgres",
        scope="write",
        reason="CHG-1",
        state="active",
        rule="sre-payments-write",
        requirement="approval",
        created_at=now,
        expires_at=now + timedelta(minutes=30),
    )
    with lifecycle.transaction(broker) as tx:
        lifecycle.apply(tx, record, GrantEvent.ISSUE, actor="alice", now=now)
    # Within the maximum: more time without a new approval.
    assert extend(broker, alice, record.id, "50m").expires_at == now + timedelta(minutes=50)
    with pytest.raises(GrantDenied) as refused:
        extend(broker, alice, record.id, "2h")
    assert "the maximum for write on svc-payments is 1h" in refused.value.message
    assert refused.value.hint is not None and "it needs approval" in refused.value.hint


def test_only_the_owner_extends(broker: Broker) -> None:
    alice = add_principal(broker, "alice")
    bob = add_principal(broker, "bob", groups=("ci",))
    auditor = add_principal(broker, "sam", groups=("security",))  # an audit reader
    grant = grants.request_grant(broker, alice, req(ttl="10m"))
    with pytest.raises(NotFound) as hidden:
        extend(broker, bob, grant.id, "20m")
    assert hidden.value.message == f"no grant {grant.id!r}"  # as for a grant that does not exist
    with pytest.raises(Forbidden, match="only its owner may extend it"):
        extend(broker, auditor, grant.id, "20m")
    with pytest.raises(NotFound):
        extend(broker, alice, "g-0000000000000000", "20m")
    assert stored(broker, grant.id).expires_at == grant.expires_at and extend_entries(broker) == []


def test_an_ended_or_expired_grant_is_not_extended(broker: Broker, clock: FakeClock) -> None:
    alice = add_principal(broker, "alice")
    revoked = grants.request_grant(broker, alice, req(ttl="10m"))
    grants.revoke_grant(broker, alice, revoked.id)
    with pytest.raises(Conflict, match="has ended \\(revoked\\): an ended grant cannot be extended"):
        extend(broker, alice, revoked.id, "20m")
    expired = grants.request_grant(broker, alice, req(ttl="1m"))
    clock.advance(timedelta(minutes=1))  # at the exact expiry, before the loop has marked it
    with pytest.raises(Expired, match="expired at"):
        extend(broker, alice, expired.id, "20m")
    grants.expire_due(broker)
    with pytest.raises(Expired, match="an ended grant cannot be extended"):
        extend(broker, alice, expired.id, "20m")
    assert extend_entries(broker) == []


def test_an_extension_never_shortens(broker: Broker, clock: FakeClock) -> None:
    alice = add_principal(broker, "alice")
    grant = grants.request_grant(broker, alice, req(ttl="20m"))
    clock.advance(timedelta(minutes=5))  # 15m left
    for ttl in ("10m", "15m"):  # shorter, and the same end
        with pytest.raises(InvalidRequest) as refused:
            extend(broker, alice, grant.id, ttl)
        assert "has 15m left already" in refused.value.message
        assert "never shortens" in refused.value.message
    with pytest.raises(InvalidRequest, match="bad duration"):
        extend(broker, alice, grant.id, "soon")
    assert stored(broker, grant.id).expires_at == grant.expires_at and extend_entries(broker) == []


def test_the_rule_must_still_allow_the_grant_in_the_policy_in_force(broker: Broker) -> None:
    alice = add_principal(broker, "alice")
    grant = grants.request_grant(broker, alice, req(ttl="10m"))
    without = {**DEFAULT_POLICY, "rules": [r for r in DEFAULT_POLICY["rules"] if r["name"] != "sre-payments"]}
    broker.policy = policy_from_data(without)
    with pytest.raises(GrantDenied, match="sre-payments\\) is no longer in the policy"):
        extend(broker, alice, grant.id, "20m")
    denying = {
        **DEFAULT_POLICY,
        "rules": [
            *DEFAULT_POLICY["rules"],
            {
                "name": "freeze",
                "subjects": {"users": ["alice"]},
                "services": ["svc-payments"],
                "scopes": ["read"],
                "require": "deny",
            },
        ],
    }
    broker.policy = policy_from_data(denying)
    with pytest.raises(GrantDenied, match="denied by rule freeze"):
        extend(broker, alice, grant.id, "20m")
    assert extend_entries(broker) == []


# -- races, on PostgreSQL (READ COMMITTED, row locks): exactly one outcome ----------------------


def _wait_for_lock_wait(pg_url: str) -> None:
    """Until a backend of the test's database waits on a lock (bounded)."""
    deadline = time.monotonic() + 10
    with psycopg.connect(pg_url, autocommit=True) as watcher:
        while time.monotonic() < deadline:
            row = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.01)  # polling a condition, with a deadline
    raise AssertionError("the extension never waited on the grant's row")


def _extend_in_thread(
    broker: Broker, who: Any, grant_id: str, ttl: str
) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(extend(broker, who, grant_id, ttl))
        except BrokerError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_a_revoke_that_commits_first_wins_over_a_waiting_extension(
    make_broker: Callable[..., Broker], pg_url: str
) -> None:
    broker = make_broker(db_url=pg_url)
    alice = add_principal(broker, "alice")
    grant = grants.request_grant(broker, alice, req(ttl="10m"))
    record = stored(broker, grant.id)
    with lifecycle.transaction(broker) as tx:  # a revoke, not committed yet
        assert lifecycle.apply(tx, record, GrantEvent.REVOKE, actor="alice", now=broker.clock.now())
        thread, outcome = _extend_in_thread(broker, alice, grant.id, "20m")
        _wait_for_lock_wait(pg_url)  # the extension read the active grant and waits on its row
    thread.join(10)
    [lost] = outcome
    assert isinstance(lost, Conflict) and "extended or ended by another request" in lost.message
    after = stored(broker, grant.id)
    assert after.state == "revoked" and after.expires_at == grant.expires_at
    actions = [action for _, action, _ in ledger(broker)]
    assert actions.count("grant.revoke") == 1 and "grant.extend" not in actions


def test_of_two_racing_extensions_one_wins(make_broker: Callable[..., Broker], pg_url: str) -> None:
    broker = make_broker(db_url=pg_url)
    alice = add_principal(broker, "alice")
    grant = grants.request_grant(broker, alice, req(ttl="10m"))
    other = grant.expires_at + timedelta(minutes=5)
    with broker.transaction() as conn:  # another replica's extension, not committed yet
        assert store.extend(
            conn, grant.id, old_expiry=grant.expires_at, new_expiry=other, now=broker.clock.now()
        )
        thread, outcome = _extend_in_thread(broker, alice, grant.id, "20m")
        _wait_for_lock_wait(pg_url)
    thread.join(10)
    [lost] = outcome
    assert isinstance(lost, Conflict)
    assert stored(broker, grant.id).expires_at == other


def test_extensions_and_a_revoke_at_once_end_in_one_consistent_outcome(
    make_broker: Callable[..., Broker], pg_url: str
) -> None:
    broker = make_broker(db_url=pg_url)
    alice = add_principal(broker, "alice")
    grant = grants.request_grant(broker, alice, req(ttl="10m"))
    start = threading.Barrier(4)
    outcomes: list[Any] = []

    def run(step: Callable[[], Any]) -> None:
        start.wait(5)
        try:
            outcomes.append(step())
        except BrokerError as exc:
            outcomes.append(exc)

    steps = [
        lambda: extend(broker, alice, grant.id, "20m"),
        lambda: extend(broker, alice, grant.id, "20m"),
        lambda: extend(broker, alice, grant.id, "20m"),
        lambda: grants.revoke_grant(broker, alice, grant.id),
    ]
    threads = [threading.Thread(target=run, args=(step,)) for step in steps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    extended = [o for o in outcomes if not isinstance(o, BrokerError) and o.state == GrantState.ACTIVE]
    assert len(extended) <= 1  # at most one extension took effect (the same now + ttl for all)
    assert all(isinstance(o, Conflict | InvalidRequest) for o in outcomes if isinstance(o, BrokerError))
    after = stored(broker, grant.id)
    assert after.state == "revoked"
    entries = [action for _, action, _ in ledger(broker) if action in ("grant.extend", "grant.revoke")]
    assert entries.count("grant.extend") == len(extended) and entries.count("grant.revoke") == 1
    if extended:
        assert entries == ["grant.extend", "grant.revoke"]
        assert after.expires_at == extended[0].expires_at
