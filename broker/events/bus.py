"""Events about grants, sessions and principals that the tunnel layer subscribes to.

Ending a grant is an event, not a call into one process's memory: subscribers run in this
process, and on PostgreSQL the events other processes decide (an admin command, another
replica) arrive here too, through LISTEN/NOTIFY (``events.listen``), published on this bus as
if decided here. ``tunnel.registry.TunnelWatch`` still polls the database as the safety net, so
an end whose notification was lost is seen within ``grant_watch_interval``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

__all__ = [
    "Event",
    "EventBus",
    "GrantDecided",
    "GrantEnded",
    "GrantExtended",
    "PrincipalLocked",
    "SessionEnded",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GrantDecided:
    grant_id: str
    state: str  # "active" (issued) | "denied"


@dataclass(frozen=True)
class GrantEnded:
    grant_id: str
    reason: str  # "expired" | "revoked" | "locked" | "policy" | "sessions revoked" ...


@dataclass(frozen=True)
class GrantExtended:
    """An active grant's expiry moved later (``grants.extend``, published after commit): its
    tunnels' cut moves with it, and nothing is cut."""

    grant_id: str
    expires_at: datetime


@dataclass(frozen=True)
class PrincipalLocked:
    principal_id: str


@dataclass(frozen=True)
class SessionEnded:
    """A sign-in session was ended (published after commit by ``auth.sessions``): its tunnels close."""

    session_id: str
    reason: str  # "logout" | "refresh_reuse" | "revoked" | "password_changed" | "sessions_revoked" ...


# Every grant transition is a GrantDecided or a GrantEnded (grants.lifecycle publishes it after commit);
# an extension, which is no transition, is a GrantExtended (grants.extend, after its commit).
Event = GrantDecided | GrantEnded | GrantExtended | PrincipalLocked | SessionEnded


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[Callable[[Event], None]] = []

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback`` for every event; returns a function that unsubscribes."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def publish(self, event: Event) -> None:
        """Deliver ``event``. Callbacks must be quick and thread-safe (they may run in a worker thread)."""
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:  # a broken subscriber must not stop the others
                log.exception("event subscriber failed on %r", event)
