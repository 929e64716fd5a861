"""An extension moves the live tunnels' cut and drops nothing: at once on the replica that served
it (``GrantExtended``), through ``TunnelWatch`` on another. Several grants of the same service and
scope are cut each on its own."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

import pytest

from access.broker import grants
from access.broker.auth.principal import AuthContext
from access.broker.runtime import Broker
from access.broker.tunnel.registry import TunnelWatch, registry_for
from access.shared.models import ExtendRequest, GrantRequest
from tests.broker.grants.test_grants import add_principal
from tests.broker.tunnel.test_registry import SLACK, FakeTunnel, set_expiry


@pytest.fixture
def broker(make_broker: Callable[..., Broker], db_url: str) -> Broker:
    return make_broker(db_url=db_url)


def issue(broker: Broker, who: AuthContext, ttl: str = "10m") -> grants.TunnelGrant:
    """A grant of ``who`` on svc-payments (read), checked for the tunnel as a live one is."""
    grant = grants.request_grant(broker, who, GrantRequest(service="svc-payments", scope="read", ttl=ttl))
    return grants.open_for_tunnel(broker, who, grant.id)


def test_an_extension_here_moves_the_cut_at_once_and_cuts_nothing(broker: Broker) -> None:
    alice = add_principal(broker, "alice")
    grant = issue(broker, alice)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        registry = registry_for(broker)
        tunnel = FakeTunnel(grant.grant_id, grant.principal_id)
        registry.add(tunnel)
        # The fake clock stands still: the grant has 0.3 s of loop time left.
        set_expiry(broker, grant.grant_id, broker.clock.now() + timedelta(seconds=0.3))
        registry.schedule_expiry(replace(grant, expires_at=broker.clock.now() + timedelta(seconds=0.3)))
        old = registry.expiry_timer(grant.grant_id)
        assert old is not None
        started = loop.time()
        extended = grants.extend_grant(broker, alice, grant.grant_id, ExtendRequest(ttl="1s"))
        assert extended.expires_at == broker.clock.now() + timedelta(seconds=1)
        await asyncio.sleep(0)  # the event's call_soon_threadsafe runs on the loop
        new = registry.expiry_timer(grant.grant_id)
        assert old.cancelled() and new is not None and not new.cancelled()
        assert started + 1 - SLACK <= new.when() <= loop.time() + 1 + SLACK
        # Past the old expiry nothing is cut; at the new one the tunnel is (a bounded wait each).
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(tunnel.cut_event.wait(), 0.5)
        await asyncio.wait_for(tunnel.cut_event.wait(), 5)
        [(why, at)] = tunnel.cuts
        assert why == "expired" and at >= started + 1 - SLACK
        registry.remove(tunnel)

    asyncio.run(main())


def test_an_extension_on_another_replica_moves_the_cut_on_the_next_watch(
    make_broker: Callable[..., Broker], db_url: str
) -> None:
    here = make_broker(db_url=db_url)
    there = make_broker(db_url=db_url)  # another replica: same database, its own bus and registry
    alice = add_principal(here, "alice")
    grant = issue(here, alice)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        registry = registry_for(here)
        tunnel = FakeTunnel(grant.grant_id, grant.principal_id)
        registry.add(tunnel)
        registry.schedule_expiry(grant)
        old = registry.expiry_timer(grant.grant_id)
        assert old is not None and old.when() <= loop.time() + 600 + SLACK
        grants.extend_grant(there, alice, grant.grant_id, ExtendRequest(ttl="30m"))
        await asyncio.sleep(0)
        assert registry.expiry_timer(grant.grant_id) is old  # this replica has not heard yet
        await TunnelWatch(here).tick()
        new = registry.expiry_timer(grant.grant_id)
        assert old.cancelled() and new is not None and new.when() >= loop.time() + 1800 - SLACK
        assert tunnel.cuts == []
        registry.remove(tunnel)

    asyncio.run(main())


def test_grants_of_the_same_service_and_scope_are_cut_each_on_its_own(
    make_broker: Callable[..., Broker], db_url: str
) -> None:
    here = make_broker(db_url=db_url)
    there = make_broker(db_url=db_url)
    alice = add_principal(here, "alice")
    first, second, third = issue(here, alice), issue(here, alice), issue(here, alice)
    assert (first.service, first.scope) == (second.service, second.scope) == (third.service, third.scope)

    async def main() -> None:
        registry = registry_for(here)
        tunnels = {
            g.grant_id: [FakeTunnel(g.grant_id, g.principal_id), FakeTunnel(g.grant_id, g.principal_id)]
            for g in (first, second, third)
        }
        for grant in (first, second, third):
            for tunnel in tunnels[grant.grant_id]:
                registry.add(tunnel)
            registry.schedule_expiry(grant)
        # Revoked here: the event cuts the first grant's tunnels only.
        grants.revoke_grant(here, alice, first.grant_id)
        await asyncio.wait_for(asyncio.gather(*(t.cut_event.wait() for t in tunnels[first.grant_id])), 5)
        # Revoked on another replica: the watch cuts the second grant's tunnels only.
        grants.revoke_grant(there, alice, second.grant_id)
        await TunnelWatch(here).tick()
        await asyncio.wait_for(asyncio.gather(*(t.cut_event.wait() for t in tunnels[second.grant_id])), 5)
        # The third grant's tunnels, on the same service and scope, run on.
        await TunnelWatch(here).tick()
        await asyncio.sleep(0)
        assert [t.cuts for t in tunnels[third.grant_id]] == [[], []]
        # (A fake tunnel stays registered after its cut, so later watches cut it again.)
        for ended in (first, second):
            assert all(t.cuts and {why for why, _ in t.cuts} == {"revoked"} for t in tunnels[ended.grant_id])
        third_timer = registry.expiry_timer(third.grant_id)
        assert third_timer is not None and not third_timer.cancelled()
        for tunnel_list in tunnels.values():
            for tunnel in tunnel_list:
                registry.remove(tunnel)

    asyncio.run(main())
