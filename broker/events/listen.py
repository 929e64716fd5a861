"""``SignalListener``: what other processes decide reaches this one's bus at once (PostgreSQL).

Every end is sent as a NOTIFY in the transaction that decides it (``store.signals``, whichever
process runs it: a replica, an ``access-broker`` command). Each replica holds one connection of
its own listening for them, and publishes each as the event the deciding process published on
its own bus (``GrantEnded``, ``GrantExtended``, ``SessionEnded``, ``PrincipalLocked``): the
tunnel registry cuts at once, as for an end decided here. A new policy version wakes
``PolicyWatch``, which applies it.

The poll stays as the safety net (``TunnelWatch`` every ``grant_watch_interval``, 2 s by default
here): a notification is lost with the connection it was on, so after every (re)connection the
listener wakes the poll (``resync``) to read what it may have missed. While the database cannot
be reached the listener backs off (``max_backoff``), logging once when it starts failing and
once when it listens again. A silent connection is asked for an answer every ``HEARTBEAT``
seconds, so a frozen server or a dead network is noticed within a heartbeat and an answer's
deadline, not never.

An event that comes back from this process's own commits is published a second time: every
subscriber takes an end twice (a tunnel already cut stays cut).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from access.broker.errors import Unavailable
from access.broker.events.bus import Event, GrantEnded, GrantExtended, PrincipalLocked, SessionEnded
from access.broker.loops import Loop
from access.broker.store import signals

if TYPE_CHECKING:
    from access.broker.runtime import Broker

__all__ = ["HEARTBEAT", "SignalListener", "event_of"]

log = logging.getLogger(__name__)

HEARTBEAT = 5.0  # seconds of silence before the listening connection is asked for an answer
_FIRST_BACKOFF = 0.1


def event_of(signal: signals.Signal) -> Event | None:
    """The bus event a signal stands for; None for a new policy version (no event: a wake)."""
    if signal.kind == signals.GRANT_ENDED:
        return GrantEnded(signal.id, signal.reason or "revoked")
    if signal.kind == signals.GRANT_EXTENDED and signal.expires_at is not None:
        return GrantExtended(signal.id, signal.expires_at)
    if signal.kind == signals.SESSION_ENDED:
        return SessionEnded(signal.id, signal.reason or "revoked")
    if signal.kind == signals.PRINCIPAL_LOCKED:
        return PrincipalLocked(signal.id)
    return None


class SignalListener(Loop):
    """Listen on the database for other processes' ends; publish them here.

    ``resync`` is called after every (re)connection (the poll, to read what was missed while no
    connection listened); ``policy_changed`` on every new policy version.
    """

    name = "notify listener"

    def __init__(
        self,
        broker: Broker,
        *,
        resync: Sequence[Callable[[], None]] = (),
        policy_changed: Callable[[], None] | None = None,
        heartbeat: float = HEARTBEAT,
        max_backoff: float = 5.0,
    ) -> None:
        super().__init__(broker, 0.0, max_backoff=max_backoff)
        self.resync = list(resync)
        self.policy_changed = policy_changed
        self.heartbeat = heartbeat
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.connections = 0  # how many times it has (re)connected

    @property
    def listening(self) -> bool:
        """Whether a connection listens now (False before the first and after a loss)."""
        return self.conn is not None

    def next_delay(self, delay: float) -> float:
        """Listen again at once; while failing, back off from ``_FIRST_BACKOFF`` up to the cap."""
        return min(max(delay * 2, _FIRST_BACKOFF), self.max_backoff) if self.failing else 0.0

    async def tick(self) -> None:
        """Connect if need be, then publish what arrives for up to a heartbeat, then check the
        connection is alive.

        Raises:
            Unavailable: the database could not be reached, or the connection was lost.
        """
        timeouts = self.broker.settings.db_timeouts
        try:
            if self.conn is None:
                self.conn = await signals.listen(self.broker.settings.resolved_database_url, timeouts)
                self.connections += 1
                for wake in self.resync:
                    wake()
            async for notify in self.conn.notifies(timeout=self.heartbeat):
                self.deliver(notify.payload)
            await signals.ping(self.conn, timeouts.answer)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            await self.aclose()
            raise Unavailable(
                f"not listening for other processes' ends: {type(exc).__name__}: {exc}",
                hint="the poll goes on; check the database",
            ) from exc

    def deliver(self, payload: str) -> None:
        """Publish the event ``payload`` stands for (a payload not ours is logged and dropped)."""
        try:
            signal = signals.Signal.decode(payload)
        except ValueError as exc:
            log.warning("%s: ignored a notification: %s", self.name, exc)
            return
        event = event_of(signal)
        if event is not None:
            self.broker.events.publish(event)
        elif signal.kind == signals.POLICY_VERSION and self.policy_changed is not None:
            self.policy_changed()

    async def run(self) -> None:
        """The loop; the connection is closed when it stops."""
        try:
            await super().run()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            await conn.close()
