"""The issue's window, with the broker's real loops and clock: a grant's identity is gone and its
live session cut within 1 s of the end (revoke: the outbox is woken by the end, it does not wait
out its poll; expiry: the expiry loop's poll, then the woken outbox)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

from access.broker import grants
from access.broker.auth.principal import AuthContext
from access.broker.clock import SystemClock
from access.broker.events.outbox import OutboxLoop
from access.broker.grants import ExpiryLoop
from access.broker.identities.logins import identity_login
from access.broker.provision.common import wait_until
from access.broker.runtime import Broker
from access.shared.models import Grant

from .conftest import Dynamic, Place, issue
from .test_lifecycle import Session, open_session


async def cut_within(check: Callable[[], bool], seconds: float) -> bool:
    return await asyncio.to_thread(wait_until, check, within=seconds)


def live_session(dynamic: Dynamic, ttl: str) -> tuple[Broker, AuthContext, Grant, Session]:
    """A broker on the real clock, a grant of svc-pg and a live session of its identity."""
    broker, alice = dynamic(clock=SystemClock())
    grant = issue(broker, alice, "svc-pg", ttl=ttl)
    login = identity_login(broker, grant.id)
    assert login is not None
    return broker, alice, grant, open_session("postgres", login)


def test_revoke_cuts_within_1s_even_when_the_outbox_polls_slowly(dynamic: Dynamic, place: Place) -> None:
    broker, alice, grant, session = live_session(dynamic, "5m")

    async def scenario() -> float:
        outbox = asyncio.create_task(OutboxLoop(broker, interval=30.0).run())
        await asyncio.sleep(0)  # let it subscribe
        try:
            started = time.monotonic()
            await asyncio.to_thread(grants.revoke_grant, broker, alice, grant.id)
            assert await cut_within(lambda: session.cut(place), 2.0)
            return time.monotonic() - started
        finally:
            outbox.cancel()

    window = asyncio.run(scenario())
    print(f"\nrevoke -> session cut, real outbox loop (30 s poll): {window * 1000:.0f} ms")
    assert window <= 1.0


def test_expiry_cuts_within_1s_of_expires_at(dynamic: Dynamic, place: Place) -> None:
    broker, _, grant, session = live_session(dynamic, "1s")

    async def scenario() -> float:
        tasks = [asyncio.create_task(loop.run()) for loop in (ExpiryLoop(broker), OutboxLoop(broker))]
        try:
            assert await cut_within(lambda: session.cut(place), 3.0)
            return (datetime.now(UTC) - grant.expires_at).total_seconds()
        finally:
            for task in tasks:
                task.cancel()

    late = asyncio.run(scenario())
    print(f"\nexpiry -> session cut, real loops: {late * 1000:.0f} ms after expires_at")
    assert late <= 1.0
