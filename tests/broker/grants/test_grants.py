"""Grants on SQLite and PostgreSQL: decisions recorded, expiry at the exact boundary, revoke, lock."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from access.broker import grants
from access.broker.auth import tokens
from access.broker.auth.principal import AuthContext
from access.broker.auth.sessions import revoke_session
from access.broker.clock import FakeClock
from access.broker.errors import (
    Expired,
    Forbidden,
    GrantDenied,
    InvalidRequest,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from access.broker.events.bus import Event, GrantEnded
from access.broker.policy import policy_from_data
from access.broker.runtime import Broker
from access.broker.store.tables import audit_log, principals
from access.broker.store.tables import grants as grants_table
from access.shared.models import GrantRequest, GrantState
from tests.broker.conftest import add_user, audit_rows, login
from tests.conftest import DEFAULT_POLICY


def add_principal(
    broker: Broker, name: str, groups: tuple[str, ...] = ("sre",), kind: str = "user"
) -> AuthContext:
    """A principal row inserted directly (the identity layer is tested elsewhere) and its context."""
    principal_id = str(uuid.uuid4())
    with broker.transaction() as conn:
        conn.execute(
            principals.insert().values(
                id=principal_id, name=name, kind=kind, groups=list(groups), created_at=broker.clock.now()
            )
        )
    return AuthContext(
        principal_id=principal_id,
        name=name,
        kind=kind,
        groups=groups,
        session_id="s-test",
        token_id="t-test",
        expires_at=broker.clock.now() + timedelta(minutes=15),
    )


def ledger(broker: Broker) -> list[tuple[str, str, dict[str, Any]]]:
    with broker.transaction() as conn:
        rows = conn.execute(sa.select(audit_log).order_by(audit_log.c.seq)).all()
    return [(r.actor, r.action, json.loads(r.details)) for r in rows]


def count_grants(broker: Broker) -> int:
    with broker.transaction() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(grants_table)).scalar_one())


def events(broker: Broker) -> list[Event]:
    seen: list[Event] = []
    broker.events.subscribe(seen.append)
    return seen


def req(
    service: str = "svc-payments", scope: str = "read", ttl: str = "30m", reason: str = "INC-1"
) -> GrantRequest:
    return GrantRequest(service=service, scope=scope, ttl=ttl, reason=reason)


@pytest.fixture
def broker(make_broker: Callable[..., Broker], db_url: str) -> Broker:
    return make_broker(db_url=db_url)


@pytest.fixture
def clock(broker: Broker) -> FakeClock:
    assert isinstance(broker.clock, FakeClock)
    return broker.clock


def test_issue_records_request_and_issue(broker: Broker, clock: FakeClock) -> None:
    alice = add_principal(broker, "alice")
    grant = grants.request_grant(broker, alice, req(ttl="30m"))
    assert grant.id.startswith("g-")
    assert grant.state == GrantState.ACTIVE
    assert (grant.subject, grant.service, grant.kind, grant.scope, grant.rule) == (
        "alice",
        "svc-payments",
        "postgres",
        "read",
        "sre-payments",
    )
    assert grant.created_at == clock.now()
    assert grant.expires_at == clock.now() + timedelta(minutes=30)
    assert grant.seconds_left == 1800
    actions = [(actor, action) for actor, action, _ in ledger(broker)]
    assert actions == [("alice", "grant.request"), ("alice", "grant.issue")]
    assert ledger(broker)[0][2] == {"grant_id": grant.id, "scope": "read", "ttl": "30m", "reason": "INC-1"}


def test_denied_request_is_recorded_and_raises(broker: Broker) -> None:
    eve = add_principal(broker, "eve", groups=("marketing",))
    with pytest.raises(GrantDenied, match="no policy rule gives eve read on svc-payments"):
        grants.request_grant(broker, eve, req())
    [denied] = grants.list_grants(broker, eve, include_ended=True)
    assert denied.state == GrantState.DENIED
    assert denied.seconds_left == 0
    assert grants.list_grants(broker, eve) == []
    assert [action for _, action, _ in ledger(broker)] == ["grant.request", "grant.deny"]


def test_ttl_over_the_maximum_is_denied_stating_the_maximum(broker: Broker) -> None:
    alice = add_principal(broker, "alice")
    with pytest.raises(GrantDenied) as caught:
        grants.request_grant(broker, alice, req(ttl="2h"))
    assert caught.value.message == "ttl 2h is over the maximum 30m for read on svc-payments"
    assert caught.value.hint == "ask for --ttl 30m or less"
    assert ledger(broker)[-1][1] == "grant.deny"


def test_a_request_under_an_approval_rule_waits_for_review(
    make_broker: Callable[..., Broker], db_url: str
) -> None:
    policy = json.loads(json.dumps(DEFAULT_POLICY))
    policy["rules"][0]["require"] = "approval"
    policy["rules"][0]["approval"] = {"reviewers": [{"groups": ["leads"]}], "wait": "10m"}
    broker = make_broker(db_url=db_url, policy=policy)
    alice = add_principal(broker, "alice")
    pending = grants.request_grant(broker, alice, req(ttl="20m"))
    assert pending.state == GrantState.PENDING
    assert pending.expires_at == broker.clock.now() + timedelta(minutes=10)  # the review deadline
    assert (pending.ttl_seconds, pending.requirement, pending.seconds_left) == (1200, "approval", 0)
    assert pending.review is not None and pending.review.missing == "1 more of group:leads"
    assert [g.id for g in grants.list_grants(broker, alice)] == [pending.id]  # waiting counts
    assert [action for _, action, _ in ledger(broker)] == ["grant.request", "grant.pending"]
    assert ledger(broker)[1][2]["reviewers"] == "1 of group:leads"


@pytest.mark.parametrize(
    ("request_args", "error", "message"),
    [
        ({"ttl": "0s"}, InvalidRequest, "longer than zero; the maximum for read on svc-payments is 30m"),
        ({"ttl": "-5m"}, InvalidRequest, "bad duration '-5m'.*the maximum for read on svc-payments is 30m"),
        ({"ttl": "soon"}, InvalidRequest, "bad duration 'soon'"),
        ({"service": "Svc_Payments"}, InvalidRequest, "bad service name"),
        ({"service": "svc-nope"}, NotFound, "no service named 'svc-nope'"),
        ({"scope": "admin"}, InvalidRequest, "svc-payments has no scope 'admin'"),
        ({"scope": "Read!"}, InvalidRequest, "bad scope"),
        ({"reason": "line\nbreak"}, InvalidRequest, "one line of printable text"),
    ],
)
def test_bad_input_changes_nothing(
    broker: Broker, request_args: dict[str, str], error: type[Exception], message: str
) -> None:
    alice = add_principal(broker, "alice")
    with pytest.raises(error, match=message):
        grants.request_grant(broker, alice, req(**request_args))
    assert count_grants(broker) == 0
    assert ledger(broker) == []


def test_expiry_is_exact_at_the_boundary(broker: Broker, clock: FakeClock) -> None:
    alice = add_principal(broker, "alice")
    grant = grants.request_grant(broker, alice, req(ttl="45s"))
    clock.advance(timedelta(seconds=44, microseconds=999_999))
    assert grants.get_grant(broker, alice, grant.id).state == GrantState.ACTIVE
    assert grants.open_for_tunnel(broker, alice, grant.id).grant_id == grant.id
    clock.advance(timedelta(microseconds=1))  # exactly expires_at: no longer usable
    # The state column still says active: the effective state says expired.
    with broker.transaction() as conn:
        assert conn.execute(sa.select(grants_table.c.state)).scalar_one() == "active"
    shown = grants.get_grant(broker, alice, grant.id)
    assert (shown.state, shown.seconds_left, shown.ended_reason) == (GrantState.EXPIRED, 0, "expired")
    assert grants.list_grants(broker, alice) == []
    assert grants.grant_state(broker, [grant.id])[grant.id] == (GrantState.EXPIRED, grant.expires_at)
    with pytest.raises(Expired):
        grants.open_for_tunnel(broker, alice, grant.id)
    # Revoking an ended grant is idempotent: the grant as it is, unchanged, nothing audited.
    entries = len(ledger(broker))
    again = grants.revoke_grant(broker, alice, grant.id)
    assert (again.state, again.ended_reason, again.ended_at) == (
        GrantState.EXPIRED,
        "expired",
        grant.expires_at,
    )
    assert len(ledger(broker)) == entries
    with broker.transaction() as conn:
        assert conn.execute(sa.select(grants_table.c.state)).scalar_one() == "active"


def test_expire_due_marks_audits_once(broker: Broker, clock: FakeClock) -> None:
    alice = add_principal(broker, "alice")
    short = grants.request_grant(broker, alice, req(ttl="1m"))
    long = grants.request_grant(broker, alice, req(ttl="10m"))
    assert grants.expire_due(broker) == []
    clock.advance(timedelta(minutes=1))
    assert grants.expire_due(broker) == [short.id]
    assert grants.expire_due(broker) == []  # conditional update: a second pass (or replica) does nothing
    expired = [d for _, action, d in ledger(broker) if action == "grant.expired"]
    assert [d["grant_id"] for d in expired] == [short.id]
    assert grants.get_grant(broker, alice, long.id).state == GrantState.ACTIVE


def test_expiry_loop_publishes(broker: Broker, clock: FakeClock) -> None:
    alice = add_principal(broker, "alice")
    grant = grants.request_grant(broker, alice, req(ttl="1m"))
    seen = events(broker)
    loop = grants.ExpiryLoop(broker)
    asyncio.run(loop.tick())
    assert seen == []
    clock.advance(timedelta(minutes=2))
    asyncio.run(loop.tick())
    assert seen == [GrantEnded(grant.id, "expired")]


def test_revoke_by_owner_publishes_after_commit(broker: Broker) -> None:
    alice = add_principal(broker, "alice")
    grant = grants.request_grant(broker, alice, req())
    states_seen: list[Any] = []

    def on_event(event: Event) -> None:
        # The end is committed before subscribers hear of it.
        assert isinstance(event, GrantEnded)
        states_seen.append(grants.grant_state(broker, [event.grant_id])[event.grant_id][0])

    broker.events.subscribe(on_event)
    revoked = grants.revoke_grant(broker, alice, grant.id)
    assert (revoked.state, revoked.ended_reason, revoked.seconds_left) == (GrantState.REVOKED, "revoked", 0)
    assert states_seen == [GrantState.REVOKED]
    assert ledger(broker)[-1][:2] == ("alice", "grant.revoke")
    # Again: idempotent, the grant as it was revoked, no second audit entry or event.
    entries = len(ledger(broker))
    assert grants.revoke_grant(broker, alice, grant.id) == revoked
    assert len(ledger(broker)) == entries
    assert states_seen == [GrantState.REVOKED]
    with pytest.raises(Forbidden, match="was revoked"):
        grants.open_for_tunnel(broker, alice, grant.id)


def test_other_users_cannot_see_or_revoke_but_audit_readers_can(broker: Broker) -> None:
    alice = add_principal(broker, "alice", groups=("sre",))
    mallory = add_principal(broker, "mallory", groups=("marketing",))
    sam = add_principal(broker, "sam", groups=("security",))  # an audit reader in DEFAULT_POLICY
    grant = grants.request_grant(broker, alice, req())
    with pytest.raises(NotFound):
        grants.get_grant(broker, mallory, grant.id)
    with pytest.raises(NotFound):
        grants.revoke_grant(broker, mallory, grant.id)
    with pytest.raises(NotFound) as theirs:  # exactly as for a grant that does not exist
        grants.open_for_tunnel(broker, mallory, grant.id)
    missing = "g-" + "0" * (len(grant.id) - 2)
    with pytest.raises(NotFound) as nobodys:
        grants.open_for_tunnel(broker, mallory, missing)
    assert str(theirs.value.body()).replace(grant.id, "ID") == str(nobodys.value.body()).replace(
        missing, "ID"
    )
    # An audit reader sees the grant anyway, so hearing why is no oracle; still not theirs to use.
    with pytest.raises(Forbidden, match="not yours"):
        grants.open_for_tunnel(broker, sam, grant.id)
    assert grants.list_grants(broker, mallory, include_ended=True) == []
    assert grants.get_grant(broker, sam, grant.id).id == grant.id
    assert grants.revoke_grant(broker, sam, grant.id).state == GrantState.REVOKED
    assert ledger(broker)[-1][:2] == ("sam", "grant.revoke")
    with pytest.raises(NotFound):  # ended, and still not mallory's to see or revoke
        grants.revoke_grant(broker, mallory, grant.id)


@pytest.mark.parametrize("grant_id", ["g-doesnotexist", "x" * 100, "'; drop table grants; --"])
def test_unknown_grant(broker: Broker, grant_id: str) -> None:
    alice = add_principal(broker, "alice")
    for call in (grants.get_grant, grants.revoke_grant, grants.open_for_tunnel):
        with pytest.raises(NotFound):
            call(broker, alice, grant_id)


def test_end_grants_for_principal_locks_out(broker: Broker, clock: FakeClock) -> None:
    alice = add_principal(broker, "alice")
    bob = add_principal(broker, "bob")
    a1 = grants.request_grant(broker, alice, req())
    a2 = grants.request_grant(broker, alice, req(scope="write"))
    b1 = grants.request_grant(broker, bob, req())
    seen = events(broker)
    with broker.transaction() as conn:
        done = grants.end_grants_for_principal(conn, broker, alice.principal_id, "locked", "admin:ops")
    assert (sorted(done.revoked), done.cancelled) == (sorted([a1.id, a2.id]), ())
    ended = done.ids
    assert seen == []  # the caller publishes after its commit
    for grant_id in ended:
        shown = grants.get_grant(broker, alice, grant_id)
        assert (shown.state, shown.ended_reason) == (GrantState.REVOKED, "locked")
    assert grants.get_grant(broker, bob, b1.id).state == GrantState.ACTIVE
    revokes = [(actor, d["reason"]) for actor, action, d in ledger(broker) if action == "grant.revoke"]
    assert revokes == [("admin:ops", "locked"), ("admin:ops", "locked")]


def test_end_grants_rolls_back_with_the_caller(broker: Broker) -> None:
    alice = add_principal(broker, "alice")
    grant = grants.request_grant(broker, alice, req())
    with pytest.raises(RuntimeError), broker.transaction() as conn:
        grants.end_grants_for_principal(conn, broker, alice.principal_id, "locked", "admin")
        raise RuntimeError("the caller failed later")
    assert grants.get_grant(broker, alice, grant.id).state == GrantState.ACTIVE
    assert [action for _, action, _ in ledger(broker)] == ["grant.request", "grant.issue"]


def test_open_for_tunnel_takes_the_target_from_the_policy(broker: Broker) -> None:
    alice = add_principal(broker, "alice")
    grant = grants.request_grant(broker, alice, req(scope="write"))
    tunnel = grants.open_for_tunnel(broker, alice, grant.id)
    assert (tunnel.service, tunnel.scope, tunnel.kind, tunnel.host, tunnel.port) == (
        "svc-payments",
        "write",
        "postgres",
        "127.0.0.1",
        5432,
    )
    assert (tunnel.principal_id, tunnel.subject, tunnel.expires_at) == (
        alice.principal_id,
        "alice",
        grant.expires_at,
    )
    assert tunnel.options == {"database": "test", "user": "postgres"}
    # The service leaves the policy: the grant can no longer be used.
    broker.policy = policy_from_data({"services": [], "rules": []})
    with pytest.raises(NotFound, match="no longer in the broker's policy"):
        grants.open_for_tunnel(broker, alice, grant.id)


def test_open_connection_checks_session_and_grant_and_audits_in_one_go(any_broker: Broker) -> None:

    broker = any_broker
    issued = login(broker, add_user(broker))
    ctx = tokens.authenticate(broker, issued.access_token)
    grant = grants.request_grant(broker, ctx, req())
    opened = grants.open_connection(broker, ctx, grant.id, connection_id="c-1", client="127.0.0.1:5000")
    assert (opened.grant_id, opened.host, opened.port) == (grant.id, "127.0.0.1", 5432)
    [entry] = audit_rows(broker, "connection.open")
    assert entry["details"] == {
        "connection": "c-1",
        "grant": grant.id,
        "service": "svc-payments",
        "scope": "read",
        "kind": "postgres",
        "client": "127.0.0.1:5000",
        "target": "127.0.0.1:5432",
    }
    # A refusal, for either reason, writes nothing: the caller audits refusals on its own.
    grants.revoke_grant(broker, ctx, grant.id)
    with pytest.raises(Forbidden, match="revoked"):
        grants.open_connection(broker, ctx, grant.id, connection_id="c-2", client="x")
    with broker.transaction() as conn:
        revoke_session(conn, broker.clock, issued.session_id, "logout")
    live = grants.request_grant(broker, ctx, req())
    with pytest.raises(Unauthenticated, match="signed out or revoked"):
        grants.open_connection(broker, ctx, live.id, connection_id="c-3", client="x")
    assert len(audit_rows(broker, "connection.open")) == 1


def test_a_sqlite_broker_queues_its_threads_for_one_connection(make_broker: Callable[..., Broker]) -> None:
    """SQLite has one write lock and every transaction takes it: threads wait in the pool (woken
    at once) rather than in SQLite's busy handler (sleeps of 1 ms and more)."""
    broker = make_broker()  # SQLite
    assert broker.engine.dialect.name == "sqlite"
    assert broker.engine.pool.size() == 1
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with broker.transaction():
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        broker.engine.pool._timeout = 0.05  # type: ignore[attr-defined]  # the wait, made short
        with pytest.raises(Unavailable, match="database is unavailable"), broker.transaction():
            pass
    finally:
        release.set()
        holder.join(10)
    with broker.transaction() as conn:  # free again
        assert conn.execute(sa.select(1)).scalar_one() == 1


def test_list_grants_newest_first_with_effective_state(broker: Broker, clock: FakeClock) -> None:
    alice = add_principal(broker, "alice")
    first = grants.request_grant(broker, alice, req(ttl="1m"))
    clock.advance(timedelta(seconds=10))
    second = grants.request_grant(broker, alice, req(ttl="10m"))
    clock.advance(timedelta(seconds=50))
    assert [g.id for g in grants.list_grants(broker, alice)] == [second.id]
    every = grants.list_grants(broker, alice, include_ended=True)
    assert [(g.id, g.state, g.seconds_left) for g in every] == [
        (second.id, GrantState.ACTIVE, 550),
        (first.id, GrantState.EXPIRED, 0),
    ]


def test_grant_state_for_the_watcher(broker: Broker) -> None:
    alice = add_principal(broker, "alice")
    active = grants.request_grant(broker, alice, req())
    revoked = grants.request_grant(broker, alice, req(scope="write"))
    grants.revoke_grant(broker, alice, revoked.id)
    states = grants.grant_state(broker, [active.id, revoked.id, "g-unknown", active.id])
    assert {k: v[0] for k, v in states.items()} == {
        active.id: GrantState.ACTIVE,
        revoked.id: GrantState.REVOKED,
    }
