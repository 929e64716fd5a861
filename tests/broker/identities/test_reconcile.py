"""Reconcile after a crash, on real targets: an active grant whose broker died before its identity
was made (or recorded) gets it; one whose grant ended loses what was made; and an end that the
outbox and reconcile race for is audited once (the broker's store on the real PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import psycopg
import pytest
import sqlalchemy as sa

from access.broker import grants
from access.broker.clock import FakeClock
from access.broker.errors import Conflict
from access.broker.events.outbox import OutboxLoop
from access.broker.identities import lifecycle as identities
from access.broker.identities.logins import identity_login
from access.broker.identities.reconcile import reconcile
from access.broker.identities.targets import provisioner
from access.broker.provision.common import wait_until
from access.broker.runtime import Broker
from access.broker.store import identities as identity_store

from .conftest import Dynamic, Place, issue
from .test_lifecycle import SERVICES, actions, issued_with_intent_only, on_target, open_session

PAST_GRACE = identities.MAKE_GRACE + timedelta(seconds=1)


@pytest.mark.parametrize("made", [False, True], ids=["nothing made", "made, not recorded"])
@pytest.mark.parametrize("kind", ["postgres", "mysql", "redis"])
def test_an_active_grant_whose_broker_died_before_recording_its_identity_gets_it_from_reconcile(
    kind: str, made: bool, dynamic: Dynamic, place: Place, fake_clock: FakeClock
) -> None:
    broker, alice = dynamic()
    service = SERVICES[kind]
    svc = broker.policy.services[service]
    record = issued_with_intent_only(broker, alice, service, timedelta(minutes=10))
    if made:  # the target made it, then the broker died before recording the name and password
        with provisioner(broker, svc) as target:
            target.create(identities.spec_for(svc, record))
    before = on_target(broker, service)
    assert identity_login(broker, record.id) is None  # connects fail: no identity the broker knows

    assert reconcile(broker) == []  # within MAKE_GRACE the issuing request may still be making it
    fake_clock.advance(PAST_GRACE)
    [done] = reconcile(broker)

    assert (done.grant_id, done.why) == (record.id, "recovered")
    assert on_target(broker, service) == (before or [done.identity])  # the same one, not a second
    login = identity_login(broker, record.id)
    assert login is not None and login.user == done.identity
    session = open_session(kind, login)
    try:
        session.read(place)  # the recorded password logs in (MySQL and Redis check it)
    finally:
        session.close()
    assert actions(broker) == [
        (
            "identity.create",
            {"grant_id": record.id, "service": service, "identity": login.user, "why": "recovered"},
        )
    ]
    assert reconcile(broker) == []


def test_an_intended_row_whose_grant_ended_is_closed_and_what_was_made_right_before_is_dropped(
    dynamic: Dynamic, fake_clock: FakeClock
) -> None:
    broker, alice = dynamic()
    svc = broker.policy.services["svc-rd"]
    record = issued_with_intent_only(broker, alice, "svc-rd", timedelta(minutes=1))
    with provisioner(broker, svc) as target:
        made = target.create(identities.spec_for(svc, record)).name
    fake_clock.advance(timedelta(minutes=2) + PAST_GRACE)  # expired (the expiry loop has not run)

    assert [(d.identity, d.why) for d in reconcile(broker)] == [(made, "grant expired")]
    assert on_target(broker, "svc-rd") == []
    with broker.transaction() as conn:
        row = identity_store.get(conn, record.id)
    assert row is not None and row.state == "dropped"
    assert [a for a, _ in actions(broker)] == ["identity.reconcile"]  # never made for an ended grant


def test_a_slow_issue_whose_row_was_taken_over_leaves_the_identity_to_the_new_attempt(
    dynamic: Dynamic, fake_clock: FakeClock
) -> None:
    broker, alice = dynamic()
    record = issued_with_intent_only(broker, alice, "svc-pg", timedelta(minutes=10))
    fake_clock.advance(PAST_GRACE)
    [done] = reconcile(broker)
    # The issuing request's attempt (begun at the issue) finishes only now: it may not record
    # its password over the new attempt's, nor end the identity the grant now has.
    with pytest.raises(Conflict, match="taken over by another attempt"):
        identities.make(broker, record, record.created_at)
    assert on_target(broker, "svc-pg") == [done.identity]
    with broker.transaction() as conn:
        row = identity_store.get(conn, record.id)
    assert row is not None and row.state == "created" and row.target_name == done.identity


def test_an_intended_row_is_taken_over_by_one_attempt_at_a_time(
    make_broker: Callable[..., Broker], db_url: str, fake_clock: FakeClock
) -> None:
    broker = make_broker(db_url=db_url)
    issued = fake_clock.now()
    with broker.transaction() as conn:
        identity_store.intend(conn, "g-0123456789abcdef", "svc-a", issued)
    now = issued + PAST_GRACE
    stale_before = now - identities.MAKE_GRACE
    with broker.transaction() as conn:
        assert not identity_store.take_over(conn, "g-0123456789abcdef", issued, issued)  # not stale yet
        assert identity_store.take_over(conn, "g-0123456789abcdef", now, stale_before)
        assert not identity_store.take_over(conn, "g-0123456789abcdef", now, stale_before)  # a second replica
        assert not identity_store.created(conn, "g-0123456789abcdef", "access_a_000000", b"x", issued)
        assert identity_store.created(conn, "g-0123456789abcdef", "access_a_000000", b"x", now)
        assert not identity_store.take_over(conn, "g-0123456789abcdef", now + PAST_GRACE, now + PAST_GRACE)


def _waiting_on_locks(database: str) -> int:
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
            [database],
        ).fetchone()
    return int(row[0]) if row else 0


def test_an_end_raced_by_the_outbox_and_reconcile_is_audited_once(dynamic: Dynamic, pg_url: str) -> None:
    # The broker's store on PostgreSQL, with waits long enough for the row lock held below.
    broker, alice = dynamic(db_url=pg_url, db_lock_timeout=30, db_statement_timeout=30)
    grant = issue(broker, alice, "svc-rd")
    grants.revoke_grant(broker, alice, grant.id)
    database = sa.engine.make_url(pg_url).database
    assert database is not None

    # Both paths are held at their first write to the identity's row, so both have seen it live
    # (the outbox: its row; reconcile: its identity on the target) before either moves it.
    with psycopg.connect(pg_url) as holder:
        holder.execute("SELECT 1 FROM identities WHERE grant_id = %s FOR UPDATE", [grant.id])
        with ThreadPoolExecutor(2) as pool:
            outbox = pool.submit(OutboxLoop(broker).run_due)
            reconciled = pool.submit(reconcile, broker)
            assert wait_until(lambda: _waiting_on_locks(database) == 2, within=10)
            holder.rollback()
            assert outbox.result(timeout=30) == 1
            reconciled.result(timeout=30)

    ends = [(a, d["identity"]) for a, d in actions(broker) if a in ("identity.drop", "identity.reconcile")]
    assert len(ends) == 1, ends
    assert on_target(broker, "svc-rd") == []
    assert reconcile(broker) == [] and OutboxLoop(broker).run_due() == 0
    assert len([a for a, _ in actions(broker) if a != "identity.create"]) == 1
