"""A dynamic service's per-grant identity for a grant that needed approval: none while it waits,
made when the approval completes, valid until approval + TTL (the real shared PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta

from access.broker import grants
from access.broker.clock import FakeClock
from access.broker.identities.logins import identity_login
from access.shared.models import GrantState
from tests.broker.grants.test_grants import add_principal

from .conftest import Dynamic, Place, issue, pg_admin
from .test_lifecycle import on_target


def test_the_identity_is_made_when_the_approval_completes(
    dynamic: Dynamic, place: Place, fake_clock: FakeClock
) -> None:
    policy = place.policy()
    policy["rules"][0]["scopes"] = ["read"]
    policy["rules"].append(
        {
            "name": "pg-write",
            "subjects": {"groups": ["sre"]},
            "services": ["svc-pg"],
            "scopes": ["write"],
            "require": "approval",
            "approval": {"reviewers": [{"users": ["bob"]}]},
        }
    )
    broker, alice = dynamic(policy=policy, clock=fake_clock)
    bob = add_principal(broker, "bob", groups=())
    asked = issue(broker, alice, "svc-pg", scope="write", ttl="10m")
    assert asked.state == GrantState.PENDING
    assert identity_login(broker, asked.id) is None and on_target(broker, "svc-pg") == []
    fake_clock.advance(timedelta(minutes=3))
    approved = grants.approve(broker, bob, asked.id)
    assert approved.state == GrantState.ACTIVE
    assert approved.expires_at == fake_clock.now() + timedelta(minutes=10)
    login = identity_login(broker, asked.id)
    assert login is not None and on_target(broker, "svc-pg") == [login.user]
    with pg_admin() as admin:
        (until,) = admin.execute(
            "SELECT rolvaliduntil FROM pg_roles WHERE rolname = %s", [login.user]
        ).fetchone() or (None,)
    assert until == approved.expires_at
