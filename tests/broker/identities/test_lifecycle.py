"""Per-grant identities on real targets: made with the scope's privileges when a grant is issued,
ended (login locked, live session killed, dropped) when it ends, cleaned up by reconcile."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import pymysql
import pytest
import redis
import sqlalchemy as sa
from redis.backoff import NoBackoff
from redis.retry import Retry

from access.broker import grants
from access.broker.auth.principal import AuthContext
from access.broker.clock import FakeClock
from access.broker.errors import Unavailable
from access.broker.events.outbox import OutboxLoop
from access.broker.grants.lifecycle import GrantEvent, grant_target
from access.broker.identities import lifecycle as identities
from access.broker.identities.logins import identity_login
from access.broker.identities.reconcile import reconcile
from access.broker.identities.targets import broker_id, provisioner
from access.broker.provision.base import IdentitySpec
from access.broker.provision.common import wait_until
from access.broker.runtime import Broker
from access.broker.store import identities as identity_store
from access.broker.store.grants import GrantRecord
from access.broker.store.tables import audit_log
from access.broker.wire.base import TargetLogin
from tests.broker.tunnel.test_closes import CuttableProxy

from .conftest import MYSQL, PG, REDIS, Dynamic, Place, issue, pg_admin

Make = Callable[..., Broker]


def actions(broker: Broker) -> list[tuple[str, dict[str, Any]]]:
    with broker.transaction() as conn:
        rows = conn.execute(sa.select(audit_log).order_by(audit_log.c.seq)).all()
    return [(r.action, json.loads(r.details)) for r in rows if r.action.startswith("identity.")]


@pytest.fixture
def setup(dynamic: Dynamic) -> tuple[Broker, AuthContext]:
    return dynamic()


# What a live session of the identity looks like on each target: open it, try a read and a write,
# tell whether the target has cut it.


@dataclass
class Session:
    kind: str
    handle: Any

    def read(self, place: Place) -> None:
        if self.kind == "postgres":
            self.handle.execute(f"SELECT count(*) FROM {place.schema}.t").fetchone()
        elif self.kind == "mysql":
            with self.handle.cursor() as cur:
                cur.execute(f"SELECT count(*) FROM {place.schema}.t")
        else:
            self.handle.get(f"{place.schema}:k")

    def write(self, place: Place) -> None:
        if self.kind == "postgres":
            self.handle.execute(f"INSERT INTO {place.schema}.t VALUES (1)")
        elif self.kind == "mysql":
            with self.handle.cursor() as cur:
                cur.execute(f"INSERT INTO {place.schema}.t VALUES (1)")
        else:
            self.handle.set(f"{place.schema}:k", "v")

    def close(self) -> None:
        self.handle.close()

    def cut(self, place: Place) -> bool:
        try:
            self.read(place)
        except (psycopg.Error, pymysql.Error, redis.RedisError):
            return True
        return False


WRITE_REFUSED = (
    psycopg.errors.InsufficientPrivilege,
    pymysql.err.OperationalError,
    redis.exceptions.NoPermissionError,
)


def open_session(kind: str, login: TargetLogin) -> Session:
    if kind == "postgres":  # the shared server trusts local logins: privileges are what is tested here
        return Session(
            kind, psycopg.connect(host=PG[0], port=PG[1], user=login.user, dbname="test", autocommit=True)
        )
    if kind == "mysql":
        return Session(
            kind,
            pymysql.connect(
                host=MYSQL[0], port=MYSQL[1], user=login.user, password=login.password, autocommit=True
            ),
        )
    client = redis.Redis(
        *REDIS, username=login.user, password=login.password, socket_timeout=5, retry=Retry(NoBackoff(), 0)
    )
    return Session(kind, client)


SERVICES = {"postgres": "svc-pg", "mysql": "svc-my", "redis": "svc-rd"}


def on_target(broker: Broker, service: str) -> list[str]:
    with provisioner(broker, broker.policy.services[service]) as target:
        return [o.name for o in target.ours() if o.broker_id == broker_id(broker)]


def issued_with_intent_only(broker: Broker, who: AuthContext, service: str, ttl: timedelta) -> GrantRecord:
    """A grant issued with its ``intended`` row, as a broker that died before its target made the
    identity (or before it recorded it) leaves it."""
    now = broker.clock.now()
    record = GrantRecord(
        id="g-" + secrets.token_hex(8),
        principal_id=who.principal_id,
        subject=who.name,
        service=service,
        kind=broker.policy.services[service].kind,
        scope="read",
        reason="t",
        state="active",
        rule="sre",
        requirement="auto",
        created_at=now,
        expires_at=now + ttl,
    )
    with grants.lifecycle.transaction(broker) as tx:
        grants.lifecycle.apply(tx, record, GrantEvent.ISSUE, actor=who.name, now=now)
        identities.intend(tx.conn, record, now)
    return record


@pytest.mark.parametrize("kind", ["postgres", "mysql", "redis"])
def test_a_grant_gets_an_identity_with_its_scope_and_revoke_ends_it_and_its_session_within_1s(
    kind: str, setup: tuple[Broker, AuthContext], place: Place
) -> None:
    broker, alice = setup
    service = SERVICES[kind]
    grant = issue(broker, alice, service)
    login = identity_login(broker, grant.id)
    assert login is not None and login.user.startswith("access_alice_")
    assert on_target(broker, service) == [login.user]
    session = open_session(kind, login)
    session.read(place)
    with pytest.raises(WRITE_REFUSED):  # read means read, at the target
        session.write(place)
    if kind == "postgres":
        with pg_admin() as admin:
            (until,) = admin.execute(
                "SELECT rolvaliduntil FROM pg_roles WHERE rolname = %s", [login.user]
            ).fetchone() or (None,)
        assert until == grant.expires_at

    grants.revoke_grant(broker, alice, grant.id)
    started = time.monotonic()
    OutboxLoop(broker).run_due()
    assert wait_until(lambda: session.cut(place), within=1.0)
    window = time.monotonic() - started
    print(f"\n{kind}: revoke -> identity dropped and live session cut in {window * 1000:.0f} ms")
    assert window <= 1.0
    assert on_target(broker, service) == []
    assert identity_login(broker, grant.id) is None
    assert [(a, d["identity"]) for a, d in actions(broker)] == [
        ("identity.create", login.user),
        ("identity.drop", login.user),
    ]
    assert all(
        "password" not in json.dumps(d) and login.password not in json.dumps(d) for _, d in actions(broker)
    )


def test_expiry_ends_the_identity(setup: tuple[Broker, AuthContext], fake_clock: FakeClock) -> None:
    broker, alice = setup
    grant = issue(broker, alice, "svc-pg", "write", "1m")
    assert len(on_target(broker, "svc-pg")) == 1
    assert identity_login(broker, grant.id) is not None
    fake_clock.advance(timedelta(minutes=1))
    assert identity_login(broker, grant.id) is None  # at the expiry, before the loop has seen it
    assert grants.expire_due(broker) == [grant.id]
    OutboxLoop(broker).run_due()
    assert on_target(broker, "svc-pg") == []
    assert actions(broker)[-1][1]["reason"] == "expired"


def test_a_target_down_at_the_end_is_cleaned_once_it_is_back(
    pg_proxy: CuttableProxy, dynamic: Dynamic, place: Place, fake_clock: FakeClock
) -> None:
    place.pg_port = pg_proxy.port
    broker, alice = dynamic()
    grant = issue(broker, alice, "svc-pg")
    login = identity_login(broker, grant.id)
    assert login is not None
    pg_proxy.cut()
    grants.revoke_grant(broker, alice, grant.id)
    loop = OutboxLoop(broker)
    assert loop.run_due() == 0  # the target refuses: the row stays, to be retried
    with pg_admin() as admin:
        assert admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [login.user]).fetchone()
    with broker.transaction() as conn:
        row = identity_store.get(conn, grant.id)
    assert row is not None and row.state == "ending" and row.error and row.sealed_password is None
    assert identity_login(broker, grant.id) is None  # the password was forgotten at once
    pg_proxy.restore()
    fake_clock.advance(timedelta(seconds=2))  # past the outbox's backoff
    assert loop.run_due() == 1
    with pg_admin() as admin:
        assert admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [login.user]).fetchone() is None


def test_a_target_that_refuses_fails_the_request_and_issues_no_usable_grant(
    pg_proxy: CuttableProxy, dynamic: Dynamic, place: Place
) -> None:
    place.pg_port = pg_proxy.port
    broker, alice = dynamic()
    pg_proxy.cut()
    with pytest.raises(Unavailable):
        issue(broker, alice, "svc-pg")
    [made] = grants.list_grants(broker, alice, include_ended=True)
    assert made.state == "revoked" and identity_login(broker, made.id) is None
    pg_proxy.restore()
    OutboxLoop(broker).run_due()  # the end of the failed grant closes its record
    with broker.transaction() as conn:
        row = identity_store.get(conn, made.id)
    assert row is not None and row.state == "failed" and "refused" in (row.error or "")


def test_reconcile_closes_a_trace_with_nothing_made_and_drops_what_the_store_lost(
    setup: tuple[Broker, AuthContext], fake_clock: FakeClock
) -> None:
    broker, alice = setup
    svc = broker.policy.services["svc-pg"]
    # A crash after the intended row, before the target made anything: a grant that then expired.
    record = issued_with_intent_only(broker, alice, "svc-pg", timedelta(minutes=1))
    # An identity of this broker the store lost (its row never written, its grant unknown).
    spec = IdentitySpec(
        "g-lost0000000000", "bob", "read", fake_clock.now() + timedelta(hours=1), ("pg_read_all_data",)
    )
    with provisioner(broker, svc) as target:
        lost = target.create(spec).name
    fake_clock.advance(timedelta(minutes=2))
    assert sorted(on_target(broker, "svc-pg")) == [lost]

    done = reconcile(broker)
    assert {(d.grant_id, d.identity, d.why) for d in done} == {
        (record.id, None, "grant expired"),
        ("g-lost0000000000", lost, "unknown grant"),
    }
    assert on_target(broker, "svc-pg") == []
    with broker.transaction() as conn:
        row = identity_store.get(conn, record.id)
    assert row is not None and row.state == "dropped"
    assert sorted(d["grant_id"] for a, d in actions(broker) if a == "identity.reconcile") == sorted(
        [record.id, "g-lost0000000000"]
    )
    assert reconcile(broker) == []  # nothing left to do


def test_reconcile_leaves_active_grants_and_other_brokers_alone(
    setup: tuple[Broker, AuthContext], dynamic: Dynamic
) -> None:
    broker, alice = setup
    grant = issue(broker, alice, "svc-rd")
    other, bob = dynamic(user="bob")
    theirs = issue(other, bob, "svc-rd")
    assert reconcile(broker) == []
    assert identity_login(broker, grant.id) is not None
    assert len(on_target(other, "svc-rd")) == 1 and theirs.id


def test_the_audit_target_is_the_grants() -> None:
    assert identities._target("svc-a", "g-1") == grant_target("svc-a", "g-1")


def test_a_sealed_password_opens_only_for_its_grant_and_key(make_broker: Make) -> None:
    from access.broker.identities.sealing import Sealer

    one, two = make_broker(), make_broker()
    sealed = Sealer(one.token_key).seal("g-1", "secret")
    assert b"secret" not in sealed
    assert Sealer(one.token_key).open("g-1", sealed) == "secret"
    assert Sealer(one.token_key).open("g-2", sealed) is None
    assert Sealer(two.token_key).open("g-1", sealed) is None


def test_privileges_the_provisioner_refuses_fail_the_request(dynamic: Dynamic, place: Place) -> None:
    policy = place.policy()
    policy["services"][0]["credentials"]["scopes"]["write"] = {"roles": ["postgres"]}  # a superuser
    broker, alice = dynamic(policy=policy)
    with pytest.raises(Unavailable, match="would reach postgres"):
        issue(broker, alice, "svc-pg", "write")
    [made] = grants.list_grants(broker, alice, include_ended=True)
    assert made.state == "revoked" and on_target(broker, "svc-pg") == []


def test_an_identity_made_but_never_recorded_is_found_by_its_tag_at_the_end(
    setup: tuple[Broker, AuthContext], fake_clock: FakeClock
) -> None:
    broker, alice = setup
    svc = broker.policy.services["svc-my"]
    record = issued_with_intent_only(broker, alice, "svc-my", timedelta(minutes=10))
    # The target made it, then the broker died before recording the name (the row says intended).
    with provisioner(broker, svc) as target:
        made = target.create(identities.spec_for(svc, record)).name
    grants.revoke_grant(broker, alice, record.id)
    assert OutboxLoop(broker).run_due() == 1
    assert on_target(broker, "svc-my") == []
    assert actions(broker)[-1] == (
        "identity.drop",
        {"grant_id": record.id, "service": "svc-my", "identity": made, "reason": "revoked"},
    )
