"""The registry's expiry timers follow the grant's current expiry, as ``TunnelWatch`` reads it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import pytest

from access.broker import grants
from access.broker.auth.principal import AuthContext
from access.broker.runtime import Broker
from access.broker.store.tables import grants as grants_table
from access.broker.store.tables import principals
from access.broker.tunnel.registry import TunnelWatch, registry_for
from access.shared.models import GrantRequest

# How far off loop.time() a timer may be from where the test expects it (the test's own steps).
SLACK = 0.1


@dataclass(eq=False)
class FakeTunnel:
    """A live tunnel as the registry sees it: it records its cut and when it came."""

    grant_id: str
    principal_id: str | None
    cuts: list[tuple[str, float]] = field(default_factory=list)
    cut_event: asyncio.Event = field(default_factory=asyncio.Event)

    def cut(self, why: str) -> None:
        self.cuts.append((why, asyncio.get_running_loop().time()))
        self.cut_event.set()

    def heartbeat(self, ticks_to_timeout: int) -> None:
        pass


@pytest.fixture
def broker(make_broker: Callable[..., Broker], db_url: str) -> Broker:
    return make_broker(db_url=db_url)


def live_grant(broker: Broker, ttl: str = "30m") -> grants.TunnelGrant:
    principal_id = str(uuid.uuid4())
    with broker.transaction() as conn:
        conn.execute(
            principals.insert().values(
                id=principal_id, name="alice", kind="user", groups=["sre"], created_at=broker.clock.now()
            )
        )
    ctx = AuthContext(
        principal_id=principal_id,
        name="alice",
        kind="user",
        groups=("sre",),
        session_id="s-test",
        token_id="t-test",
        expires_at=broker.clock.now() + timedelta(minutes=15),
    )
    grant = grants.request_grant(broker, ctx, GrantRequest(service="svc-payments", scope="read", ttl=ttl))
    return grants.open_for_tunnel(broker, ctx, grant.id)


def set_expiry(broker: Broker, grant_id: str, expires_at: datetime) -> None:
    """What an extension (or a shortening) does to the store."""
    with broker.transaction() as conn:
        conn.execute(grants_table.update().where(grants_table.c.id == grant_id).values(expires_at=expires_at))


def test_an_earlier_expiry_moves_the_cut_earlier(broker: Broker) -> None:
    grant = live_grant(broker, ttl="30m")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        registry = registry_for(broker)
        tunnel = FakeTunnel(grant.grant_id, grant.principal_id)
        registry.add(tunnel)
        registry.schedule_expiry(grant)
        old = registry.expiry_timer(grant.grant_id)
        assert old is not None and old.when() > loop.time() + 1700
        # The fake clock stands still: the new expiry is 0.3 s of loop time away.
        set_expiry(broker, grant.grant_id, broker.clock.now() + timedelta(seconds=0.3))
        started = loop.time()
        await TunnelWatch(broker).tick()
        new = registry.expiry_timer(grant.grant_id)
        assert old.cancelled() and new is not None and new is not old
        assert started + 0.3 - SLACK <= new.when() <= started + 0.3 + SLACK
        await asyncio.wait_for(tunnel.cut_event.wait(), 5)
        [(why, at)] = tunnel.cuts
        assert why == "expired"
        assert at >= started + 0.3 - SLACK
        registry.remove(tunnel)

    asyncio.run(main())


def test_a_later_expiry_moves_the_cut_later(broker: Broker) -> None:
    grant = live_grant(broker, ttl="30m")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        registry = registry_for(broker)
        tunnel = FakeTunnel(grant.grant_id, grant.principal_id)
        registry.add(tunnel)
        # The tunnel was opened when the grant had 0.2 s left ...
        registry.schedule_expiry(replace(grant, expires_at=broker.clock.now() + timedelta(seconds=0.2)))
        old = registry.expiry_timer(grant.grant_id)
        assert old is not None and old.when() <= loop.time() + 0.2 + SLACK
        # ... and the store says 30 minutes (it was extended): the timer must not cut at 0.2 s.
        await TunnelWatch(broker).tick()
        new = registry.expiry_timer(grant.grant_id)
        assert old.cancelled() and new is not None and not new.cancelled()
        assert new.when() > loop.time() + 1700
        # The old timer's moment passes; nothing is cut. (A bounded wait past it, not a sync.)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(tunnel.cut_event.wait(), 0.4)
        assert tunnel.cuts == []
        # The same expiry read again leaves the timer alone.
        await TunnelWatch(broker).tick()
        assert registry.expiry_timer(grant.grant_id) is new
        registry.remove(tunnel)
        assert registry.expiry_timer(grant.grant_id) is None and new.cancelled()

    asyncio.run(main())


def test_a_second_tunnel_of_the_same_grant_keeps_one_timer(broker: Broker) -> None:
    grant = live_grant(broker)

    async def main() -> None:
        registry = registry_for(broker)
        first, second = FakeTunnel(grant.grant_id, None), FakeTunnel(grant.grant_id, None)
        registry.add(first)
        registry.schedule_expiry(grant)
        timer = registry.expiry_timer(grant.grant_id)
        registry.add(second)
        registry.schedule_expiry(grant)
        assert registry.expiry_timer(grant.grant_id) is timer
        assert timer is not None and not timer.cancelled()
        registry.remove(first)
        assert registry.expiry_timer(grant.grant_id) is timer  # the grant still has a live tunnel
        registry.remove(second)
        assert timer.cancelled()

    asyncio.run(main())
