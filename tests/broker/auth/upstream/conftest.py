"""A broker that trusts the in-process provider of tests/fakes/oidcmock.py (over MockTransport)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from access.broker.auth.jwks import KeyCache
from access.broker.clock import FakeClock
from access.broker.runtime import Broker
from tests.fakes.oidcmock import CLIENT_SECRET, FakeProvider, provider_settings


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDP_SECRET", CLIENT_SECRET)


@pytest.fixture
def idp(fake_clock: FakeClock) -> FakeProvider:
    return FakeProvider(now=lambda: fake_clock.now().timestamp())


@pytest.fixture
def provider_changes() -> dict[str, Any]:
    """Changes to the provider's settings: modules or tests override this."""
    return {}


@pytest.fixture
def broker_db() -> str | None:
    """The broker's database (None: a fresh SQLite file); modules that touch the store override
    it with ``db_url`` to run on PostgreSQL too."""
    return None


@pytest.fixture
def broker(
    make_broker: Callable[..., Broker],
    idp: FakeProvider,
    provider_changes: dict[str, Any],
    broker_db: str | None,
) -> Broker:
    made = make_broker(db_url=broker_db, oidc_providers=[provider_settings(**provider_changes)])
    made.oidc_keys = KeyCache(transport=idp.transport, refetch_after=made.oidc_keys.refetch_after)
    return made


@pytest.fixture
async def client(broker: Broker) -> AsyncIterator[httpx.AsyncClient]:
    from access.broker.app import create_app

    transport = httpx.ASGITransport(app=create_app(broker, background=False), client=("192.0.2.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="https://broker.test") as http:
        yield http
