"""The outbox: work that must happen after a commit, written in the transaction that decides it.

Guarantees
    * A row exists exactly when the decision does: ``enqueue`` takes the deciding transaction's
      connection, so a rolled-back decision leaves no row and a committed one cannot lose it.
    * One replica at a time works on a row. ``OutboxLoop.tick`` claims due rows with a lease
      (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so replicas claiming at once skip each other's
      rows; SQLite's ``BEGIN IMMEDIATE`` already puts claims one after another), runs the
      handler registered for the row's kind, and marks the row done.
    * A failing handler is retried: the error is recorded in ``last_error`` and the row is due
      again after an exponential backoff (``backoff``: 1 s, 2 s, 4 s ... capped at 5 minutes).
      A row whose kind has no handler here (written by a newer broker, say) fails the same way.
      Work that may be abandoned (a webhook nobody answers) registers a ``GiveUp``: after its
      number of attempts the row is closed with its last error, and what the kind records (an
      audit entry) is written in the same transaction. Other kinds are retried for ever.
    * At least once, not exactly once, across crashes: a replica that dies after the handler
      ran but before marking the row done leaves it to be claimed again when the lease
      (``LEASE``) runs out. Handlers must therefore be idempotent (``DROP ROLE IF EXISTS``, a
      webhook with an idempotency key) and finish well within the lease.
    * Done rows are kept for ``RETENTION`` (what ran, and when, for operators) and then pruned.

What goes here: work that must happen once for the whole deployment, whichever replica does
it: dropping a grant's database role (credentials), notifying approvers (approvals), calling a
webhook (``notifications.delivery``, kind ``webhook.deliver``, run by its own ``WebhookLoop``).
Those kinds register their handlers with ``register(kind, handler)``.

Besides webhooks one kind is carried, ``grant.ended`` (written by every transition that ends a grant,
``grants.lifecycle``): its handler publishes ``GrantEnded`` on the bus of the process that runs
it, so a grant ended by an admin command in another process (which has no tunnels and no
loops) reaches the serving broker's tunnels. With several replicas only ONE of them runs the
row, yet EVERY replica must cut its own tunnels: cutting across replicas therefore does not
rely on the outbox but on PostgreSQL NOTIFY (``store.signals``, heard by every replica's
``events.listen.SignalListener``) and on ``tunnel.registry.TunnelWatch`` polling the grants'
states. The same handler then ends the grant's per-grant identity on its target
(``identities.lifecycle.end_for_grant``: exactly one replica drops it; a target that is down
makes the row fail and be retried; publishing again on a retry is harmless). ``OutboxLoop`` is
woken by every ``GrantEnded`` on this process's bus (decided here, or heard by NOTIFY), so that
work starts at once rather than at the next poll.

``grant.extended`` (written by ``grants.extend`` with the new expiry) moves the per-grant
identity's own expiry on its target (PostgreSQL ``VALID UNTIL``, MySQL's password lifetime) to the
grant's current one (``identities.lifecycle.follow_expiry``: idempotent, never earlier, so two
extensions' rows run in any order end at the later expiry); ``GrantExtended`` wakes the loop too.
The tunnels' cut does not wait for it: the registry follows ``GrantExtended`` and ``TunnelWatch``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from access.broker.events.bus import Event, GrantEnded, GrantExtended
from access.broker.loops import Loop
from access.broker.store import outbox as store

if TYPE_CHECKING:
    from access.broker.clock import Clock
    from access.broker.runtime import Broker

__all__ = [
    "BATCH",
    "GRANT_ENDED",
    "GRANT_EXTENDED",
    "LEASE",
    "OUTBOX_INTERVAL",
    "RETENTION",
    "GiveUp",
    "Handler",
    "Handlers",
    "OutboxLoop",
    "backoff",
    "default_handlers",
    "enqueue",
    "register",
]

log = logging.getLogger(__name__)

GRANT_ENDED = "grant.ended"
GRANT_EXTENDED = "grant.extended"

OUTBOX_INTERVAL = 0.5
# How long a claim holds a row: a handler must finish well within it.
LEASE = timedelta(minutes=5)
RETENTION = timedelta(days=7)
_BACKOFF_BASE = timedelta(seconds=1)
_BACKOFF_CAP = timedelta(minutes=5)
BATCH = 50  # rows one claim takes
_PRUNE_EVERY = 60.0  # seconds (monotonic) between prunes
_ERROR_LENGTH = 500

# A handler gets the broker and the row's payload; raising means "try again later".
Handler = Callable[["Broker", Mapping[str, Any]], None]


@dataclass(frozen=True)
class GiveUp:
    """When a kind stops retrying, and what records that it did (work that may be abandoned).

    ``after`` gives the number of failed attempts after which the row is closed; ``record`` is
    called with the closing transaction's connection, the broker, the payload, the last error
    and the attempts, and must leave a trace (an audit entry): nothing is dropped silently. If
    ``record`` raises, nothing is closed and the row is claimed again after its lease.
    """

    after: Callable[[Broker], int]
    record: Callable[[sa.Connection, Broker, Mapping[str, Any], str, int], None]


class Handlers:
    """Which handler runs the rows of each kind (and, for some kinds, when to give up)."""

    def __init__(self) -> None:
        self._by_kind: dict[str, Handler] = {}
        self._give_up: dict[str, GiveUp] = {}

    def register(self, kind: str, handler: Handler, give_up: GiveUp | None = None) -> None:
        """Run ``handler`` for rows of ``kind``; without ``give_up`` they are retried for ever.

        Raises:
            ValueError: ``kind`` has a handler already.
        """
        if kind in self._by_kind:
            raise ValueError(f"outbox kind {kind!r} already has a handler")
        self._by_kind[kind] = handler
        if give_up is not None:
            self._give_up[kind] = give_up

    def get(self, kind: str) -> Handler | None:
        return self._by_kind.get(kind)

    def give_up(self, kind: str) -> GiveUp | None:
        return self._give_up.get(kind)


default_handlers = Handlers()
register = default_handlers.register


def enqueue(conn: sa.Connection, clock: Clock, kind: str, payload: Mapping[str, Any]) -> int:
    """Add work of ``kind`` in the caller's transaction (it runs only if that commits); return its id.

    ``payload`` must be JSON: ids and reasons, never secrets (rows are kept for ``RETENTION``).

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database failed; the caller's transaction must fail.
    """
    return store.add(conn, kind, payload, clock.now())


def backoff(attempts: int) -> timedelta:
    """The wait before the next try after ``attempts`` failed tries: doubling, capped."""
    doublings = min(max(attempts - 1, 0), 20)  # bounded: 2**20 s is far past the cap already
    wait: timedelta = _BACKOFF_BASE * (2**doublings)
    return min(wait, _BACKOFF_CAP)


def _publish_grant_ended(broker: Broker, payload: Mapping[str, Any]) -> None:
    from access.broker.identities.lifecycle import end_for_grant  # deferred: it loads the target drivers

    broker.events.publish(GrantEnded(str(payload["grant_id"]), str(payload["reason"])))
    end_for_grant(broker, str(payload["grant_id"]), str(payload["reason"]))  # raising: retried


register(GRANT_ENDED, _publish_grant_ended)


def _follow_grant_expiry(broker: Broker, payload: Mapping[str, Any]) -> None:
    from access.broker.identities.lifecycle import follow_expiry  # deferred: it loads the target drivers

    follow_expiry(broker, str(payload["grant_id"]))  # raising: retried


register(GRANT_EXTENDED, _follow_grant_expiry)


class OutboxLoop(Loop):
    """Every ``OUTBOX_INTERVAL`` seconds: claim due rows, run their handlers, record the outcome.

    ``only`` and ``skip`` choose the kinds this loop claims (default: all), so that slow work
    (webhooks, which wait on other people's servers) runs in a loop of its own and never holds
    up a grant's end; ``batch`` is how many rows one claim takes (all must run within ``LEASE``).
    """

    name = "outbox"

    def __init__(
        self,
        broker: Broker,
        handlers: Handlers | None = None,
        interval: float = OUTBOX_INTERVAL,
        *,
        only: Collection[str] | None = None,
        skip: Collection[str] = (),
        batch: int = BATCH,
    ) -> None:
        super().__init__(broker, interval)
        self.handlers = handlers or default_handlers
        self.only = frozenset(only) if only is not None else None
        self.skip = frozenset(skip)
        self.batch = batch
        self._next_prune: float | None = None

    async def tick(self) -> None:
        """Raises: Unavailable: the database could not be reached (a handler's failure is not raised)."""
        await asyncio.to_thread(self.run_due)

    async def run(self) -> None:
        """The loop, woken by every grant end this process publishes (its row is due at once)."""
        unsubscribe = self.broker.events.subscribe(lambda e: self.wake() if self.wakes_on(e) else None)
        try:
            await super().run()
        finally:
            unsubscribe()

    def wakes_on(self, event: Event) -> bool:
        """Whether ``event`` (published by this process) makes rows this loop runs due now."""
        return isinstance(event, GrantEnded | GrantExtended)

    def run_due(self) -> int:
        """Claim and run the due rows once; return how many ran successfully.

        Raises:
            Unavailable: the database could not be reached.
        """
        clock = self.broker.clock
        now = clock.now()
        with self.broker.transaction() as conn:
            claimed = store.claim_due(
                conn, now=now, lease_until=now + LEASE, limit=self.batch, only=self.only, skip=self.skip
            )
        succeeded = sum(self._run(entry) for entry in claimed)
        self._prune_if_due()
        return succeeded

    def _run(self, entry: store.OutboxEntry) -> bool:
        handler = self.handlers.get(entry.kind)
        try:
            if handler is None:
                raise LookupError(f"no handler for outbox kind {entry.kind!r}")
            handler(self.broker, entry.payload)
        except Exception as exc:  # any failure of the work: record it and try again later
            error = f"{type(exc).__name__}: {exc}"[:_ERROR_LENGTH]
            log.warning("outbox %s #%d failed (attempt %d): %s", entry.kind, entry.id, entry.attempts, error)
            give_up = self.handlers.give_up(entry.kind)
            if give_up is not None and entry.attempts >= give_up.after(self.broker):
                self._give_up(entry, give_up, error)
                return False
            retry_at = self.broker.clock.now() + backoff(entry.attempts)
            with self.broker.transaction() as conn:
                store.failed(conn, entry, error, retry_at)
            return False
        with self.broker.transaction() as conn:
            if not store.done(conn, entry, self.broker.clock.now()):
                log.warning("outbox %s #%d ran past its lease", entry.kind, entry.id)
        return True

    def _give_up(self, entry: store.OutboxEntry, give_up: GiveUp, error: str) -> None:
        """Close the row as abandoned and record it, in one transaction (both or neither)."""
        log.error(
            "outbox %s #%d: giving up after %d attempts: %s", entry.kind, entry.id, entry.attempts, error
        )
        with self.broker.transaction() as conn:
            if store.abandon(conn, entry, error, self.broker.clock.now()):
                give_up.record(conn, self.broker, entry.payload, error, entry.attempts)

    def _prune_if_due(self) -> None:
        mono = self.broker.clock.monotonic()
        if self._next_prune is not None and mono < self._next_prune:
            return
        self._next_prune = mono + _PRUNE_EVERY
        with self.broker.transaction() as conn:
            store.prune_done(conn, self.broker.clock.now() - RETENTION)
