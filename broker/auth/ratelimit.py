"""Sliding-window rate limits kept in the database, so every broker replica sees the same counts.

Used against guessing: wrong user codes per client IP, wrong passwords per (username, IP),
wrong client secrets per (client id, IP), and every failed login per IP. No limit is kept per
username alone: failures from one address never lock a name out at another (the client IP is
the one ``trusted_proxies`` lets through, see ``api.deps.client_ip``; docs/security.md).
Each failure is one row in ``rate_events``; a key is limited when it has ``limit`` rows in the
last ``window``. Rows older than the window are pruned whenever the key is hit again.
Keys are keyed hashes (``tags.digest``): a password typed as a username leaves no row that
could be tested against guesses.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa

from access.broker.auth import tags
from access.broker.clock import Clock
from access.broker.errors import RateLimited
from access.broker.observe.metrics import for_engine
from access.broker.runtime import Broker
from access.broker.store import rate_events

__all__ = [
    "CLIENT_SECRET_FAILURES",
    "DEVICE_STARTS",
    "OIDC_CALLBACK_FAILURES",
    "OIDC_STARTS",
    "PASSWORD_FAILURES",
    "USER_CODE_GUESSES",
    "Limit",
    "check",
    "count",
    "hit",
    "login_failures_per_address",
    "prune",
]


@dataclass(frozen=True)
class Limit:
    """At most ``limit`` events per ``window`` for keys starting with ``prefix``."""

    prefix: str
    limit: int
    window: timedelta

    def key(self, broker: Broker, *parts: str) -> str:
        # Parts can be attacker-chosen (usernames, or a password typed as one): a keyed hash
        # keeps keys bounded and opaque, and a stored key cannot be tested against guesses.
        return f"{self.prefix}:{tags.digest(broker, *parts)}"


# Ten wrong user codes per IP in ten minutes: a guesser gets 10 tries out of 20^8 codes.
USER_CODE_GUESSES = Limit("user_code", 10, timedelta(minutes=10))
# Device authorizations started per IP in ten minutes: each writes a row and an audit entry.
DEVICE_STARTS = Limit("device_start", 30, timedelta(minutes=10))
# Ten wrong passwords per (username, IP) in fifteen minutes: an attacker elsewhere cannot use
# up the allowance of the person at their own address.
PASSWORD_FAILURES = Limit("password", 10, timedelta(minutes=15))
# Ten wrong secrets per (client id, IP) in fifteen minutes, for service accounts.
CLIENT_SECRET_FAILURES = Limit("client_secret", 10, timedelta(minutes=15))

# Upstream OIDC sign-ins started per IP in ten minutes (each writes a row), and callbacks that
# failed (a bad or replayed state, a refused token) per IP in fifteen minutes.
OIDC_STARTS = Limit("oidc_start", 30, timedelta(minutes=10))
OIDC_CALLBACK_FAILURES = Limit("oidc_callback", 10, timedelta(minutes=15))


def login_failures_per_address(broker: Broker) -> Limit:
    """Failed logins of any name or client from one IP (``login_failures_per_address`` per 15
    minutes): one address cannot spray passwords over many names, nor burn argon2 time, and
    only that address waits."""
    return Limit("login_address", broker.settings.login_failures_per_address, timedelta(minutes=15))


def count(conn: sa.Connection, clock: Clock, limit: Limit, key: str) -> int:
    """Events recorded for ``key`` within ``limit.window`` of now."""
    return rate_events.count_since(conn, key, clock.now() - limit.window)


def check(conn: sa.Connection, clock: Clock, limit: Limit, key: str) -> None:
    """Refuse when ``key`` has used up its allowance.

    Raises:
        RateLimited: ``limit.limit`` events or more within the window.
    """
    if count(conn, clock, limit, key) >= limit.limit:
        metrics = for_engine(conn.engine)
        if metrics is not None:
            metrics.rate_limited.labels(limit.prefix).inc()
        minutes = max(1, int(limit.window.total_seconds() // 60))
        raise RateLimited(
            "too many failed attempts from here",
            hint=f"wait up to {minutes} minutes and try again",
        )


def hit(conn: sa.Connection, clock: Clock, limit: Limit, key: str) -> None:
    """Record one event for ``key`` (and prune its events older than the window)."""
    now = clock.now()
    rate_events.delete_for_key_before(conn, key, now - limit.window)
    rate_events.insert(conn, key, now)


def prune(conn: sa.Connection, clock: Clock, older_than: timedelta = timedelta(days=1)) -> None:
    """Drop events older than any window (housekeeping, not an audited action)."""
    rate_events.delete_before(conn, clock.now() - older_than)
