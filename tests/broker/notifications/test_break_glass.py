"""Break-glass: asked for, never fallen into; issued at once with a reason; flagged in the ledger
(``grant.break_glass`` beside ``grant.issue``) and to the webhooks; listed for review; kept by a
reload that still has its rule. On SQLite and PostgreSQL where the store is involved."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from access.broker import grants
from access.broker.errors import GrantDenied
from access.broker.notifications.delivery import WebhookLoop
from access.broker.policy import Subject, evaluate, policy_from_data
from access.broker.runtime import Broker
from access.shared.models import GrantRequest, GrantState
from tests.broker.conftest import audit_rows
from tests.broker.grants.test_grants import add_principal
from tests.broker.notifications.conftest import endpoint
from tests.conftest import DEFAULT_POLICY
from tests.fakes.webhooks import Receiver

# The on-call may write to svc-payments only with a lead's approval, or, in an emergency, at once
# through the break-glass rule (15m at most).
POLICY: dict[str, Any] = copy.deepcopy(DEFAULT_POLICY)
POLICY["rules"] = [
    {
        "name": "oncall-write",
        "subjects": {"groups": ["oncall"]},
        "services": ["svc-payments"],
        "scopes": ["write"],
        "require": "approval",
        "approval": {"reviewers": [{"groups": ["leads"]}]},
    },
    {
        "name": "oncall-emergency",
        "subjects": {"groups": ["oncall"]},
        "services": ["svc-payments"],
        "scopes": ["write"],
        "max_ttl": "15m",
        "break_glass": True,
    },
]
POLICY["audit"] = {"readers": {"groups": ["security"]}}


def _ask(ttl: str = "10m", reason: str = "INC-7", break_glass: bool = True) -> GrantRequest:
    return GrantRequest(
        service="svc-payments", scope="write", ttl=ttl, reason=reason, break_glass=break_glass
    )


def test_break_glass_is_asked_for_and_needs_a_reason() -> None:
    policy = policy_from_data(POLICY)
    pat = Subject("pat", "user", ("oncall",))
    ordinary = evaluate(policy, pat, "svc-payments", "write", _td(10), "INC-7")
    assert (ordinary.requirement, ordinary.rule, ordinary.break_glass) == ("approval", "oncall-write", False)
    glass = evaluate(policy, pat, "svc-payments", "write", _td(10), "INC-7", break_glass=True)
    assert (glass.issuable, glass.rule, glass.break_glass) == (True, "oncall-emergency", True)
    bare = evaluate(policy, pat, "svc-payments", "write", _td(10), "", break_glass=True)
    assert not bare.allowed and "needs a reason" in bare.reason
    longer = evaluate(policy, pat, "svc-payments", "write", _td(20), "INC-7", break_glass=True)
    assert not longer.allowed and "maximum 15m" in longer.reason
    # Nobody else falls into it, and a deny still wins over it.
    other = evaluate(
        policy, Subject("sam", "user", ("dev",)), "svc-payments", "write", _td(1), "x", break_glass=True
    )
    assert not other.allowed and other.reason == "no break-glass rule gives sam write on svc-payments"


def _td(minutes: int) -> timedelta:
    return timedelta(minutes=minutes)


def test_a_break_glass_grant_is_issued_flagged_and_listed(
    make_broker: Callable[..., Broker], db_url: str
) -> None:
    broker = make_broker(db_url=db_url, policy=POLICY)
    pat = add_principal(broker, "pat", ("oncall",))
    grant = grants.request_grant(broker, pat, _ask())
    assert (grant.state, grant.break_glass, grant.rule) == (GrantState.ACTIVE, True, "oncall-emergency")
    [issue] = audit_rows(broker, "grant.issue")
    [row] = audit_rows(broker, "grant.break_glass")
    flag = row["details"]
    assert issue["details"]["break_glass"] is True and row["seq"] == issue["seq"] + 1
    assert (flag["grant_id"], flag["reason"], flag["rule"]) == (grant.id, "INC-7", "oncall-emergency")
    # Listed for review: the taker sees their own, an audit reader everyone's; ordinary ones not.
    ordinary = grants.request_grant(broker, pat, _ask(break_glass=False))
    assert ordinary.state == GrantState.PENDING and not ordinary.break_glass
    grants.revoke_grant(broker, pat, grant.id)
    sec = add_principal(broker, "sec", ("security",))
    other = add_principal(broker, "other", ("dev",))
    assert [g.id for g in grants.list_break_glass(broker, pat)] == [grant.id]
    [seen] = grants.list_break_glass(broker, sec)
    assert (seen.id, seen.state, seen.subject) == (grant.id, GrantState.REVOKED, "pat")
    assert grants.list_break_glass(broker, other) == []


def test_a_break_glass_request_without_a_rule_or_reason_is_denied(
    make_broker: Callable[..., Broker], db_url: str
) -> None:
    broker = make_broker(db_url=db_url, policy=POLICY)
    sam = add_principal(broker, "sam", ("dev",))
    with pytest.raises(GrantDenied) as caught:
        grants.request_grant(broker, sam, _ask())
    assert "no break-glass rule" in caught.value.message and "without --break-glass" in (
        caught.value.hint or ""
    )
    pat = add_principal(broker, "pat", ("oncall",))
    with pytest.raises(GrantDenied, match="needs a reason"):
        grants.request_grant(broker, pat, _ask(reason=""))
    assert audit_rows(broker, "grant.break_glass") == []


def test_the_webhooks_hear_of_it_signed(
    make_broker: Callable[..., Broker], secret_file: Path, make_receiver: Callable[..., Receiver]
) -> None:
    hook = make_receiver()
    hooks = [endpoint(hook.url, secret_file, events=["grant.break_glass", "grant.issued"])]
    broker = make_broker(policy=POLICY, webhooks=hooks)
    pat = add_principal(broker, "pat", ("oncall",))
    grant = grants.request_grant(broker, pat, _ask())
    assert WebhookLoop(broker).run_due() == 2
    got = {item.json["event"]: item for item in hook.wait_for(2)}
    assert set(got) == {"grant.issued", "grant.break_glass"} and all(item.signed for item in got.values())
    body = got["grant.break_glass"].json
    assert (body["grant"]["id"], body["grant"]["break_glass"], body["details"]) == (
        grant.id,
        True,
        {"rule": "oncall-emergency"},
    )
