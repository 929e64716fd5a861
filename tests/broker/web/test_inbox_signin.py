"""Signing in to /inbox: a password as on the device page, a hashed cookie, sign-out, CSRF."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa

from access.broker.auth import identity
from access.broker.clock import FakeClock
from access.broker.runtime import Broker
from access.broker.store.tables import sessions, web_sessions
from access.broker.web.csrf import CSRF_COOKIE
from access.broker.web.inbox import SESSION_COOKIE
from tests.broker.conftest import (
    BASE_URL,
    PASSWORD,
    DevicePage,
    InboxPage,
    add_user,
    assert_page_headers,
    audit_actions,
    audit_rows,
)

pytestmark = pytest.mark.anyio


def _session_rows(broker: Broker) -> list[sa.Row[tuple[str, str]]]:
    with broker.transaction() as conn:
        return list(conn.execute(sa.select(web_sessions.c.token_hash, sessions.c.client_id).join(sessions)))


def _set_cookies(response: httpx.Response) -> dict[str, str]:
    return {header.split("=", 1)[0]: header for header in response.headers.get_list("set-cookie")}


async def test_not_signed_in_shows_the_sign_in_form(client: httpx.AsyncClient) -> None:
    response = await client.get("/inbox")
    assert response.status_code == 200
    assert_page_headers(response)
    assert 'action="/inbox"' in response.text and 'name="password"' in response.text
    assert "<script" not in response.text
    cookie = _set_cookies(response)[CSRF_COOKIE].lower()
    for attribute in ("httponly", "samesite=strict", "secure", "path=/inbox"):
        assert attribute in cookie
    assert DevicePage.csrf(response.text) == client.cookies[CSRF_COOKIE]


async def test_sign_in_sets_a_session_cookie_stored_hashed(
    client: httpx.AsyncClient, broker: Broker, inbox: InboxPage
) -> None:
    add_user(broker)
    response = await inbox.sign_in()

    assert response.status_code == 303
    assert response.headers["location"] == "/inbox"
    cookie = _set_cookies(response)[SESSION_COOKIE]
    for attribute in ("HttpOnly", "Secure", "SameSite=lax", "Path=/inbox", "Max-Age=28800"):
        assert attribute.lower() in cookie.lower(), cookie
    token = client.cookies[SESSION_COOKIE]
    assert _session_rows(broker) == [(hashlib.sha256(token.encode()).hexdigest(), "access-inbox")]
    [entry] = audit_rows(broker, "login.success")
    assert entry["actor"] == "alice" and entry["details"]["method"] == "inbox"
    assert token not in str(entry)
    # The CSRF token is renewed at sign-in.
    assert CSRF_COOKIE in _set_cookies(response)


async def test_wrong_password_keeps_the_name_not_the_password(
    client: httpx.AsyncClient, broker: Broker, inbox: InboxPage
) -> None:
    add_user(broker)
    response = await inbox.sign_in(password="not-the-password")
    assert response.status_code == 401
    assert_page_headers(response)
    assert "Wrong username, password or one-time code." in response.text
    assert 'value="alice"' in response.text and "not-the-password" not in response.text
    assert SESSION_COOKIE not in client.cookies
    assert _session_rows(broker) == []
    [entry] = audit_rows(broker, "login.failure")
    assert entry["details"]["method"] == "inbox" and entry["details"]["reason"] == "wrong_credentials"


@contextlib.asynccontextmanager
async def _browser(broker: Broker, base_url: str = BASE_URL) -> AsyncIterator[InboxPage]:
    """The inbox of a broker made with other settings than the ``client`` fixture's."""
    from access.broker.app import create_app

    transport = httpx.ASGITransport(app=create_app(broker, background=False), client=("192.0.2.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as http:
        yield InboxPage(http)


async def test_password_guessing_is_rate_limited_as_on_the_device_page(
    make_broker: Callable[..., Broker],
) -> None:
    # The device page's allowances (auth.password), here the one per address, made small so
    # that the test pays for few argon2 checks; tests/broker/auth covers each allowance.
    broker = make_broker(login_failures_per_address=2)
    add_user(broker)
    async with _browser(broker) as inbox:
        for name in ("alice", "mallory"):
            assert (await inbox.sign_in(name, password="wrong-password")).status_code == 401
        response = await inbox.sign_in()  # even the right password now waits
    assert response.status_code == 429
    assert "too many failed attempts" in response.text and "try again" in response.text
    assert _session_rows(broker) == []
    assert audit_actions(broker).count("login.failure") == 2


async def test_sign_in_without_the_csrf_token_changes_nothing(
    client: httpx.AsyncClient, broker: Broker
) -> None:
    add_user(broker)
    before = audit_actions(broker)
    form = {"username": "alice", "password": PASSWORD}
    missing = await client.post("/inbox", data=form)
    await client.get("/inbox")  # now the browser has a cookie, but the form another value
    mismatched = await client.post("/inbox", data={**form, "csrf_token": "A" * 43})
    for response in (missing, mismatched):
        assert response.status_code == 403
        assert "form expired" in response.text
        assert_page_headers(response)
    assert SESSION_COOKIE not in client.cookies
    assert _session_rows(broker) == [] and audit_actions(broker) == before


async def test_sign_out_ends_the_session_everywhere(
    client: httpx.AsyncClient, broker: Broker, inbox: InboxPage
) -> None:
    add_user(broker)
    assert (await inbox.sign_in()).status_code == 303
    token = client.cookies[SESSION_COOKIE]
    csrf = client.cookies[CSRF_COOKIE]

    response = await client.post("/inbox/sign-out", data={"csrf_token": csrf})

    assert response.status_code == 303
    assert response.headers["location"] == "/inbox?signed_out=1"
    assert SESSION_COOKIE not in client.cookies
    assert "logout" in audit_actions(broker)
    page = await client.get(response.headers["location"])
    assert "You are signed out." in page.text and 'name="password"' in page.text
    # The old cookie, replayed (from another copy of it), signs nobody in any more.
    client.cookies.set(SESSION_COOKIE, token, domain="broker.test", path="/inbox")
    again = await client.get("/inbox")
    assert 'name="password"' in again.text and "Sign in to review" in again.text


async def test_sign_out_needs_the_csrf_token(
    client: httpx.AsyncClient, broker: Broker, inbox: InboxPage
) -> None:
    add_user(broker)
    assert (await inbox.sign_in()).status_code == 303
    response = await client.post("/inbox/sign-out", data={"csrf_token": "B" * 43})
    assert response.status_code == 403
    with broker.transaction() as conn:
        assert conn.execute(sa.select(sessions.c.revoked_at)).scalar_one() is None
    assert "logout" not in audit_actions(broker)


async def test_a_disabled_user_is_signed_out(
    client: httpx.AsyncClient, broker: Broker, inbox: InboxPage
) -> None:
    add_user(broker)
    assert (await inbox.sign_in()).status_code == 303
    identity.disable_principal(broker, "alice", actor="admin:test")
    response = await client.get("/inbox")
    assert response.status_code == 200
    assert 'name="password"' in response.text and "Signed in as" not in response.text
    assert "sign-in has ended" in response.text


async def test_the_session_lasts_inbox_session_ttl(
    client: httpx.AsyncClient, broker: Broker, inbox: InboxPage, fake_clock: FakeClock
) -> None:
    add_user(broker)
    assert (await inbox.sign_in()).status_code == 303
    with broker.transaction() as conn:
        created, expires = conn.execute(sa.select(sessions.c.created_at, sessions.c.expires_at)).one()
    assert expires - created == timedelta(hours=8)
    fake_clock.advance(timedelta(hours=8))
    response = await client.get("/inbox")
    assert 'name="password"' in response.text and "sign-in has ended" in response.text


async def test_the_cookie_is_no_api_token(
    client: httpx.AsyncClient, broker: Broker, inbox: InboxPage
) -> None:
    add_user(broker)
    assert (await inbox.sign_in()).status_code == 303
    token = client.cookies[SESSION_COOKIE]
    refreshed = await client.post(
        "/oauth/token", data={"grant_type": "refresh_token", "refresh_token": token}
    )
    assert refreshed.status_code == 400 and refreshed.json()["error"] == "invalid_grant"
    bearer = await client.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    assert bearer.status_code == 401


@pytest.mark.parametrize("cookie", ["", "x" * 43, "A" * 4000, "<script>"])
async def test_a_forged_cookie_signs_nobody_in(
    client: httpx.AsyncClient, broker: Broker, cookie: str
) -> None:
    add_user(broker)
    client.cookies.set(SESSION_COOKIE, cookie, domain="broker.test", path="/inbox")
    response = await client.get("/inbox")
    assert response.status_code == 200 and 'name="password"' in response.text
    assert "<script>" not in response.text


async def test_over_plain_http_the_cookies_are_not_secure(make_broker: Callable[..., Broker]) -> None:
    # Behind a proxy that terminates TLS the operator sets an https:// public URL; a plain
    # http:// one (loopback, --insecure-http) gets cookies a browser will send back over it.
    broker = make_broker(base_url="http://127.0.0.1:8080")
    add_user(broker)
    async with _browser(broker, "http://127.0.0.1:8080") as inbox:
        response = await inbox.sign_in()
    assert response.status_code == 303
    cookies = _set_cookies(response)
    for name in (SESSION_COOKIE, CSRF_COOKIE):
        assert "httponly" in cookies[name].lower() and "secure" not in cookies[name].lower()
