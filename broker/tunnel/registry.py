"""Live tunnels of this broker process, by grant and by sign-in session, and the three ways they are cut.

1. A timer at the grant's ``expires_at`` (server clock): the cut lands on time, not on a poll.
   The timer follows the grant's current expiry: an extension decided in this process moves it
   at once (``GrantExtended``), and when ``TunnelWatch`` reads a different ``expires_at`` (an
   extension on another replica, or a shortening), the timer moves, earlier or later. Nothing is
   cut by a move: the tunnels stay as they are. Likewise a
   timer at the sign-in session's ``expires_at`` cuts the session's tunnels when its lifetime
   ends ("session expired", close 4013 as for signed out).
2. ``broker.events`` (``GrantEnded``, ``PrincipalLocked``, ``SessionEnded``): revokes, lock-outs
   and ended sign-in sessions (logout, refresh-token reuse, token revoke) decided in this
   process cut at once; on PostgreSQL so do those decided by any other process (a replica,
   ``access-broker users disable``), whose NOTIFY ``events.listen.SignalListener`` publishes
   here. Subscribers may be called from worker threads, so they only hand the work to the
   event loop (``call_soon_threadsafe``).
3. ``TunnelWatch`` asks the database every ``grant_watch_interval`` (0.25 s; 2 s on PostgreSQL
   while notifications are listened for, as the safety net behind them, woken at once after the
   listening connection comes back) about the grants that have live tunnels here, and about the
   sessions behind them (one query each), so an end decided by another process is cut without
   a notification too. The why comes from the database's reasons: a grant ended ``locked`` and
   a session revoked because its principal was disabled cut as ``locked``.

The registry also drives the heartbeat: idle connections are pinged and half-open ones closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from access.broker.events.bus import Event, GrantEnded, GrantExtended, PrincipalLocked, SessionEnded
from access.broker.loops import Loop
from access.broker.perbroker import PerBroker
from access.broker.settings import POLLING_WATCH_INTERVAL
from access.shared.models import GrantState

if TYPE_CHECKING:
    from access.broker.grants import TunnelGrant
    from access.broker.runtime import Broker

__all__ = [
    "PING_INTERVAL",
    "PING_TIMEOUT",
    "Hearing",
    "Tunnel",
    "TunnelRegistry",
    "TunnelWatch",
    "registry_for",
]

log = logging.getLogger(__name__)

# Seconds of silence before the broker pings a tunnel, and then before it gives up on it.
PING_INTERVAL = 15.0
PING_TIMEOUT = 30.0


class Hearing(Protocol):
    """What the watch needs of the notifications' listener (``events.listen.SignalListener``)."""

    @property
    def listening(self) -> bool: ...


class Tunnel(Protocol):
    """What the registry needs of a live tunnel connection (``protocol.TunnelProtocol``)."""

    grant_id: str
    principal_id: str | None
    session_id: str | None  # known once the token is verified

    def cut(self, why: str) -> None: ...

    def heartbeat(self, ticks_to_timeout: int) -> None: ...


class TunnelRegistry:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.loop: asyncio.AbstractEventLoop | None = None
        self._by_grant: dict[str, set[Tunnel]] = {}
        self._by_session: dict[str, set[Tunnel]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._expiries: dict[str, datetime] = {}  # the expiry each timer is set for
        self._session_timers: dict[str, asyncio.TimerHandle] = {}
        self._unsubscribe = broker.events.subscribe(self._on_event)

    def __len__(self) -> int:
        return sum(len(tunnels) for tunnels in self._by_grant.values())

    def grant_ids(self) -> list[str]:
        return list(self._by_grant)

    def session_ids(self) -> list[str]:
        return list(self._by_session)

    def add(self, tunnel: Tunnel) -> None:
        """Track ``tunnel`` under the grant it asked for, before that grant is even checked:
        an end that lands while the check runs is then not missed."""
        self.loop = asyncio.get_running_loop()
        self._by_grant.setdefault(tunnel.grant_id, set()).add(tunnel)

    def add_session(self, tunnel: Tunnel, expires_at: datetime | None = None) -> None:
        """Track ``tunnel`` under its sign-in session too, once its token has told which one;
        cut the session's tunnels at ``expires_at``, the session's end (one timer per session)."""
        session_id = tunnel.session_id
        if session_id is None or tunnel not in self._by_grant.get(tunnel.grant_id, ()):
            return
        self._by_session.setdefault(session_id, set()).add(tunnel)
        if expires_at is not None and session_id not in self._session_timers:
            loop = asyncio.get_running_loop()
            delay = max(0.0, (expires_at - self.broker.clock.now()).total_seconds())
            self._session_timers[session_id] = loop.call_at(
                loop.time() + delay, self.cut_session, session_id, "session expired"
            )

    def session_timer(self, session_id: str) -> asyncio.TimerHandle | None:
        """The timer that cuts ``session_id``'s tunnels when the session's lifetime ends, if set."""
        return self._session_timers.get(session_id)

    def schedule_expiry(self, grant: TunnelGrant) -> None:
        """Cut every tunnel of ``grant`` at its expiry (one timer per grant, at its latest expiry)."""
        if grant.grant_id in self._by_grant:
            self._set_timer(grant.grant_id, grant.expires_at)

    def follow_expiry(self, grant_id: str, expires_at: datetime) -> None:
        """Move the cut of a grant that has a timer to ``expires_at``, if that is a new expiry."""
        if grant_id in self._timers and grant_id in self._by_grant:
            self._set_timer(grant_id, expires_at)

    def expiry_timer(self, grant_id: str) -> asyncio.TimerHandle | None:
        """The timer that cuts ``grant_id``'s tunnels at its expiry, if one is set."""
        return self._timers.get(grant_id)

    def _set_timer(self, grant_id: str, expires_at: datetime) -> None:
        if self._expiries.get(grant_id) == expires_at and grant_id in self._timers:
            return
        old = self._timers.pop(grant_id, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, (expires_at - self.broker.clock.now()).total_seconds())
        self._timers[grant_id] = loop.call_at(loop.time() + delay, self.cut_grant, grant_id, "expired")
        self._expiries[grant_id] = expires_at

    def remove(self, tunnel: Tunnel) -> None:
        if tunnel.session_id is not None:
            of_session = self._by_session.get(tunnel.session_id)
            if of_session is not None:
                of_session.discard(tunnel)
                if not of_session:
                    del self._by_session[tunnel.session_id]
                    timer = self._session_timers.pop(tunnel.session_id, None)
                    if timer is not None:
                        timer.cancel()
        tunnels = self._by_grant.get(tunnel.grant_id)
        if tunnels is None:
            return
        tunnels.discard(tunnel)
        if not tunnels:
            del self._by_grant[tunnel.grant_id]
            timer = self._timers.pop(tunnel.grant_id, None)
            self._expiries.pop(tunnel.grant_id, None)
            if timer is not None:
                timer.cancel()

    def cut_grant(self, grant_id: str, why: str) -> None:
        """Cut every live tunnel of ``grant_id`` (``why``: expired, revoked or locked)."""
        for tunnel in list(self._by_grant.get(grant_id, ())):
            tunnel.cut(why)

    def cut_session(self, session_id: str, why: str) -> None:
        """Cut every live tunnel opened with sign-in session ``session_id`` (``why``: signed out,
        session expired, locked)."""
        for tunnel in list(self._by_session.get(session_id, ())):
            tunnel.cut(why)

    def cut_principal(self, principal_id: str, why: str) -> None:
        for tunnels in list(self._by_grant.values()):
            for tunnel in list(tunnels):
                if tunnel.principal_id == principal_id:
                    tunnel.cut(why)

    def heartbeat(self, ticks_to_timeout: int) -> None:
        for tunnels in list(self._by_grant.values()):
            for tunnel in list(tunnels):
                tunnel.heartbeat(ticks_to_timeout)

    def _on_event(self, event: Event) -> None:
        loop = self.loop
        if loop is None or not self._by_grant:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: no tunnels are left
            if isinstance(event, GrantEnded):
                loop.call_soon_threadsafe(self.cut_grant, event.grant_id, event.reason)
            elif isinstance(event, GrantExtended):
                loop.call_soon_threadsafe(self.follow_expiry, event.grant_id, event.expires_at)
            elif isinstance(event, PrincipalLocked):
                loop.call_soon_threadsafe(self.cut_principal, event.principal_id, "locked")
            elif isinstance(event, SessionEnded):
                loop.call_soon_threadsafe(self.cut_session, event.session_id, _session_why(event.reason))

    def close(self) -> None:
        self._unsubscribe()
        for timer in [*self._timers.values(), *self._session_timers.values()]:
            timer.cancel()
        self._timers.clear()
        self._session_timers.clear()
        self._expiries.clear()


_registries = PerBroker(TunnelRegistry)


def registry_for(broker: Broker) -> TunnelRegistry:
    """The registry of ``broker`` (one per broker object; gone when the broker is)."""
    return _registries(broker)


_ENDED_WHY = {GrantState.EXPIRED: "expired", GrantState.REVOKED: "revoked", GrantState.DENIED: "revoked"}


def _grant_why(state: GrantState, ended_reason: str | None) -> str:
    """How to cut a tunnel whose grant the database shows ended: a disabled principal's grants
    are stored revoked with ``ended_reason`` "locked", and cut as locked (4012), not revoked;
    those a reloaded policy no longer allows, "policy", are cut as revoked in their own words, and
    those of an offboarded principal, "sessions revoked", as signed out (4013, in theirs)."""
    if state == GrantState.REVOKED and ended_reason in ("locked", "policy", "sessions revoked"):
        return ended_reason
    return _ENDED_WHY[state]


def _session_why(revoked_reason: str) -> str:
    """How to cut a tunnel whose sign-in session ended: as locked for a disabled principal, in
    the offboarding's own words when its sessions were revoked (as its grants' ends say, whichever
    of the two reaches this process first), else as signed out."""
    return _SESSION_WHY.get(revoked_reason, "signed out")


_SESSION_WHY = {"principal_disabled": "locked", "sessions_revoked": "sessions revoked"}


class TunnelWatch(Loop):
    """Every ``grant_watch_interval``: cut tunnels whose grant or sign-in session another process
    ended, move expiry timers to the grants' current ``expires_at``; ping idle ones.

    While the database cannot be read the loop backs off (expiry timers and in-process events
    keep cutting meanwhile); the heartbeat goes on, since it needs no database. ``listener``
    (PostgreSQL's notifications, set by the app): while it is not listening, the poll is the only
    way other processes' ends arrive, so it runs at the quick ``POLLING_WATCH_INTERVAL`` rather
    than the safety net's longer interval.
    """

    name = "tunnel watch"

    def __init__(self, broker: Broker, listener: Hearing | None = None) -> None:
        super().__init__(broker, broker.settings.watch_interval, max_backoff=1.0)
        self.registry = registry_for(broker)
        self.ticks_to_timeout = max(1, round(PING_TIMEOUT / PING_INTERVAL))
        self.next_heartbeat: float | None = None
        self.listener = listener

    def next_delay(self, delay: float) -> float:
        """The interval (the quick one while notifications are not heard), or the backoff."""
        if not self.failing and self.listener is not None and not self.listener.listening:
            return min(self.interval, POLLING_WATCH_INTERVAL)
        return super().next_delay(delay)

    async def tick(self) -> None:
        """Raises: Unavailable: the grants' or sessions' states could not be read."""
        from access.broker.auth.sessions import ended_sessions
        from access.broker.grants import watched_grants

        loop = asyncio.get_running_loop()
        self.registry.loop = loop
        if self.next_heartbeat is None:
            self.next_heartbeat = loop.time() + PING_INTERVAL
        elif loop.time() >= self.next_heartbeat:
            self.next_heartbeat = loop.time() + PING_INTERVAL
            self.registry.heartbeat(self.ticks_to_timeout)
        ids = self.registry.grant_ids()
        if not ids:
            return
        states = await asyncio.to_thread(watched_grants, self.broker, ids)
        for grant_id, (state, expires_at, ended_reason) in states.items():
            if state in _ENDED_WHY:
                self.registry.cut_grant(grant_id, _grant_why(state, ended_reason))
            else:
                self.registry.follow_expiry(grant_id, expires_at)
        session_ids = self.registry.session_ids()
        if not session_ids:
            return
        ended = await asyncio.to_thread(ended_sessions, self.broker, session_ids)
        for session_id, reason in ended.items():
            self.registry.cut_session(session_id, _session_why(reason))
