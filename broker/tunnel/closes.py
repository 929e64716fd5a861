"""Every ``connection.open`` gets its ``connection.close``: written later when it cannot be written
now, and by another process when the one that opened it died.

Two records make that hold without trusting memory:

- ``open_connections`` (store): a row written in the transaction of ``connection.open`` and
  deleted in that of ``connection.close``. It names the broker process (instance) that owns it.
- ``broker_instances``: each process upserts its heartbeat every third of
  ``settings.instance_lease``. Replicas share one database, so "dead" is decided by that lease,
  never by "not me": a starting replica leaves the live connections of another one alone.

A close that cannot be written (the database is down) waits in :class:`PendingCloses`, in
memory, and :class:`CloseRetryLoop` writes it as soon as the database answers, with
``closed_at`` (when it really closed). Memory is bounded by the connections that were open when
the database went away: a new connection needs its ``connection.open`` written first. Should the
process die or stop before the database is back, nothing is lost but the close's figures: the
row is still in ``open_connections``, and once the lease has run out whichever process runs
(the next to start, or any replica) writes ``connection.close`` with ``why: broker lost`` and
what is known: the open's details, when it opened, the owner and its last heartbeat
(:func:`close_lost`).

The same two moments remove a process's PostgreSQL cancel keys from the store
(``tunnel.cancels``): its own at a graceful stop, a dead one's once its lease has run out.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.errors import BrokerError
from access.broker.loops import Loop
from access.broker.perbroker import PerBroker
from access.broker.store import cancel_keys
from access.broker.store import connections as store

if TYPE_CHECKING:
    from access.broker.runtime import Broker

__all__ = [
    "CloseRetryLoop",
    "InstanceLoop",
    "PendingCloses",
    "close_lost",
    "heartbeat",
    "pending_for",
    "stop_instance",
]

log = logging.getLogger(__name__)

_REAP_BATCH = 500


@dataclass
class _Close:
    connection_id: str
    actor: str
    target: str
    details: dict[str, Any]
    closed_at: datetime
    delayed: bool = False  # a write failed while it was queued: the entry says when it closed


class PendingCloses:
    """The ``connection.close`` entries of this process not yet in the ledger, oldest first."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._queue: collections.deque[_Close] = collections.deque()
        self._lock = threading.Lock()  # guards _queue
        self._writer = threading.Lock()  # one writer at a time keeps the entries in order
        self.waiting_logged = False

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)

    def add(self, connection_id: str, actor: str, target: str, details: dict[str, Any]) -> None:
        """Queue one close (no database work: callable from the event loop)."""
        entry = _Close(connection_id, actor, target, dict(details), self.broker.clock.now())
        with self._lock:
            self._queue.append(entry)

    def flush(self) -> int:
        """Worker thread: write what is queued, in order; return how many were written.

        Raises:
            Unavailable: the database could not be reached; what is left stays queued.
        """
        written = 0
        if not self._writer.acquire(blocking=False):
            return 0  # another thread is writing: it takes what was just queued too
        try:
            while True:
                with self._lock:
                    if not self._queue:
                        break
                    entry = self._queue[0]
                try:
                    self._write(entry)
                except BaseException:
                    with self._lock:
                        for waiting in self._queue:
                            waiting.delayed = True
                    raise
                with self._lock:
                    self._queue.popleft()
                written += 1
        finally:
            self._writer.release()
        if self.waiting_logged:
            log.warning("connection.close entries that waited for the database are written")
            self.waiting_logged = False
        return written

    def flush_now(self) -> None:
        """Worker thread: ``flush``, and say once (not per entry) when entries must wait."""
        try:
            self.flush()
        except BrokerError as exc:
            if not self.waiting_logged:
                log.warning(
                    "%d connection.close entries wait for the database (%s): written when it is back",
                    len(self),
                    exc.message,
                )
            self.waiting_logged = True

    def _write(self, entry: _Close) -> None:
        details = dict(entry.details)
        if entry.delayed:
            details["closed_at"] = ledger.format_time(entry.closed_at)
        with self.broker.transaction() as conn:
            if not store.remove_open(conn, entry.connection_id) and entry.delayed:
                # Its row is gone: an earlier attempt may have committed after all (a timeout
                # during COMMIT), or a replica took this process for dead and wrote "broker
                # lost". The figures are still worth an entry; it says it may repeat one.
                details["maybe_repeated"] = True
            ledger.append(
                conn,
                self.broker.clock,
                actor=entry.actor,
                action=Action.CONNECTION_CLOSE,
                target=entry.target,
                details=details,
            )


_pending = PerBroker(PendingCloses)


def pending_for(broker: Broker) -> PendingCloses:
    """The queue of ``broker`` (one per broker object; gone when the broker is)."""
    return _pending(broker)


def heartbeat(broker: Broker) -> None:
    """Record that this process is alive.

    Raises:
        Unavailable: the database could not be reached.
    """
    with broker.transaction() as conn:
        store.heartbeat(
            conn, broker.instance_id, host=socket.gethostname(), pid=os.getpid(), now=broker.clock.now()
        )


def close_lost(broker: Broker) -> int:
    """Write ``connection.close`` (``why: broker lost``) for every connection a dead broker
    process left open, and forget that process and its cancel keys; return how many were closed.

    A process is dead when its heartbeat is older than ``settings.instance_lease`` (or its row
    is gone). This process and live replicas are never touched. Each close deletes its row in its
    own transaction, so two replicas doing this at once write each close once.

    Raises:
        Unavailable: the database could not be reached.
    """
    now = broker.clock.now()
    lease = timedelta(seconds=broker.settings.instance_lease)
    with broker.transaction() as conn:
        dead = store.dead_instances(conn, now=now, lease=lease, alive=broker.instance_id)
    closed = 0
    for owner in dead:
        while True:
            with broker.transaction() as conn:
                rows = store.open_of(conn, owner.instance_id, _REAP_BATCH)
            for row in rows:
                closed += _close_one(broker, row, owner)
            if len(rows) < _REAP_BATCH:
                break
        with broker.transaction() as conn:
            if not store.open_of(conn, owner.instance_id, 1):
                store.remove_instance(conn, owner.instance_id)
    with broker.transaction() as conn:
        cancel_keys.remove_stale(conn, now=now, lease=lease, alive=broker.instance_id)
    if closed:
        log.warning(
            "wrote connection.close (broker lost) for %d connections of dead broker processes", closed
        )
    return closed


def _close_one(broker: Broker, row: Any, owner: Any) -> int:
    opened = dict(row.details)
    details: dict[str, Any] = {
        key: opened[key] for key in ("connection", "grant", "service", "client") if key in opened
    }
    details.update(
        why="broker lost",
        opened_at=ledger.format_time(row.opened_at),
        broker=owner.instance_id,
        unknown="bytes each way, duration, and why it closed: the broker process that relayed it is gone",
    )
    if owner.heartbeat_at is not None:
        details["last_heartbeat"] = ledger.format_time(owner.heartbeat_at)
        details["broker_host"] = owner.host
        details["broker_pid"] = owner.pid
    with broker.transaction() as conn:
        if not store.remove_open(conn, row.id):
            return 0  # another replica closed it meanwhile
        ledger.append(
            conn,
            broker.clock,
            actor=row.actor,
            action=Action.CONNECTION_CLOSE,
            target=row.target,
            details=details,
        )
    return 1


def stop_instance(broker: Broker, deadline: float) -> None:
    """On a graceful stop: write the queued closes (trying until ``deadline``, a monotonic time),
    then remove this process's heartbeat and cancel keys, so that whatever it still owns is
    closed (broker lost) at the next start instead of after the lease. Never raises."""
    queue = pending_for(broker)
    while True:
        queue.flush_now()
        if not len(queue) or time.monotonic() >= deadline:
            break
        time.sleep(0.2)  # a bounded retry: the database may be back in a moment
    if len(queue):
        log.error(
            "%d connection.close entries could not be written before the stop: the next start "
            "closes those connections with why: broker lost",
            len(queue),
        )
        return  # keep the heartbeat row: it tells the next start when this process was last seen
    try:
        with broker.transaction() as conn:
            cancel_keys.remove_of(conn, broker.instance_id)
            store.remove_instance(conn, broker.instance_id)
    except BrokerError as exc:
        log.warning("could not remove this broker's heartbeat: %s", exc.message)


class CloseRetryLoop(Loop):
    """Every second while closes wait: write them (backing off while the database is down)."""

    name = "connection.close retry"

    def __init__(self, broker: Broker) -> None:
        super().__init__(broker, 1.0, max_backoff=5.0)
        self.queue = pending_for(broker)

    async def tick(self) -> None:
        """Raises: Unavailable: the database could not be reached."""
        if len(self.queue):
            await asyncio.to_thread(self.queue.flush)


class InstanceLoop(Loop):
    """Every third of ``instance_lease``: this process's heartbeat, then ``close_lost``."""

    name = "broker heartbeat"

    def __init__(self, broker: Broker) -> None:
        interval = broker.settings.instance_lease / 3
        super().__init__(broker, interval, max_backoff=interval)

    async def tick(self) -> None:
        """Raises: Unavailable: the database could not be reached."""
        await asyncio.to_thread(heartbeat, self.broker)
        await asyncio.to_thread(close_lost, self.broker)
