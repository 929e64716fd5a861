"""A rule's and an approval's ``mfa:`` at the service level, on SQLite and PostgreSQL: what is
refused (``MfaRequired``, exit 3 in the CLI), what is recorded, and that a recent second factor
in the caller's sign-in lets the same request through."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from access.broker import grants
from access.broker.auth.principal import AuthContext
from access.broker.clock import FakeClock
from access.broker.errors import MfaRequired
from access.broker.runtime import Broker
from access.shared.errors import ExitCode, exit_code_for
from access.shared.models import ExtendRequest, GrantState
from tests.broker.conftest import audit_rows
from tests.broker.grants.test_approvals import person
from tests.broker.grants.test_grants import req

M = timedelta(minutes=1)
POLICY: dict[str, Any] = {
    "services": [
        {
            "name": "svc-payments",
            "kind": "tcp",
            "target": "127.0.0.1:9",
            "scopes": ["read", "write"],
            "max_ttl": "2h",
        }
    ],
    "rules": [
        {
            "name": "write-with-mfa",
            "subjects": {"groups": ["sre"]},
            "services": ["svc-payments"],
            "scopes": ["write"],
            "mfa": "30m",
        },
        {
            "name": "read-reviewed",
            "subjects": {"groups": ["sre"]},
            "services": ["svc-payments"],
            "scopes": ["read"],
            "require": "approval",
            "approval": {"reviewers": [{"groups": ["leads"]}], "mfa": "10m"},
        },
    ],
}


@pytest.fixture
def broker(make_broker: Callable[..., Broker], db_url: str) -> Broker:
    made: Broker = make_broker(db_url=db_url, policy=POLICY)
    return made


def signed_in_with_mfa(ctx: AuthContext, broker: Broker, ago: timedelta) -> AuthContext:
    return replace(ctx, mfa_at=broker.clock.now() - ago)


def test_a_rule_with_mfa_refuses_a_sign_in_without_one_and_records_why(broker: Broker) -> None:
    alice = person(broker, "alice", "sre")

    with pytest.raises(MfaRequired) as refused:
        grants.request_grant(broker, alice, req(scope="write"))
    assert refused.value.window == 30 * M
    assert refused.value.status == 403 and exit_code_for(str(refused.value.code)) == ExitCode.NEEDS_LOGIN
    assert "access login --mfa" in (refused.value.hint or "")
    assert refused.value.body()["error"] == {
        "code": "mfa_required",
        "message": refused.value.message,
        "hint": refused.value.hint,
        "max_age": 1800,
    }
    [denied] = audit_rows(broker, "grant.deny")
    assert denied["details"]["mfa"] == "30m" and "second factor within 30m" in denied["details"]["why"]
    assert [g.state for g in grants.list_grants(broker, alice, include_ended=True)] == [GrantState.DENIED]

    with pytest.raises(MfaRequired, match="yours was 31m ago"):
        grants.request_grant(broker, signed_in_with_mfa(alice, broker, 31 * M), req(scope="write"))
    grant = grants.request_grant(broker, signed_in_with_mfa(alice, broker, 29 * M), req(scope="write"))
    assert grant.state == GrantState.ACTIVE
    assert audit_rows(broker, "grant.issue")[-1]["details"]["mfa"] == "30m"


def test_extending_asks_for_the_second_factor_again(broker: Broker, fake_clock: FakeClock) -> None:
    alice = signed_in_with_mfa(person(broker, "alice", "sre"), broker, 0 * M)
    grant = grants.request_grant(broker, alice, req(scope="write", ttl="1h"))
    fake_clock.advance(timedelta(minutes=40))  # the sign-in's second factor is 40m old now

    with pytest.raises(MfaRequired, match=f"extending grant {grant.id}"):
        grants.extend_grant(broker, alice, grant.id, ExtendRequest(ttl="50m"))
    fresh = signed_in_with_mfa(alice, broker, M)
    extended = grants.extend_grant(broker, fresh, grant.id, ExtendRequest(ttl="50m"))
    assert extended.expires_at > grant.expires_at


def test_an_approval_with_mfa_needs_it_of_the_reviewer_not_to_deny(broker: Broker) -> None:
    alice = person(broker, "alice", "sre")
    lead, other = person(broker, "lee", "leads"), person(broker, "lou", "leads")
    pending = grants.request_grant(broker, alice, req(scope="read"))  # the requester needs none
    assert pending.state == GrantState.PENDING

    with pytest.raises(MfaRequired, match=r"approving grant .* within 10m .* yours had none"):
        grants.approve(broker, lead, pending.id)
    with pytest.raises(MfaRequired, match="yours was 11m ago"):
        grants.approve(broker, signed_in_with_mfa(lead, broker, 11 * M), pending.id)
    assert audit_rows(broker, "grant.approve") == []  # a refused vote records nothing

    approved = grants.approve(broker, signed_in_with_mfa(lead, broker, 2 * M), pending.id)
    assert approved.state == GrantState.ACTIVE

    second = grants.request_grant(broker, alice, req(scope="read"))
    assert grants.deny(broker, other, second.id, "not now").state == GrantState.DENIED
