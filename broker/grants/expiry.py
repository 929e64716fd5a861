"""Expiry: grants past ``expires_at`` are marked expired (and audited) by a background loop.

A grant is unusable from its expiry on whatever the loop does (``effective_state``), and live
tunnels cut at ``expires_at`` on their own timers; the loop records the end in the ledger. A
pending grant's ``expires_at`` is its review deadline: past it, it expires ``unreviewed``.
"""

from __future__ import annotations

import asyncio

from access.broker.grants import lifecycle
from access.broker.grants.lifecycle import GrantEvent
from access.broker.loops import Loop
from access.broker.runtime import Broker
from access.broker.store import grants as store
from access.shared.models import GrantState

__all__ = ["EXPIRY_INTERVAL", "ExpiryLoop", "expire_due"]

EXPIRY_INTERVAL = 0.5
_EXPIRE_BATCH = 500


def expire_due(broker: Broker) -> list[str]:
    """Mark active grants past their expiry, and pending ones past their review deadline, as
    expired (audited ``grant.expired``, reason ``expired`` or ``unreviewed``); return their ids.

    Safe with several replicas: the update is conditional on the state read, so each grant
    is expired and audited exactly once. ``GrantEnded(id, "expired")`` is published after the
    commit (from the calling thread: bus subscribers are thread-safe).

    Raises:
        Unavailable: the database could not be reached; nothing changed.
    """
    now = broker.clock.now()
    with lifecycle.transaction(broker) as tx:
        return [
            record.id
            for record in store.due_for_expiry(tx.conn, now, _EXPIRE_BATCH)
            if lifecycle.apply(
                tx, record, GrantEvent.EXPIRE, actor="broker", now=now, reason=_why(record.state)
            )
        ]


def _why(state: str) -> str:
    return "unreviewed" if state == GrantState.PENDING else "expired"


class ExpiryLoop(Loop):
    """Every ``EXPIRY_INTERVAL`` seconds: expire due grants (which publishes ``GrantEnded``)."""

    name = "grant expiry"

    def __init__(self, broker: Broker, interval: float = EXPIRY_INTERVAL) -> None:
        super().__init__(broker, interval)

    async def tick(self) -> None:
        """Raises: Unavailable: the database could not be reached; nothing changed."""
        await asyncio.to_thread(expire_due, self.broker)
