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
    session_id: str | None = None
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


def live_grant(broker: Broker, ttl: str = "30m", name: str = "alice") -> grants.TunnelGrant:
    return live_grant_of(broker, ttl, name)[1]


def live_grant_of(
    broker: Broker, ttl: str = "30m", name: str = "alice"
) -> tuple[AuthContext, grants.TunnelGrant]:
    """A user ``name`` (no session row) and an active grant of theirs, opened for a tunnel."""
    principal_id = str(uuid.uuid4())
    with broker.transaction() as conn:
        conn.execute(
            principals.insert().values(
                id=principal_id, name=name, kind="user", groups=["sre"], created_at=broker.clock.now()
            )
        )
    ctx = AuthContext(
        principal_id=principal_id,
        name=name,
        kind="user",
        groups=("sre",),
        session_id="s-test",
        token_id="t-test",
        expires_at=broker.clock.now() + timedelta(minutes=15),
    )
    grant = grants.request_grant(broker, ctx, GrantRequest(service="svc-payments", scope="read", ttl=ttl))
    return ctx, grants.open_for_tunnel(broker, ctx, grant.id)


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
        ended = loop.time()  # the timer is set during the tick, whose database work may take a while
        new = registry.expiry_timer(grant.grant_id)
        assert old.cancelled() and new is not None and new is not old
        assert started + 0.3 - SLACK <= new.when() <= ended + 0.3 + SLACK
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


def test_a_grant_ended_locked_in_the_store_is_cut_as_locked(broker: Broker) -> None:
    """``access-broker users disable`` runs in another process: the watch sees a grant stored as
    revoked with ended_reason "locked", and must cut it as locked (4012), not revoked (4011)."""
    grant = live_grant(broker)
    with broker.transaction() as conn:
        conn.execute(
            grants_table.update()
            .where(grants_table.c.id == grant.grant_id)
            .values(state="revoked", ended_reason="locked", ended_at=broker.clock.now())
        )

    async def main() -> list[str]:
        registry = registry_for(broker)
        tunnel = FakeTunnel(grant.grant_id, grant.principal_id)
        registry.add(tunnel)
        await TunnelWatch(broker).tick()
        registry.remove(tunnel)
        return [why for why, _ in tunnel.cuts]

    assert asyncio.run(main()) == ["locked"]


@pytest.mark.parametrize(("reason", "why"), [("logout", "signed out"), ("principal_disabled", "locked")])
def test_a_session_revoked_in_the_store_cuts_its_tunnels(broker: Broker, reason: str, why: str) -> None:
    from access.broker.store import sessions

    grant = live_grant(broker)
    other = live_grant(broker, name="bob")  # another session's tunnel: untouched
    with broker.transaction() as conn:
        for session_id in ("s-live", "s-ended"):
            sessions.insert(
                conn,
                session_id=session_id,
                principal_id=grant.principal_id,
                client_id="access-cli",
                created_at=broker.clock.now(),
                expires_at=broker.clock.now() + timedelta(hours=1),
            )
        assert sessions.revoke(conn, "s-ended", broker.clock.now(), reason)

    async def main() -> tuple[list[str], list[str]]:
        registry = registry_for(broker)
        ended = FakeTunnel(grant.grant_id, grant.principal_id, session_id="s-ended")
        live = FakeTunnel(other.grant_id, other.principal_id, session_id="s-live")
        for tunnel in (ended, live):
            registry.add(tunnel)
            registry.add_session(tunnel)
        assert sorted(registry.session_ids()) == ["s-ended", "s-live"]
        await TunnelWatch(broker).tick()
        for tunnel in (ended, live):
            registry.remove(tunnel)
        assert registry.session_ids() == []
        return [w for w, _ in ended.cuts], [w for w, _ in live.cuts]

    assert asyncio.run(main()) == ([why], [])


def test_a_session_timer_cuts_at_the_sessions_end_and_goes_with_its_last_tunnel(
    make_broker: Callable[..., Broker],
) -> None:
    broker = make_broker()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        registry = registry_for(broker)
        ending = [FakeTunnel("g-1", "p-1", "s-ending"), FakeTunnel("g-2", "p-1", "s-ending")]
        kept = FakeTunnel("g-3", "p-1", "s-kept")
        for tunnel, ttl in ((ending[0], 0.3), (ending[1], 0.3), (kept, 0.3)):
            registry.add(tunnel)
            registry.add_session(tunnel, broker.clock.now() + timedelta(seconds=ttl))
        started = loop.time()
        timer = registry.session_timer("s-ending")
        assert timer is not None and timer.when() <= started + 0.3 + SLACK
        # The last tunnel of a session gone: its timer goes too (nothing left to cut).
        registry.remove(kept)
        assert registry.session_timer("s-kept") is None
        await asyncio.wait_for(asyncio.gather(*(t.cut_event.wait() for t in ending)), 5)
        assert [why for t in ending for why, _ in t.cuts] == ["session expired", "session expired"]
        assert all(at >= started + 0.3 - SLACK for t in ending for _, at in t.cuts)
        assert kept.cuts == []
        for tunnel in ending:
            registry.remove(tunnel)
        assert registry.session_timer("s-ending") is None

    asyncio.run(main())
