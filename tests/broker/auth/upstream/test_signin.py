"""Signing in with the upstream provider on /device and /inbox, end to end in process.

The provider is tests/fakes/oidcmock.py over MockTransport; the broker, its database and its
pages are real.
"""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from access.broker.auth import identity
from access.broker.auth.sessions import refresh
from access.broker.auth.tokens import OAuthError, authenticate
from access.broker.clock import FakeClock
from access.broker.runtime import Broker
from tests.broker.conftest import PASSWORD, DevicePage, audit_rows, ledger_text, poll, start_device
from tests.fakes.oidcmock import CLIENT_SECRET, FakeProvider

pytestmark = pytest.mark.anyio


@pytest.fixture
def broker_db(db_url: str) -> str:
    """On SQLite and PostgreSQL."""
    return db_url


_REFRESH_URL = re.compile(r'http-equiv="refresh" content="0; url=([^"]+)"')


def _authorize_url(page: httpx.Response) -> str:
    assert page.status_code == 200, page.text
    match = _REFRESH_URL.search(page.text)
    assert match, page.text
    return unescape(match.group(1))


async def _start(client: httpx.AsyncClient, user_code: str) -> str:
    csrf = await DevicePage(client).open(user_code)
    page = await client.post("/device/oidc/idp", data={"csrf_token": csrf, "user_code": user_code})
    assert "access_oidc" in page.headers.get("set-cookie", "")
    return _authorize_url(page)


async def _callback(client: httpx.AsyncClient, idp: FakeProvider, url: str, user: str) -> httpx.Response:
    code, state = idp.authorize(url, user)
    return await client.get("/oidc/idp/callback", params={"code": code, "state": state})


async def _device_login(
    client: httpx.AsyncClient, idp: FakeProvider, user: str = "alice"
) -> dict[str, object]:
    """``access login`` through the provider: start, sign in there, approve, exchange."""
    started = await start_device(client)
    confirm = await _callback(client, idp, await _start(client, str(started["user_code"])), user)
    assert confirm.status_code == 200, confirm.text
    assert f"signed in as <strong>{user}</strong>" in confirm.text
    done = await DevicePage(client).confirm(confirm.text)
    assert done.status_code == 200 and "Device authorized" in done.text
    tokens = await poll(client, str(started["device_code"]))
    assert tokens.status_code == 200, tokens.text
    body: dict[str, object] = tokens.json()
    return body


def _principal(broker: Broker, name: str) -> identity.PrincipalRecord:
    return next(p for p in identity.list_principals(broker) if p.name == name)


async def test_a_device_login_through_the_provider_provisions_the_user_with_its_groups(
    broker: Broker, client: httpx.AsyncClient, idp: FakeProvider
) -> None:
    form = await client.get("/device")
    assert "Sign in with Example IdP" in form.text and 'formaction="/device/oidc/idp"' in form.text
    tokens = await _device_login(client, idp)
    ctx = authenticate(broker, str(tokens["access_token"]))
    assert (ctx.name, ctx.groups) == ("alice", ("eng",))
    alice = _principal(broker, "alice")
    assert (alice.source, alice.issuer, alice.subject) == ("oidc:idp", "https://idp.test", "sub-alice")
    (provisioned,) = audit_rows(broker, "user.provision")
    assert provisioned["details"]["subject"] == "sub-alice"
    success = audit_rows(broker, "login.success")[-1]["details"]
    assert success["method"] == "oidc" and success["provider"] == "idp" and success["mfa"] is False
    text = ledger_text(broker)
    assert CLIENT_SECRET not in text and "refresh_token" not in text


async def test_a_refresh_reads_the_groups_again_and_a_refusal_ends_the_session(
    broker: Broker, client: httpx.AsyncClient, idp: FakeProvider
) -> None:
    tokens = await _device_login(client, idp)
    idp.groups["alice"] = ["ops"]
    renewed = refresh(broker, str(tokens["refresh_token"]), "access-cli")
    assert authenticate(broker, renewed.access_token).groups == ("ops",)
    assert audit_rows(broker, "token.refresh")[-1]["details"]["groups"] == ["ops"]
    # Without an ID token in the answer, userinfo says the groups.
    idp.refresh_without_id_token = True
    idp.groups["alice"] = []
    renewed = refresh(broker, str(renewed.refresh_token), "access-cli")
    assert authenticate(broker, renewed.access_token).groups == ()
    # The provider no longer vouches for alice (disabled there): the session ends.
    idp.refuse_refresh = True
    with pytest.raises(OAuthError, match="your sign-in with Example IdP ended") as caught:
        refresh(broker, str(renewed.refresh_token), "access-cli")
    assert caught.value.error == "invalid_grant"
    (ended,) = audit_rows(broker, "token.upstream_refuse")
    assert ended["details"]["reason"] == "invalid_grant"
    with pytest.raises(Exception, match="signed out or revoked"):
        authenticate(broker, renewed.access_token)


async def test_a_provider_down_at_refresh_refuses_it_but_keeps_the_session(
    broker: Broker, client: httpx.AsyncClient, idp: FakeProvider
) -> None:
    tokens = await _device_login(client, idp)
    idp.down = True
    broker.oidc_keys._entries.clear()  # the cached discovery document aged out
    with pytest.raises(OAuthError) as caught:
        refresh(broker, str(tokens["refresh_token"]), "access-cli")
    assert (caught.value.error, caught.value.status) == ("temporarily_unavailable", 503)
    idp.down = False
    renewed = refresh(broker, str(tokens["refresh_token"]), "access-cli")  # the same token still works
    assert authenticate(broker, renewed.access_token).name == "alice"


async def test_without_an_upstream_refresh_token_the_session_ends_with_the_id_token(
    broker: Broker, client: httpx.AsyncClient, idp: FakeProvider, fake_clock: FakeClock
) -> None:
    idp.issue_refresh_tokens = False
    tokens = await _device_login(client, idp)
    idp.groups["alice"] = ["ops"]
    renewed = refresh(broker, str(tokens["refresh_token"]), "access-cli")
    assert authenticate(broker, renewed.access_token).groups == ("eng",)  # fixed until the next sign-in
    fake_clock.advance(timedelta(seconds=3601))
    with pytest.raises(OAuthError, match="session has expired"):
        refresh(broker, str(renewed.refresh_token), "access-cli")


async def test_the_inbox_signs_in_through_the_provider(
    broker: Broker, client: httpx.AsyncClient, idp: FakeProvider
) -> None:
    page = await client.get("/inbox")
    csrf = DevicePage.csrf(page.text)
    assert 'formaction="/inbox/oidc/idp"' in page.text
    url = _authorize_url(await client.post("/inbox/oidc/idp", data={"csrf_token": csrf}))
    back = await _callback(client, idp, url, "alice")
    assert back.status_code == 303 and back.headers["location"] == "/inbox"
    listed = await client.get("/inbox")
    assert "Signed in as <strong>alice</strong>" in listed.text


@pytest.mark.parametrize("case", ["replayed", "expired", "other_browser", "unknown", "provider_error"])
async def test_a_callback_that_does_not_belong_is_refused_and_audited(
    broker: Broker, client: httpx.AsyncClient, idp: FakeProvider, fake_clock: FakeClock, case: str
) -> None:
    started = await start_device(client)
    url = await _start(client, str(started["user_code"]))
    code, state = idp.authorize(url, "alice")
    params = {"code": code, "state": state}
    if case == "replayed":
        cookie = client.cookies.get("access_oidc")
        assert (await client.get("/oidc/idp/callback", params=params)).status_code == 200
        assert cookie and not client.cookies.get("access_oidc")  # spent with the state
        client.cookies.set("access_oidc", cookie, domain="broker.test", path="/oidc")  # replayed whole
        params["code"], _ = idp.authorize(url, "alice")
        words, reason = "already completed", "state_reused"
    elif case == "expired":
        fake_clock.advance(timedelta(minutes=11))
        words, reason = "expired", "state_expired"
    elif case == "other_browser":
        client.cookies.delete("access_oidc")
        words, reason = "another browser", "other_browser"
    elif case == "unknown":
        params["state"] = "made-up"
        words, reason = "not one this broker started", "unknown_state"
    else:
        params = {"state": state, "error": "access_denied", "error_description": "<b>no</b>"}
        words, reason = "did not sign you in (access_denied: &lt;b&gt;no&lt;/b&gt;)", "provider_error"
    page = await client.get("/oidc/idp/callback", params=params)
    assert page.status_code == 400, page.text
    assert words in page.text and "<b>no</b>" not in page.text
    failure = audit_rows(broker, "login.failure")[-1]["details"]
    assert (failure["method"], failure["provider"], failure["reason"]) == ("oidc", "idp", reason)


async def test_a_bad_id_token_is_refused_at_the_callback(
    broker: Broker, client: httpx.AsyncClient, idp: FakeProvider
) -> None:
    started = await start_device(client)
    url = await _start(client, str(started["user_code"]))
    idp.claims = {"aud": "another-client"}
    page = await _callback(client, idp, url, "alice")
    assert page.status_code == 401 and "for another client" in page.text
    assert audit_rows(broker, "login.failure")[-1]["details"]["reason"] == "wrong_audience"
    assert not [p for p in identity.list_principals(broker) if p.name == "alice"]


async def test_a_provider_that_is_down_is_a_503_page(
    broker: Broker, client: httpx.AsyncClient, idp: FakeProvider
) -> None:
    started = await start_device(client)
    idp.down = True
    csrf = await DevicePage(client).open()
    page = await client.post("/device/oidc/idp", data={"csrf_token": csrf, "user_code": started["user_code"]})
    assert page.status_code == 503 and "Signing in with Example IdP is unavailable" in page.text
    assert audit_rows(broker, "login.failure")[-1]["details"]["reason"] == "provider_unavailable"


async def test_a_start_needs_csrf_and_a_good_code(broker: Broker, client: httpx.AsyncClient) -> None:
    await DevicePage(client).open()
    assert (await client.post("/device/oidc/idp", data={"user_code": "BCDF-GHJK"})).status_code == 403
    csrf = await DevicePage(client).open()
    bad = await client.post("/device/oidc/idp", data={"csrf_token": csrf, "user_code": "BCDF-GHJK"})
    assert bad.status_code == 400 and "not valid or has expired" in bad.text
    unknown = await client.post("/device/oidc/nope", data={"csrf_token": csrf, "user_code": "BCDF-GHJK"})
    assert unknown.status_code == 404


async def test_a_password_user_of_the_same_name_is_not_taken_over(
    broker: Broker, client: httpx.AsyncClient, idp: FakeProvider
) -> None:
    identity.create_user(broker, "alice", ["sre"], PASSWORD, actor="admin:test")
    started = await start_device(client)
    page = await _callback(client, idp, await _start(client, str(started["user_code"])), "alice")
    assert page.status_code == 401
    assert "access-broker users link alice --provider idp --subject sub-alice" in page.text
    assert _principal(broker, "alice").groups == ("sre",)


async def test_a_disabled_upstream_user_cannot_sign_in(
    broker: Broker, client: httpx.AsyncClient, idp: FakeProvider
) -> None:
    await _device_login(client, idp)
    identity.disable_principal(broker, "alice", "admin:test")
    started = await start_device(client)
    page = await _callback(client, idp, await _start(client, str(started["user_code"])), "alice")
    assert page.status_code == 401 and "disabled" in page.text


async def test_callback_failures_are_rate_limited_per_address(
    broker: Broker, client: httpx.AsyncClient
) -> None:
    for _ in range(10):
        assert (await client.get("/oidc/idp/callback", params={"state": "x"})).status_code == 400
    assert (await client.get("/oidc/idp/callback", params={"state": "x"})).status_code == 429


async def test_a_second_factor_at_the_provider_reaches_the_session(
    broker: Broker, client: httpx.AsyncClient, idp: FakeProvider
) -> None:
    tokens = await _device_login(client, idp)
    assert authenticate(broker, str(tokens["access_token"])).mfa_at is None
    idp.claims = {"amr": ["pwd", "otp"]}
    tokens = await _device_login(client, idp)
    assert authenticate(broker, str(tokens["access_token"])).mfa_at is not None
    assert audit_rows(broker, "login.success")[-1]["details"]["mfa"] is True


async def test_claims_only_in_userinfo_are_read_from_there(
    broker: Broker, client: httpx.AsyncClient, idp: FakeProvider
) -> None:
    """oidc-provider's default: the ID token carries sub and the protocol claims, userinfo the rest."""
    idp.claims = {"groups": None, "preferred_username": None, "email": None, "email_verified": None}
    tokens = await _device_login(client, idp)
    assert authenticate(broker, str(tokens["access_token"])).groups == ("eng",)
    idp.groups["alice"] = ["ops"]
    renewed = refresh(broker, str(tokens["refresh_token"]), "access-cli")
    assert authenticate(broker, renewed.access_token).groups == ("ops",)
    idp.userinfo_sub = "sub-mallory"
    with pytest.raises(OAuthError, match="your sign-in with Example IdP ended"):
        refresh(broker, str(renewed.refresh_token), "access-cli")


async def test_a_provider_that_takes_the_secret_only_in_the_body_gets_it_there(
    broker: Broker, client: httpx.AsyncClient, idp: FakeProvider
) -> None:
    idp.discovery["token_endpoint_auth_methods_supported"] = ["client_secret_post"]
    tokens = await _device_login(client, idp)
    assert authenticate(broker, str(tokens["access_token"])).name == "alice"


async def test_a_provider_without_pkce_s256_is_not_used(
    broker: Broker, client: httpx.AsyncClient, idp: FakeProvider
) -> None:
    idp.discovery["code_challenge_methods_supported"] = ["plain"]
    started = await start_device(client)
    csrf = await DevicePage(client).open()
    page = await client.post("/device/oidc/idp", data={"csrf_token": csrf, "user_code": started["user_code"]})
    assert page.status_code == 503
    assert "S256" in audit_rows(broker, "login.failure")[-1]["details"]["error"]


async def test_an_inbox_start_needs_csrf(broker: Broker, client: httpx.AsyncClient) -> None:
    await client.get("/inbox")
    refused = await client.post("/inbox/oidc/idp", data={"csrf_token": "x" * 43})
    assert refused.status_code == 403 and "access_oidc" not in refused.headers.get("set-cookie", "")


async def test_a_provider_down_at_the_callback_is_a_503_and_signs_nobody_in(
    broker: Broker, client: httpx.AsyncClient, idp: FakeProvider
) -> None:
    started = await start_device(client)
    url = await _start(client, str(started["user_code"]))
    code, state = idp.authorize(url, "alice")
    idp.down = True
    page = await client.get("/oidc/idp/callback", params={"code": code, "state": state})
    assert page.status_code == 503 and "unavailable" in page.text
    assert not [p for p in identity.list_principals(broker) if p.name == "alice"]
    assert (await poll(client, str(started["device_code"]))).json()["error"] == "authorization_pending"


async def test_a_step_up_login_makes_the_provider_authenticate_again_and_needs_its_second_factor(
    broker: Broker, client: httpx.AsyncClient, idp: FakeProvider
) -> None:
    """``access login --mfa`` through a provider: the authorization request asks for a fresh
    authentication (prompt=login, max_age=0); an ID token without a second factor in its amr
    is refused (audited, nothing to approve), one with it goes on to Approve."""
    response = await client.post(
        "/oauth/device_authorization",
        data={"client_id": "access-cli", "client_host": "laptop", "mfa": "true"},
    )
    started = response.json()
    url = await _start(client, str(started["user_code"]))
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert (query["prompt"], query["max_age"]) == ("login", "0")

    refused = await _callback(client, idp, url, "alice")
    assert refused.status_code == 403 and "says none was used" in refused.text
    assert audit_rows(broker, "login.failure")[-1]["details"]["reason"] == "mfa_unavailable"

    idp.claims = {"amr": ["pwd", "otp"]}
    confirm = await _callback(client, idp, await _start(client, str(started["user_code"])), "alice")
    assert confirm.status_code == 200, confirm.text
    assert (await DevicePage(client).confirm(confirm.text)).status_code == 200
    tokens = (await poll(client, str(started["device_code"]))).json()
    assert authenticate(broker, str(tokens["access_token"])).mfa_at is not None

    plain = await start_device(client)  # an ordinary login asks the provider for nothing more
    assert "prompt=" not in await _start(client, str(plain["user_code"]))
