"""Behind a load balancer: the client address comes from X-Forwarded-For, but only from a
trusted proxy, and one client's failures behind it lock out nobody else (issue 9)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from access.broker.runtime import Broker
from tests.broker.conftest import BASE_URL, PASSWORD, DevicePage, add_user, audit_rows

pytestmark = pytest.mark.anyio

PROXY = "10.0.0.7"  # the load balancer: every request reaches the broker from here
ATTACKER = "203.0.113.66"
VICTIM = "198.51.100.5"


@pytest.fixture
def proxied_broker(make_broker: Callable[..., Broker]) -> Broker:
    return make_broker(trusted_proxies="10.0.0.0/8", login_failures_per_address=2)


@pytest.fixture
async def lb(proxied_broker: Broker) -> AsyncIterator[httpx.AsyncClient]:
    """The broker's app as reached through the load balancer at ``PROXY``."""
    from access.broker.app import create_app

    app = create_app(proxied_broker, background=False)
    transport = httpx.ASGITransport(app=app, client=(PROXY, 50000))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
        yield http


def _via(client: str) -> dict[str, str]:
    # What the client itself claims (left) is never believed; the proxy appends the peer it saw.
    return {"x-forwarded-for": f"192.0.2.250, {client}"}


async def _start(http: httpx.AsyncClient, client: str) -> str:
    response = await http.post(
        "/oauth/device_authorization",
        data={"client_id": "access-cli", "client_host": "laptop-7"},
        headers=_via(client),
    )
    assert response.status_code == 200, response.text
    code: str = response.json()["user_code"]
    return code


async def _sign_in(
    http: httpx.AsyncClient, client: str, code: str, username: str, password: str
) -> httpx.Response:
    csrf = await DevicePage(http).open()
    return await http.post(
        "/device",
        data={"csrf_token": csrf, "user_code": code, "username": username, "password": password},
        headers=_via(client),
    )


async def test_one_client_behind_the_proxy_cannot_lock_out_another(
    lb: httpx.AsyncClient, proxied_broker: Broker
) -> None:
    add_user(proxied_broker)
    attackers_code = await _start(lb, ATTACKER)
    for _ in range(2):
        wrong = await _sign_in(lb, ATTACKER, attackers_code, "alice", "not-her-password")
        assert wrong.status_code == 401
    locked = await _sign_in(lb, ATTACKER, attackers_code, "alice", PASSWORD)
    assert locked.status_code == 429  # the attacker's address is locked out...

    code = await _start(lb, VICTIM)
    page = await _sign_in(lb, VICTIM, code, "alice", PASSWORD)

    assert page.status_code == 200, page.text  # ...alice at hers is not
    assert VICTIM in page.text  # and the page shows the CLI's address, not the proxy's
    assert PROXY not in page.text
    failure = audit_rows(proxied_broker, "login.failure")[0]
    assert failure["details"]["ip"] == ATTACKER
    [success] = audit_rows(proxied_broker, "login.success")
    assert success["details"]["ip"] == VICTIM
    started = audit_rows(proxied_broker, "device.request")
    assert [e["details"]["ip"] for e in started] == [ATTACKER, VICTIM]


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(make_broker: Callable[..., Broker]) -> None:
    # A broker that trusts no proxy: a client cannot pick its own address.
    from access.broker.app import create_app

    broker = make_broker(login_failures_per_address=2)
    transport = httpx.ASGITransport(app=create_app(broker, background=False), client=("192.0.2.7", 1))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        await _forwarded_for_is_ignored(client, broker)


async def _forwarded_for_is_ignored(client: httpx.AsyncClient, broker: Broker) -> None:
    add_user(broker)
    code = await _start(client, VICTIM)
    for _ in range(2):
        wrong = await _sign_in(client, f"203.0.113.{_}", code, "alice", "not-her-password")
        assert wrong.status_code == 401
    assert (await _sign_in(client, VICTIM, code, "alice", PASSWORD)).status_code == 429
    assert {e["details"]["ip"] for e in audit_rows(broker, "login.failure")} == {"192.0.2.7"}
