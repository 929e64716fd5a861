"""Factories for identity, session and device-login tests (on top of tests/conftest.py's brokers)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from access.broker.auth import identity
from access.broker.auth.sessions import TokenSet, start_session
from access.broker.runtime import Broker
from access.broker.store.tables import audit_log
from tests.fakes.dbproxy import FreezableProxy, freezable_proxy

PASSWORD = "correct horse battery staple"
BASE_URL = "https://broker.test"


@pytest.fixture
def broker(make_broker: Callable[..., Broker]) -> Broker:
    """An in-process broker on a fresh SQLite database, the default test policy and the fake clock."""
    return make_broker()


@pytest.fixture
def any_broker(make_broker: Callable[..., Broker], db_url: str) -> Broker:
    """The same test on SQLite and PostgreSQL (fresh database each)."""
    return make_broker(db_url=db_url)


@pytest.fixture
def broker_settings() -> dict[str, Any]:
    """Settings the tunnel tests' broker (``setup``) is made with: modules override this."""
    return {}


@pytest.fixture
def broker_db_url() -> str | None:
    """The database ``tunnel.test_protocol.setup`` serves its broker on (None: a fresh SQLite
    file); a test module overrides it to use another."""
    return None


@pytest.fixture
def stream_port() -> int | None:
    """The target of ``svc-stream`` in the tunnel tests' policy: modules override this with a
    server (default: none listening)."""
    return None


@pytest.fixture
def proxy(pg_url: str) -> Iterator[FreezableProxy]:
    """A freezable proxy (tests/fakes/dbproxy.py) in front of this test's PostgreSQL database."""
    url = sa.engine.make_url(pg_url)
    with freezable_proxy(url.host or "127.0.0.1", url.port or 5432) as running:
        yield running


# The short database bounds of a broker behind ``proxy``: a frozen database is found in seconds.
PROXIED_BOUNDS: dict[str, float] = {
    "db_statement_timeout": 1.0,
    "db_connect_timeout": 2.0,
    "db_lock_timeout": 0.5,
    "db_pool_timeout": 1.0,
}


@pytest.fixture
def make_proxied_broker(
    make_broker: Callable[..., Broker], pg_url: str, proxy: FreezableProxy
) -> Callable[..., Broker]:
    """``make_broker`` for a broker reaching this test's PostgreSQL through ``proxy``, with
    ``PROXIED_BOUNDS`` (any of them, and any other setting, given as keywords)."""

    def make(**settings: Any) -> Broker:
        through = sa.engine.make_url(pg_url).set(host="127.0.0.1", port=proxy.port)
        return make_broker(
            db_url=through.render_as_string(hide_password=False), **{**PROXIED_BOUNDS, **settings}
        )

    return make


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(broker: Broker) -> AsyncIterator[httpx.AsyncClient]:
    """The broker's ASGI app over an in-process transport, as if reached at https://broker.test."""
    from access.broker.app import create_app

    transport = httpx.ASGITransport(app=create_app(broker, background=False), client=("192.0.2.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
        yield http


def add_user(
    broker: Broker, name: str = "alice", groups: tuple[str, ...] = ("sre",)
) -> identity.PrincipalRecord:
    identity.create_user(broker, name, groups, PASSWORD, actor="admin:test")
    return next(p for p in identity.list_principals(broker) if p.name == name)


def login(broker: Broker, user: identity.PrincipalRecord, client_id: str = "access-cli") -> TokenSet:
    """Open a session for ``user`` directly (what a completed device login does)."""
    with broker.transaction() as conn:
        return start_session(conn, broker, user, client_id)


def audit_actions(broker: Broker) -> list[str]:
    with broker.transaction() as conn:
        return list(conn.execute(sa.select(audit_log.c.action).order_by(audit_log.c.seq)).scalars())


def audit_rows(broker: Broker, action: str) -> list[dict[str, Any]]:
    with broker.transaction() as conn:
        rows = conn.execute(
            sa.select(audit_log).where(audit_log.c.action == action).order_by(audit_log.c.seq)
        )
        return [dict(row._mapping, details=json.loads(row.details)) for row in rows]


def ledger_text(broker: Broker) -> str:
    """Everything in the ledger as text, to assert that no secret ever lands there."""
    with broker.transaction() as conn:
        return "\n".join(
            f"{r.actor} {r.action} {r.target} {r.details}" for r in conn.execute(sa.select(audit_log))
        )


def assert_page_headers(response: httpx.Response) -> None:
    """An HTML page with the headers every page of the broker carries (``web.render``)."""
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["x-frame-options"] == "DENY"
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "form-action 'self'" in csp and "script-src" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"


_CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
_CONSENT_FIELD = re.compile(r'name="consent_token" value="([^"]+)"')


@dataclass
class DevicePage:
    """Drives /device the way a browser without JavaScript does."""

    client: httpx.AsyncClient

    async def open(self, user_code: str = "") -> str:
        response = await self.client.get("/device", params={"user_code": user_code} if user_code else None)
        assert response.status_code == 200
        return self.csrf(response.text)

    @staticmethod
    def csrf(html: str) -> str:
        match = _CSRF_FIELD.search(html)
        assert match, html
        return match.group(1)

    @staticmethod
    def consent(html: str) -> str:
        match = _CONSENT_FIELD.search(html)
        assert match, html
        return match.group(1)

    async def sign_in(
        self, user_code: str, username: str = "alice", password: str = PASSWORD, otp: str = ""
    ) -> httpx.Response:
        csrf = await self.open()
        data = {"csrf_token": csrf, "user_code": user_code, "username": username, "password": password}
        return await self.client.post("/device", data={**data, "otp": otp})

    async def confirm(self, html: str, action: str = "approve") -> httpx.Response:
        data = {"csrf_token": self.csrf(html), "consent_token": self.consent(html), "action": action}
        return await self.client.post("/device/confirm", data=data)

    async def approve(
        self, user_code: str, username: str = "alice", action: str = "approve"
    ) -> httpx.Response:
        page = await self.sign_in(user_code, username)
        assert page.status_code == 200, page.text
        done = await self.confirm(page.text, action)
        assert done.status_code == 200, done.text
        return done


@pytest.fixture
def page(client: httpx.AsyncClient) -> DevicePage:
    return DevicePage(client)


async def start_device(client: httpx.AsyncClient, host: str = "laptop-7") -> dict[str, Any]:
    response = await client.post(
        "/oauth/device_authorization", data={"client_id": "access-cli", "client_host": host}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def poll(client: httpx.AsyncClient, device_code: str) -> httpx.Response:
    return await client.post(
        "/oauth/token",
        data={
            "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
            "device_code": device_code,
            "client_id": "access-cli",
        },
    )


@dataclass
class InboxPage:
    """Drives /inbox the way a browser without JavaScript does (cookies kept by ``client``)."""

    client: httpx.AsyncClient

    async def open(self) -> httpx.Response:
        response = await self.client.get("/inbox")
        assert response.status_code == 200, response.text
        return response

    async def sign_in(
        self, username: str = "alice", password: str = PASSWORD, otp: str = ""
    ) -> httpx.Response:
        """POST the sign-in form (the answer is not followed: 303 on success)."""
        csrf = DevicePage.csrf((await self.open()).text)
        return await self.client.post(
            "/inbox", data={"csrf_token": csrf, "username": username, "password": password, "otp": otp}
        )

    async def signed_in(self, username: str = "alice") -> httpx.Response:
        """Sign in and follow the redirect to the list."""
        response = await self.sign_in(username)
        assert response.status_code == 303, response.text
        return await self.open()

    async def decide(self, grant_id: str, action: str, comment: str = "") -> httpx.Response:
        """Press Approve or Deny on ``grant_id`` with ``comment`` (the answer is not followed)."""
        csrf = DevicePage.csrf((await self.open()).text)
        return await self.client.post(
            f"/inbox/{grant_id}/{action}", data={"csrf_token": csrf, "comment": comment}
        )


@pytest.fixture
def inbox(client: httpx.AsyncClient) -> InboxPage:
    return InboxPage(client)
