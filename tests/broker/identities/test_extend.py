"""An extended grant's identity gets the new expiry on its target (PostgreSQL ``VALID UNTIL``,
MySQL's password lifetime), never an earlier one, and its live session stays; ending one of two
grants of the same service and scope leaves the other's identity and session alone."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import psycopg
import pymysql

from access.broker import grants
from access.broker.auth.principal import AuthContext
from access.broker.events.outbox import OutboxLoop
from access.broker.identities import lifecycle as identities
from access.broker.identities.logins import identity_login
from access.broker.identities.targets import provisioner
from access.broker.provision.common import wait_until
from access.broker.runtime import Broker
from access.shared.models import ExtendRequest

from .conftest import MYSQL, PG, Dynamic, Place, issue, my_admin, pg_admin
from .test_lifecycle import on_target


def valid_until(role: str) -> Any:
    with pg_admin() as admin:
        row = admin.execute("SELECT rolvaliduntil FROM pg_roles WHERE rolname = %s", [role]).fetchone()
    return None if row is None else row[0]


def session_as(role: str) -> psycopg.Connection[Any]:
    # The shared server trusts local logins: the session, not the password, is what is tested here.
    return psycopg.connect(host=PG[0], port=PG[1], user=role, dbname="test", autocommit=True)


def test_an_extension_moves_valid_until_and_keeps_the_live_session(dynamic: Dynamic, place: Place) -> None:
    broker, alice = dynamic()
    grant = issue(broker, alice, "svc-pg", "read", "10m")
    login = identity_login(broker, grant.id)
    assert login is not None and valid_until(login.user) == grant.expires_at
    with session_as(login.user) as session:
        extended = grants.extend_grant(broker, alice, grant.id, ExtendRequest(ttl="40m"))
        assert OutboxLoop(broker).run_due() >= 1  # the grant.extended row
        assert valid_until(login.user) == extended.expires_at > grant.expires_at
        session.execute(f"SELECT count(*) FROM {place.schema}.t").fetchone()  # still there
    # Idempotent and never earlier: the old expiry again changes nothing.
    with provisioner(broker, broker.policy.services["svc-pg"]) as target:
        target.extend(login.user, grant.expires_at)
        target.extend(login.user, extended.expires_at)
    assert valid_until(login.user) == extended.expires_at
    # An ended grant's identity is not moved (its end drops it).
    grants.revoke_grant(broker, alice, grant.id)
    assert identities.follow_expiry(broker, grant.id) is False


def _lifetime(name: str) -> int:
    with my_admin() as admin, admin.cursor() as cur:
        cur.execute(
            "SELECT JSON_VALUE(Priv, '$.password_lifetime') FROM mysql.global_priv WHERE User = %s", (name,)
        )
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


def test_an_extension_lengthens_a_mysql_accounts_password_lifetime(dynamic: Dynamic) -> None:
    broker, alice = dynamic()
    grant = issue(broker, alice, "svc-my", "read", "10m")
    login = identity_login(broker, grant.id)
    assert login is not None
    before = _lifetime(login.user)
    with provisioner(broker, broker.policy.services["svc-my"]) as target:
        target.extend(login.user, grant.expires_at + timedelta(days=3))
        assert _lifetime(login.user) in (before + 3, before + 4)
        after = _lifetime(login.user)
        target.extend(login.user, grant.expires_at)  # never earlier
    assert _lifetime(login.user) == after
    # The account still logs in with its password (the lifetime counts from its last change).
    pymysql.connect(host=MYSQL[0], port=MYSQL[1], user=login.user, password=login.password).close()


def _identity_of(broker: Broker, who: AuthContext, grant_id: str) -> str:
    login = identity_login(broker, grant_id)
    assert login is not None and who.name in login.user
    return login.user


def test_ending_one_of_two_grants_of_the_same_scope_leaves_the_others_identity_and_session(
    dynamic: Dynamic, place: Place
) -> None:
    broker, alice = dynamic()
    first = issue(broker, alice, "svc-pg", "read", "10m")
    second = issue(broker, alice, "svc-pg", "read", "10m")
    first_role, second_role = _identity_of(broker, alice, first.id), _identity_of(broker, alice, second.id)
    assert first_role != second_role
    with session_as(first_role) as ended, session_as(second_role) as kept:
        grants.revoke_grant(broker, alice, first.id)
        OutboxLoop(broker).run_due()

        def first_cut() -> bool:
            try:
                ended.execute("SELECT 1").fetchone()
            except psycopg.Error:
                return True
            return False

        assert wait_until(first_cut, within=2.0)
        kept.execute(f"SELECT count(*) FROM {place.schema}.t").fetchone()
    assert on_target(broker, "svc-pg") == [second_role]
    assert identity_login(broker, second.id) is not None
    started = time.monotonic()
    with session_as(second_role) as again:  # and new logins still work
        again.execute("SELECT 1").fetchone()
    assert time.monotonic() - started < 5
