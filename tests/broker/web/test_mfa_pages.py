"""The one-time code on /device and /inbox, the enrolment page /inbox/mfa (QR code, confirm,
turn off), and a device login started with mfa=true (``access login --mfa``)."""

from __future__ import annotations

import re
from datetime import timedelta

import httpx
import pyotp
import pytest

from access.broker.auth.identity import totp
from access.broker.clock import FakeClock
from access.broker.runtime import Broker
from tests.broker.conftest import DevicePage, InboxPage, add_user, assert_page_headers, audit_rows, poll

pytestmark = pytest.mark.anyio

_SECRET = re.compile(r"<dt>Secret</dt><dd>([A-Z2-7]+)</dd>")


def _code(secret: str, clock: FakeClock, steps: int = 0) -> str:
    return pyotp.TOTP(secret).at(clock.now() + timedelta(seconds=30 * steps))


async def _post(inbox: InboxPage, path: str, **data: str) -> httpx.Response:
    csrf = DevicePage.csrf((await inbox.client.get("/inbox/mfa")).text)
    return await inbox.client.post(path, data={"csrf_token": csrf, **data})


async def test_enrol_on_the_page_then_sign_in_needs_the_code(
    broker: Broker, inbox: InboxPage, fake_clock: FakeClock
) -> None:
    add_user(broker)
    await inbox.signed_in()
    off = await inbox.client.get("/inbox/mfa")
    assert_page_headers(off)
    assert "<strong>off</strong>" in off.text and "/inbox/mfa/begin" in off.text

    pending = await _post(inbox, "/inbox/mfa/begin")
    assert pending.status_code == 200, pending.text
    assert "<svg" in pending.text and "<script" not in pending.text
    match = _SECRET.search(pending.text)
    assert match, pending.text
    secret = match.group(1)
    # Reloading shows the same pending secret; nothing is in force yet.
    assert secret in (await inbox.client.get("/inbox/mfa")).text

    wrong = await _post(inbox, "/inbox/mfa/confirm", otp=_code(secret, fake_clock, 4))
    assert wrong.status_code == 401 and "not right" in wrong.text
    on = await _post(inbox, "/inbox/mfa/confirm", otp=_code(secret, fake_clock))
    assert on.status_code == 200 and "One-time codes are on" in on.text and "Turn off" in on.text
    assert secret not in on.text  # no longer shown once in force
    fake_clock.advance(30)

    refused = await inbox.sign_in()
    assert refused.status_code == 401 and "Wrong username, password or one-time code." in refused.text
    assert (await inbox.sign_in(otp=_code(secret, fake_clock))).status_code == 303
    assert [e["details"]["reason"] for e in audit_rows(broker, "login.failure")] == ["totp", "totp"]


async def test_turn_off_needs_a_current_code(broker: Broker, inbox: InboxPage, fake_clock: FakeClock) -> None:
    add_user(broker)
    enrolment = totp.begin_enrolment(broker, "alice", actor="alice")
    await inbox.signed_in()  # pending: the password alone
    confirmed = await _post(inbox, "/inbox/mfa/confirm", otp=_code(enrolment.secret, fake_clock))
    assert "One-time codes are on" in confirmed.text
    fake_clock.advance(30)
    refused = await _post(inbox, "/inbox/mfa/disable", otp="000000")
    assert refused.status_code == 401 and "Turn off" in refused.text
    off = await _post(inbox, "/inbox/mfa/disable", otp=_code(enrolment.secret, fake_clock))
    assert off.status_code == 200 and "One-time codes are off" in off.text
    assert len(audit_rows(broker, "user.totp_disable")) == 1


async def test_the_mfa_page_needs_a_sign_in_and_csrf(broker: Broker, inbox: InboxPage) -> None:
    add_user(broker)
    anonymous = await inbox.client.get("/inbox/mfa")
    assert 'action="/inbox"' in anonymous.text and "Set up one-time codes" not in anonymous.text
    await inbox.signed_in()
    forged = await inbox.client.post("/inbox/mfa/begin", data={"csrf_token": "forged"})
    assert forged.status_code == 403
    assert audit_rows(broker, "user.totp_enrol") == []


async def test_the_device_page_takes_the_code(
    broker: Broker, client: httpx.AsyncClient, page: DevicePage, fake_clock: FakeClock
) -> None:
    add_user(broker)
    enrolment = totp.begin_enrolment(broker, "alice", actor="alice")
    totp.confirm_enrolment(broker, "alice", _code(enrolment.secret, fake_clock), "192.0.2.7")
    fake_clock.advance(30)
    form = await client.get("/device")
    assert 'autocomplete="one-time-code"' in form.text and 'inputmode="numeric"' in form.text
    started = await client.post(
        "/oauth/device_authorization",
        data={"client_id": "access-cli", "client_host": "laptop", "mfa": "true"},
    )
    user_code = started.json()["user_code"]
    refused = await page.sign_in(user_code)
    assert refused.status_code == 401 and "one-time code" in refused.text
    signed = await page.sign_in(user_code, otp=_code(enrolment.secret, fake_clock))
    assert signed.status_code == 200, signed.text
    assert (await page.confirm(signed.text)).status_code == 200
    assert (await poll(client, started.json()["device_code"])).status_code == 200
    [issued] = audit_rows(broker, "token.issue")
    assert issued["details"]["mfa"] is True


async def test_mfa_true_refuses_a_user_without_codes_with_what_to_do(
    broker: Broker, client: httpx.AsyncClient, page: DevicePage
) -> None:
    add_user(broker)
    started = await client.post(
        "/oauth/device_authorization", data={"client_id": "access-cli", "mfa": "true"}
    )
    refused = await page.sign_in(started.json()["user_code"])
    assert refused.status_code == 403
    assert "no one-time codes set up" in refused.text and "/inbox/mfa" in refused.text
    bad = await client.post("/oauth/device_authorization", data={"client_id": "access-cli", "mfa": "yes"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_request"
