"""The OAuth endpoints over HTTP (in-process ASGI): device login, refresh, client credentials, revoke."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from access.broker.auth import identity
from access.broker.clock import FakeClock
from access.broker.runtime import Broker
from tests.broker.conftest import BASE_URL, DevicePage, add_user, audit_actions, poll, start_device

pytestmark = pytest.mark.anyio


def _oauth_error(response: httpx.Response, error: str, status: int = 400) -> None:
    assert response.status_code == status, response.text
    # RFC 6749 sections 5.1/5.2: token endpoint answers, errors included, are never cached.
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    assert body["error"] == error, body
    assert isinstance(body["error_description"], str) and body["error_description"]
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Basic")


async def _device_login(client: httpx.AsyncClient, page: DevicePage, fake_clock: FakeClock) -> dict[str, Any]:
    started = await start_device(client)
    await page.approve(started["user_code"])
    response = await poll(client, started["device_code"])
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_metadata(client: httpx.AsyncClient) -> None:
    response = await client.get("/.well-known/oauth-authorization-server")
    assert response.status_code == 200
    meta = response.json()
    assert meta["issuer"] == BASE_URL
    assert meta["token_endpoint"] == f"{BASE_URL}/oauth/token"
    assert meta["device_authorization_endpoint"] == f"{BASE_URL}/oauth/device_authorization"
    assert meta["revocation_endpoint"] == f"{BASE_URL}/oauth/revoke"
    assert "urn:ietf:params:oauth:grant-type:device_code" in meta["grant_types_supported"]


async def test_device_authorization_response(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/oauth/device_authorization", data={"client_id": "access-cli", "client_host": "laptop-7"}
    )
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {
        "device_code",
        "user_code",
        "verification_uri",
        "verification_uri_complete",
        "expires_in",
        "interval",
    }
    assert body["verification_uri"] == f"{BASE_URL}/device"


@pytest.mark.parametrize(
    ("kwargs", "error", "status"),
    [
        ({"data": {}}, "invalid_request", 400),
        ({"data": {"client_id": "evil"}}, "invalid_client", 401),
        ({"data": {"client_id": "access-cli", "client_host": "<script>"}}, "invalid_request", 400),
        ({"json": {"client_id": "access-cli"}}, "invalid_request", 400),
        (
            {
                "content": "client_id=access-cli&client_id=x",
                "headers": {"content-type": "application/x-www-form-urlencoded"},
            },
            "invalid_request",
            400,
        ),
    ],
)
async def test_device_authorization_bad_input(
    client: httpx.AsyncClient, broker: Broker, kwargs: dict[str, Any], error: str, status: int
) -> None:
    _oauth_error(await client.post("/oauth/device_authorization", **kwargs), error, status)
    assert audit_actions(broker) == []


async def test_full_device_login(
    client: httpx.AsyncClient, broker: Broker, page: DevicePage, fake_clock: FakeClock
) -> None:
    add_user(broker)
    started = await start_device(client)
    _oauth_error(await poll(client, started["device_code"]), "authorization_pending")
    _oauth_error(await poll(client, started["device_code"]), "slow_down")

    await page.approve(started["user_code"])
    fake_clock.advance(started["interval"] + 5)
    response = await poll(client, started["device_code"])

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    tokens = response.json()
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == broker.settings.access_token_ttl
    assert tokens["refresh_token"] and "scope" not in tokens
    whoami = await client.get("/v1/whoami", headers={"authorization": f"Bearer {tokens['access_token']}"})
    assert whoami.status_code == 200
    assert whoami.json()["name"] == "alice"
    # Single use.
    _oauth_error(await poll(client, started["device_code"]), "invalid_grant")


async def test_device_login_denied(client: httpx.AsyncClient, broker: Broker, page: DevicePage) -> None:
    add_user(broker)
    started = await start_device(client)
    await page.approve(started["user_code"], action="deny")
    _oauth_error(await poll(client, started["device_code"]), "access_denied")


async def test_device_login_expired(client: httpx.AsyncClient, fake_clock: FakeClock) -> None:
    started = await start_device(client)
    fake_clock.advance(started["expires_in"])
    _oauth_error(await poll(client, started["device_code"]), "expired_token")


async def test_refresh_rotation_and_reuse_over_http(
    client: httpx.AsyncClient, broker: Broker, page: DevicePage, fake_clock: FakeClock
) -> None:
    add_user(broker)
    first = await _device_login(client, page, fake_clock)

    async def refresh(token: str) -> httpx.Response:
        data = {"grant_type": "refresh_token", "refresh_token": token, "client_id": "access-cli"}
        return await client.post("/oauth/token", data=data)

    rotated = await refresh(first["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()
    assert second["refresh_token"] != first["refresh_token"]

    _oauth_error(await refresh(first["refresh_token"]), "invalid_grant")
    _oauth_error(await refresh(second["refresh_token"]), "invalid_grant")
    whoami = await client.get("/v1/whoami", headers={"authorization": f"Bearer {second['access_token']}"})
    assert whoami.status_code == 401
    assert whoami.json()["error"]["code"] == "unauthenticated"
    assert "token.refresh_reuse" in audit_actions(broker)


async def test_client_credentials_in_form_and_basic(client: httpx.AsyncClient, broker: Broker) -> None:
    client_id, secret = identity.create_service_account(broker, "deploy-bot", ["ci"])

    in_form = await client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    in_header = await client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers={"authorization": f"Basic {basic}"}
    )

    for response in (in_form, in_header):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["refresh_token"]  # service accounts refresh too, within their session
        who = await client.get("/v1/whoami", headers={"authorization": f"Bearer {body['access_token']}"})
        assert who.json()["kind"] == "service_account"


async def test_client_credentials_failures(client: httpx.AsyncClient, broker: Broker) -> None:
    client_id, secret = identity.create_service_account(broker, "deploy-bot", ["ci"])
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    grant = {"grant_type": "client_credentials"}

    wrong = await client.post("/oauth/token", data={**grant, "client_id": client_id, "client_secret": "nope"})
    _oauth_error(wrong, "invalid_client", 401)
    missing = await client.post("/oauth/token", data={**grant, "client_id": client_id})
    _oauth_error(missing, "invalid_client", 401)
    both = await client.post(
        "/oauth/token",
        data={**grant, "client_id": client_id, "client_secret": secret},
        headers={"authorization": f"Basic {basic}"},
    )
    _oauth_error(both, "invalid_request")
    garbled = await client.post("/oauth/token", data=grant, headers={"authorization": "Basic !!!"})
    _oauth_error(garbled, "invalid_client", 401)


async def test_token_endpoint_bad_requests(client: httpx.AsyncClient) -> None:
    _oauth_error(await client.post("/oauth/token", data={}), "invalid_request")
    _oauth_error(await client.post("/oauth/token", data={"grant_type": "password"}), "unsupported_grant_type")
    _oauth_error(await client.post("/oauth/token", data={"grant_type": "refresh_token"}), "invalid_request")
    too_long = {"grant_type": "refresh_token", "refresh_token": "x" * 5000}
    _oauth_error(await client.post("/oauth/token", data=too_long), "invalid_request")


async def test_an_oversized_form_is_an_oauth_error_and_changes_nothing(
    client: httpx.AsyncClient, broker: Broker
) -> None:
    # Over the app's body limit, without a Content-Length header to refuse it early.
    async def chunks() -> AsyncIterator[bytes]:
        yield b"client_id=access-cli&client_host="
        for _ in range(20):
            yield b"a" * 10_000

    response = await client.post(
        "/oauth/device_authorization",
        content=chunks(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    _oauth_error(response, "invalid_request", 413)
    assert audit_actions(broker) == []


async def test_revoke_endpoint(
    client: httpx.AsyncClient, broker: Broker, page: DevicePage, fake_clock: FakeClock
) -> None:
    add_user(broker)
    tokens = await _device_login(client, page, fake_clock)

    response = await client.post("/oauth/revoke", data={"token": tokens["refresh_token"]})
    assert response.status_code == 200
    again = await client.post("/oauth/revoke", data={"token": "unknown"})
    assert again.status_code == 200  # RFC 7009: unknown tokens are not an error
    who = await client.get("/v1/whoami", headers={"authorization": f"Bearer {tokens['access_token']}"})
    assert who.status_code == 401
    _oauth_error(await client.post("/oauth/revoke", data={}), "invalid_request")


async def test_whoami_and_logout(
    client: httpx.AsyncClient, broker: Broker, page: DevicePage, fake_clock: FakeClock
) -> None:
    add_user(broker, "alice", ("sre",))
    tokens = await _device_login(client, page, fake_clock)
    auth = {"authorization": f"Bearer {tokens['access_token']}"}

    who = (await client.get("/v1/whoami", headers=auth)).json()
    assert (who["name"], who["kind"], who["groups"]) == ("alice", "user", ["sre"])
    assert who["can_read_audit"] is True  # the default test policy lets sre read the audit log
    assert who["session_id"] and who["token_expires_at"]

    out = await client.post("/v1/logout", headers=auth)
    assert out.status_code == 200
    assert (await client.get("/v1/whoami", headers=auth)).status_code == 401
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    _oauth_error(await client.post("/oauth/token", data=refresh), "invalid_grant")
    assert "logout" in audit_actions(broker)


async def test_whoami_for_someone_who_may_not_read_the_audit_log(
    client: httpx.AsyncClient, broker: Broker
) -> None:
    client_id, secret = identity.create_service_account(broker, "deploy-bot", ["ci"])
    data = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    token = (await client.post("/oauth/token", data=data)).json()["access_token"]
    who = (await client.get("/v1/whoami", headers={"authorization": f"Bearer {token}"})).json()
    assert who["can_read_audit"] is False


async def test_whoami_without_a_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/whoami")
    assert response.status_code == 401
    assert response.json()["error"]["hint"] == "run `access login`"
