"""The /device verification page: no JavaScript, CSRF, escaping, headers, clear failures."""

from __future__ import annotations

import re

import httpx
import pytest
import sqlalchemy as sa

from access.broker.runtime import Broker
from access.broker.store.tables import device_codes
from access.broker.web.device import CSRF_COOKIE
from tests.broker.conftest import (
    PASSWORD,
    DevicePage,
    add_user,
    assert_page_headers,
    audit_actions,
    start_device,
)

pytestmark = pytest.mark.anyio


def _device_status(broker: Broker) -> list[str]:
    with broker.transaction() as conn:
        return list(conn.execute(sa.select(device_codes.c.status)).scalars())


async def test_form_sets_a_strict_csrf_cookie_matching_the_hidden_field(client: httpx.AsyncClient) -> None:
    response = await client.get("/device", params={"user_code": "bcdf ghjk"})

    assert response.status_code == 200
    assert_page_headers(response)
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{CSRF_COOKIE}=")
    for attribute in ("HttpOnly", "SameSite=strict", "Secure", "Path=/device"):
        assert attribute.lower() in cookie.lower()
    assert DevicePage.csrf(response.text) == client.cookies[CSRF_COOKIE]
    assert 'value="BCDF-GHJK"' in response.text  # normalised for display
    assert "<script" not in response.text


async def test_the_cookie_is_kept_across_visits(client: httpx.AsyncClient) -> None:
    first = DevicePage.csrf((await client.get("/device")).text)
    second = DevicePage.csrf((await client.get("/device")).text)
    assert first == second


async def test_values_are_escaped(client: httpx.AsyncClient) -> None:
    response = await client.get("/device", params={"user_code": '"><script>alert(1)</script>'})
    assert "<script>" not in response.text
    assert "&lt;script&gt;" in response.text or "&quot;&gt;" in response.text


async def test_what_a_person_typed_is_escaped_when_the_form_comes_back(
    client: httpx.AsyncClient, broker: Broker, page: DevicePage
) -> None:
    add_user(broker)
    evil = '"><img src=x onerror=alert(1)>'
    csrf = await page.open()
    response = await client.post(
        "/device", data={"csrf_token": csrf, "user_code": evil, "username": evil, "password": "x" * 8}
    )
    assert response.status_code == 400  # a malformed code: nothing was looked up
    assert "<img" not in response.text
    assert 'value="&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"' in response.text
    started = await start_device(client)
    wrong = await client.post(
        "/device",
        data={"csrf_token": csrf, "user_code": started["user_code"], "username": evil, "password": "x" * 8},
    )
    assert wrong.status_code == 401
    assert "<img" not in wrong.text and "&lt;img" in wrong.text


async def test_sign_in_shows_what_is_being_authorized(
    client: httpx.AsyncClient, broker: Broker, page: DevicePage
) -> None:
    add_user(broker)
    started = await start_device(client, host="build-box.example")

    response = await page.sign_in(started["user_code"].lower())

    assert response.status_code == 200, response.text
    assert_page_headers(response)
    text = response.text
    assert "access CLI" in text
    assert "build-box.example" in text
    assert "192.0.2.7" in text  # the IP the CLI called from
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", text)
    assert "<strong>alice</strong>" in text
    assert started["user_code"] in text
    assert PASSWORD not in text
    assert 'value="approve"' in text and 'value="deny"' in text
    assert _device_status(broker) == ["pending"]  # nothing approved yet


async def test_approve_ends_with_return_to_terminal(
    client: httpx.AsyncClient, broker: Broker, page: DevicePage
) -> None:
    add_user(broker)
    started = await start_device(client)
    done = await page.approve(started["user_code"])
    assert_page_headers(done)
    assert "You can close this window and return to your terminal" in done.text
    assert "Device authorized" in done.text
    assert _device_status(broker) == ["approved"]


async def test_deny(client: httpx.AsyncClient, broker: Broker, page: DevicePage) -> None:
    add_user(broker)
    started = await start_device(client)
    done = await page.approve(started["user_code"], action="deny")
    assert "Request denied" in done.text and "return to your terminal" in done.text
    assert _device_status(broker) == ["denied"]


async def test_missing_or_wrong_csrf_changes_nothing(client: httpx.AsyncClient, broker: Broker) -> None:
    add_user(broker)
    started = await start_device(client)
    before = audit_actions(broker)
    form = {"user_code": started["user_code"], "username": "alice", "password": PASSWORD}

    no_token = await client.post("/device", data=form)
    await client.get("/device")  # the browser now has a cookie...
    wrong_token = await client.post("/device", data={**form, "csrf_token": "A" * 43})  # ...but not this value

    for response in (no_token, wrong_token):
        assert response.status_code == 403
        assert "form expired" in response.text
        assert_page_headers(response)
    assert audit_actions(broker) == before
    assert _device_status(broker) == ["pending"]


async def test_confirm_needs_csrf_too(client: httpx.AsyncClient, broker: Broker, page: DevicePage) -> None:
    add_user(broker)
    started = await start_device(client)
    signed_in = await page.sign_in(started["user_code"])
    data = {"consent_token": DevicePage.consent(signed_in.text), "action": "approve", "csrf_token": "B" * 43}
    response = await client.post("/device/confirm", data=data)
    assert response.status_code == 403
    assert _device_status(broker) == ["pending"]


async def test_wrong_password_rerenders_the_form(
    client: httpx.AsyncClient, broker: Broker, page: DevicePage
) -> None:
    add_user(broker)
    started = await start_device(client)
    response = await page.sign_in(started["user_code"], password="not-the-password")
    assert response.status_code == 401
    assert "Wrong username, password or one-time code." in response.text
    assert 'value="alice"' in response.text  # the username is kept...
    assert "not-the-password" not in response.text  # ...the password is not
    assert started["user_code"] in response.text
    assert _device_status(broker) == ["pending"]


async def test_wrong_code_rerenders_the_form(
    client: httpx.AsyncClient, broker: Broker, page: DevicePage
) -> None:
    add_user(broker)
    await start_device(client)
    response = await page.sign_in("BBBB-BBBB")
    assert response.status_code == 400
    assert "not valid or has expired" in response.text


async def test_code_guessing_gets_429(client: httpx.AsyncClient, broker: Broker, page: DevicePage) -> None:
    add_user(broker)
    started = await start_device(client)
    for _ in range(10):
        assert (await page.sign_in("BBBB-BBBB")).status_code == 400
    response = await page.sign_in(started["user_code"])
    assert response.status_code == 429
    assert "try again" in response.text
    assert _device_status(broker) == ["pending"]


async def test_confirm_is_single_use(client: httpx.AsyncClient, broker: Broker, page: DevicePage) -> None:
    add_user(broker)
    started = await start_device(client)
    signed_in = await page.sign_in(started["user_code"])
    assert (await page.confirm(signed_in.text, "approve")).status_code == 200
    again = await page.confirm(signed_in.text, "deny")
    assert again.status_code == 400
    assert "no longer valid" in again.text
    assert _device_status(broker) == ["approved"]


async def test_confirm_needs_a_known_action(
    client: httpx.AsyncClient, broker: Broker, page: DevicePage
) -> None:
    add_user(broker)
    started = await start_device(client)
    signed_in = await page.sign_in(started["user_code"])
    data = {
        "csrf_token": DevicePage.csrf(signed_in.text),
        "consent_token": DevicePage.consent(signed_in.text),
        "action": "maybe",
    }
    response = await client.post("/device/confirm", data=data)
    assert response.status_code == 400 and "Choose Approve or Deny" in response.text
    assert _device_status(broker) == ["pending"]
