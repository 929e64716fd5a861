"""The /inbox list: what waits for my review, Approve and Deny, CSRF, escaping, refusals."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import sqlalchemy as sa

from access.broker.auth.tokens import authenticate
from access.broker.clock import FakeClock
from access.broker.grants import approvals, request_grant
from access.broker.runtime import Broker
from access.broker.store.tables import grants
from access.broker.web.csrf import CSRF_COOKIE
from access.shared.models import GrantRequest
from tests.broker.conftest import InboxPage, add_user, assert_page_headers, audit_actions, audit_rows, login
from tests.conftest import REVIEWED_POLICY

pytestmark = pytest.mark.anyio


@pytest.fixture
def broker(make_broker: Callable[..., Broker]) -> Broker:
    """bob (dev) asks; carol (leads) reviews. (Each user costs an argon2 hash: tests that need
    another reviewer, dana, or a bystander, erin, add them.)"""
    made = make_broker(policy=REVIEWED_POLICY)
    add_user(made, "bob", ("dev",))
    add_user(made, "carol", ("leads",))
    return made


def _ask(broker: Broker, reason: str = "CHG-42 schema fix") -> str:
    """bob asks for write on svc-payments for 15 minutes: pending. Returns the grant id."""
    user = next(p for p in _principals(broker) if p.name == "bob")
    ctx = authenticate(broker, login(broker, user).access_token)
    grant = request_grant(
        broker, ctx, GrantRequest(service="svc-payments", scope="write", ttl="15m", reason=reason)
    )
    assert grant.state == "pending", grant
    return grant.id


def _principals(broker: Broker) -> list[Any]:
    from access.broker.auth import identity

    return identity.list_principals(broker)


def _state(broker: Broker, grant_id: str) -> str:
    with broker.transaction() as conn:
        return str(conn.execute(sa.select(grants.c.state).where(grants.c.id == grant_id)).scalar_one())


def _ctx(broker: Broker, name: str) -> Any:
    user = next(p for p in _principals(broker) if p.name == name)
    return authenticate(broker, login(broker, user).access_token)


async def test_the_list_shows_what_waits_for_my_review(broker: Broker, inbox: InboxPage) -> None:
    grant_id = _ask(broker)
    page = await inbox.signed_in("carol")

    assert page.status_code == 200
    assert_page_headers(page)
    text = page.text
    assert "Signed in as <strong>carol</strong>" in text
    assert "bob asks for <code>write</code> on <code>svc-payments</code>" in text
    assert "CHG-42 schema fix" in text and "15m from approval" in text
    assert "needs 1 more of group:leads" in text
    assert f'action="/inbox/{grant_id}/approve"' in text and f'formaction="/inbox/{grant_id}/deny"' in text
    assert "<script" not in text


async def test_markup_in_a_reason_shows_as_text(broker: Broker, inbox: InboxPage) -> None:
    _ask(broker, reason='<script>alert("x")</script><img src=x onerror=alert(1)>')
    page = await inbox.signed_in("carol")
    assert "<script" not in page.text and "<img" not in page.text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in page.text


async def test_approve_with_a_comment_then_the_list_says_what_happened(
    client: httpx.AsyncClient, broker: Broker, inbox: InboxPage
) -> None:
    grant_id = _ask(broker)
    await inbox.signed_in("carol")

    response = await inbox.decide(grant_id, "approve", "looks right <b>")

    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith("/inbox?")
    assert _state(broker, grant_id) == "active"
    [vote] = audit_rows(broker, "grant.approve")
    assert vote["actor"] == "carol" and vote["details"]["comment"] == "looks right <b>"
    page = await client.get(location)
    assert (
        f"You approved bob&#x27;s request for write on svc-payments ({grant_id}). It is granted" in page.text
    )
    assert "Nothing waits for your review." in page.text


async def test_deny_needs_a_reason_in_the_comment(broker: Broker, inbox: InboxPage) -> None:
    grant_id = _ask(broker)
    await inbox.signed_in("carol")
    before = audit_actions(broker)

    refused = await inbox.decide(grant_id, "deny", "   ")
    assert refused.status_code == 400
    assert "a denial needs a reason" in refused.text and "comment field" in refused.text
    assert _state(broker, grant_id) == "pending" and audit_actions(broker) == before

    denied = await inbox.decide(grant_id, "deny", "not during the freeze")
    assert denied.status_code == 303
    assert _state(broker, grant_id) == "denied"
    page = await inbox.client.get(denied.headers["location"])
    assert f"You denied bob&#x27;s request for write on svc-payments ({grant_id})." in page.text


async def test_approve_without_the_csrf_token_changes_nothing(
    client: httpx.AsyncClient, broker: Broker, inbox: InboxPage
) -> None:
    grant_id = _ask(broker)
    await inbox.signed_in("carol")
    before = audit_actions(broker)
    good = client.cookies[CSRF_COOKIE]

    missing = await client.post(f"/inbox/{grant_id}/approve", data={"comment": "x"})
    mismatched = await client.post(
        f"/inbox/{grant_id}/approve", data={"csrf_token": good[::-1], "comment": "x"}
    )
    deny = await client.post(f"/inbox/{grant_id}/deny", data={"csrf_token": "C" * 43, "comment": "no"})

    for response in (missing, mismatched, deny):
        assert response.status_code == 403
        assert "form expired" in response.text
        assert_page_headers(response)
    assert _state(broker, grant_id) == "pending" and audit_actions(broker) == before


async def test_a_non_reviewer_is_refused(broker: Broker, inbox: InboxPage) -> None:
    add_user(broker, "erin", ())
    grant_id = _ask(broker)
    page = await inbox.signed_in("erin")
    assert "Nothing waits for your review." in page.text

    response = await inbox.decide(grant_id, "approve")

    # Not among its reviewers: the request is not even shown to exist (ids do not leak).
    assert response.status_code == 404
    assert f"no grant &#x27;{grant_id}&#x27;" in response.text and 'role="alert"' in response.text
    assert _state(broker, grant_id) == "pending"


async def test_nobody_approves_their_own_request(broker: Broker, inbox: InboxPage) -> None:
    grant_id = _ask(broker)
    page = await inbox.signed_in("bob")
    assert "Nothing waits for your review." in page.text  # bob's own request is not in his list
    response = await inbox.decide(grant_id, "approve")
    assert response.status_code == 403
    assert "nobody reviews their own request" in response.text
    assert _state(broker, grant_id) == "pending"


async def test_a_request_someone_else_decided_is_a_conflict(broker: Broker, inbox: InboxPage) -> None:
    add_user(broker, "dana", ("leads",))
    grant_id = _ask(broker)
    page = await inbox.signed_in("carol")
    assert grant_id in page.text
    approvals.deny(broker, _ctx(broker, "dana"), grant_id, "no")  # dana, from her terminal, first

    response = await inbox.decide(grant_id, "approve", "ok")

    assert response.status_code == 409
    assert "already denied by dana" in response.text
    assert _state(broker, grant_id) == "denied"


async def test_a_request_that_expired_unreviewed_cannot_be_approved(
    broker: Broker, inbox: InboxPage, fake_clock: FakeClock
) -> None:
    grant_id = _ask(broker)
    await inbox.signed_in("carol")
    fake_clock.advance(timedelta(hours=1, seconds=1))

    response = await inbox.decide(grant_id, "approve")

    assert response.status_code == 409
    assert "expired unreviewed" in response.text
    assert _state(broker, grant_id) != "active"


async def test_deciding_needs_a_sign_in(client: httpx.AsyncClient, broker: Broker) -> None:
    grant_id = _ask(broker)
    csrf = (await client.get("/inbox")).cookies[CSRF_COOKIE]
    response = await client.post(f"/inbox/{grant_id}/approve", data={"csrf_token": csrf})
    assert response.status_code == 401
    assert 'name="password"' in response.text
    assert _state(broker, grant_id) == "pending"


async def test_a_message_made_elsewhere_is_not_shown(
    client: httpx.AsyncClient, broker: Broker, inbox: InboxPage
) -> None:
    grant_id = _ask(broker)
    await inbox.signed_in("carol")
    response = await inbox.decide(grant_id, "approve")
    real = parse_qs(urlsplit(response.headers["location"]).query)
    add_user(broker, "dana", ("leads",))

    forged = await client.get("/inbox", params={"done": "You approved everything.", "tag": real["tag"][0]})
    assert "You approved everything." not in forged.text
    # The real message and tag, but another session (dana's): not shown either.
    await inbox.signed_in("dana")
    replayed = await client.get("/inbox", params={"done": real["done"][0], "tag": real["tag"][0]})
    assert "You approved" not in replayed.text


async def test_one_request_has_a_page_of_its_own(
    client: httpx.AsyncClient, broker: Broker, inbox: InboxPage
) -> None:
    grant_id = _ask(broker)
    add_user(broker, "erin", ())
    await inbox.signed_in("carol")
    waiting = await client.get(f"/inbox/{grant_id}")
    assert waiting.status_code == 200
    assert_page_headers(waiting)
    assert "waits for review until" in waiting.text and f'action="/inbox/{grant_id}/approve"' in waiting.text

    assert (await inbox.decide(grant_id, "approve", "fine")).status_code == 303
    decided = await client.get(f"/inbox/{grant_id}")
    assert "granted, active until" in decided.text and "carol approved: fine" in decided.text
    assert "/approve" not in decided.text

    await inbox.signed_in("erin")  # not a reviewer: as if there were no such request
    for path in (f"/inbox/{grant_id}", "/inbox/g-nonexistent", "/inbox/%3Cscript%3E"):
        hidden = await client.get(path)
        assert hidden.status_code == 404 and "no grant" in hidden.text and "<script" not in hidden.text
