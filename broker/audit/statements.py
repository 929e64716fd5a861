"""The statement log: every statement a channel relays, batched into ``connection.statements``
ledger entries (not one chain append per statement), with a bounded buffer that fails closed.

The channel hands each ``Tap.take()`` batch to ``statement_log_for(broker).add(...)`` on the event
loop *before* forwarding the bytes that carried it. ``add`` does no database work: it numbers the
statements within their connection (``n``, from 0), stamps them with the broker's time and queues
them, O(1) per statement. :class:`StatementFlushLoop` (a worker thread, never the event loop)
writes what is queued as one ledger entry per connection and batch:

- every ``statement_flush_interval`` seconds (default 1),
- as soon as one connection has ``BATCH_STATEMENTS`` queued,
- and when the channel ends (``close(connection_id)``).

One entry holds at most ``BATCH_STATEMENTS`` statements or about ``BATCH_BYTES`` of text; its
details are ``{connection, grant, service, first, count, at, statements}``: statement ``first + i``
is ``statements[i] = [microseconds after at, kind, text]`` (with its ``name`` fourth where it has
one).
The entry's hash covers its details, so the chain commits to every statement's text, kind, name,
number and time: an edited statement fails ``access-broker audit verify`` like any edited entry,
and a missing batch shows as a gap in ``n``.

**Bounded, fail closed, never dropped.** The buffer of a broker process holds at most
``statement_log_limit`` statements and ``statement_log_bytes`` bytes (text plus a fixed overhead
per statement). When an ``add`` would pass either, it records nothing and returns False: the
channel must then stop forwarding (its statements were not sent to the target) and close. While
the database is down the flusher backs off and keeps everything queued, so ``add`` goes on
returning True until the ceiling, then False; once the database answers, what waited is written,
in order. A write whose COMMIT timed out may have committed after all: the retry writes the batch
again (same ``connection``/``n``), which readers (``access audit --queries``) show once. A process
that stops writes what is queued until its stop deadline (``stop``); one that dies loses what it
had queued but not written (at most about ``statement_flush_interval`` seconds of statements, or
the whole buffer while the database was down) and its ``connection.close`` says how many statements
the channel relayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.errors import BrokerError
from access.broker.loops import Loop
from access.broker.perbroker import PerBroker
from access.broker.wire.base import Statement

if TYPE_CHECKING:
    from access.broker.runtime import Broker

__all__ = [
    "BATCH_BYTES",
    "BATCH_STATEMENTS",
    "ROW_OVERHEAD",
    "StatementFlushLoop",
    "StatementLog",
    "statement_log_for",
]

log = logging.getLogger(__name__)

BATCH_STATEMENTS = 500  # statements in one ledger entry at most
BATCH_BYTES = 256 * 1024  # about this much text in one ledger entry at most (one statement more may pass it)
ROW_OVERHEAD = 96  # bytes counted per queued statement besides its text (numbers, time, kind, name)


# A queued statement: the broker's time of its ``add`` and the statement (its number is the
# connection's ``first_n`` plus its place in the queue). A tuple: ``add`` makes one per statement.
_Row = tuple[datetime, Statement]


def _size(row: _Row) -> int:
    return len(row[1].text) + ROW_OVERHEAD


@dataclass(slots=True)
class _Connection:
    connection_id: str
    grant_id: str
    service: str
    actor: str
    rows: deque[_Row] = field(default_factory=deque)
    first_n: int = 0  # the number of rows[0]
    next_n: int = 0
    closed: bool = False


class StatementLog:
    """The statements of this process's channels not yet in the ledger, per connection, in order."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.limit = broker.settings.statement_log_limit
        self.max_bytes = broker.settings.statement_log_bytes
        self._connections: dict[str, _Connection] = {}
        self._count = 0
        self._bytes = 0
        self._lock = threading.Lock()  # guards the above
        self._writer = threading.Lock()  # one writer at a time keeps each connection's batches in order
        self.refused = 0  # statements ``add`` refused (the buffer was full), since the start
        self.written = 0  # statements written to the ledger, since the start
        self.entries = 0  # ledger entries written, since the start
        self.on_due: Callable[[], None] | None = None  # set by the flush loop: "flush soon"
        self.waiting_logged = False

    @property
    def pending(self) -> int:
        """Statements queued, not yet in the ledger."""
        return self._count

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def add(
        self,
        *,
        connection_id: str,
        grant_id: str,
        service: str,
        actor: str,
        statements: Sequence[Statement],
    ) -> bool:
        """Queue ``statements`` of one connection (no database work: callable from the event loop).

        Returns False, having queued none of them, when they do not fit in the buffer (it is full,
        typically because the database has been unreachable for a while): the caller must not
        forward the bytes that carried them, and should end the channel (fail closed).
        """
        if not statements:
            return True
        size = 0
        for statement in statements:
            size += len(statement.text) + ROW_OVERHEAD
        at = self.broker.clock.now()
        with self._lock:
            if self._count + len(statements) > self.limit or self._bytes + size > self.max_bytes:
                self.refused += len(statements)
                return False
            conn = self._connections.get(connection_id)
            if conn is None:
                conn = self._connections[connection_id] = _Connection(connection_id, grant_id, service, actor)
            rows = conn.rows
            rows.extend([(at, statement) for statement in statements])
            conn.next_n += len(statements)
            conn.closed = False
            self._count += len(statements)
            self._bytes += size
            # Wake the writer when this connection's queue reaches another full batch (once, not
            # on every add after it: while the database is down the queue only grows).
            due = (len(rows) - len(statements)) // BATCH_STATEMENTS < len(rows) // BATCH_STATEMENTS
        if due and self.on_due is not None:
            self.on_due()
        return True

    def close(self, connection_id: str) -> None:
        """The channel ended: write its statements soon and then forget it (callable from the event loop)."""
        with self._lock:
            conn = self._connections.get(connection_id)
            if conn is None:
                return
            if not conn.rows:
                del self._connections[connection_id]
                return
            conn.closed = True
        if self.on_due is not None:
            self.on_due()

    def flush(self) -> int:
        """Worker thread: write every queued statement, one entry per connection and batch, in
        order; return how many statements were written.

        Raises:
            Unavailable: the database could not be reached; what is left stays queued.
        """
        if not self._writer.acquire(blocking=False):
            return 0  # another thread is writing: it takes what was just queued too
        written = 0
        try:
            with self._lock:
                budget = self._count  # what is queued now: channels that keep adding wait for the next flush
            while written < budget:
                with self._lock:
                    batch = self._next_batch()
                if batch is None:
                    break
                conn, rows = batch
                self._write(conn, rows)
                with self._lock:
                    for _ in rows:
                        conn.rows.popleft()
                    conn.first_n += len(rows)
                    self._count -= len(rows)
                    self._bytes -= sum(_size(row) for row in rows)
                    if conn.rows:  # to the back of the line: one busy channel does not hold up the others
                        self._connections.pop(conn.connection_id, None)
                        self._connections[conn.connection_id] = conn
                    elif conn.closed:
                        self._connections.pop(conn.connection_id, None)
                written += len(rows)
                self.written += len(rows)
                self.entries += 1
        finally:
            self._writer.release()
        if self.waiting_logged and written:
            log.warning("statements that waited for the database are in the audit ledger")
            self.waiting_logged = False
        return written

    def _next_batch(self) -> tuple[_Connection, list[_Row]] | None:
        """The oldest statements of the first connection with any (under ``_lock``)."""
        for conn in self._connections.values():
            if not conn.rows:
                continue
            rows: list[_Row] = []
            size = 0
            for row in conn.rows:
                row_size = _size(row)
                if len(rows) >= BATCH_STATEMENTS or (rows and size + row_size > BATCH_BYTES):
                    break
                rows.append(row)
                size += row_size
            return conn, rows
        return None

    def _write(self, conn: _Connection, rows: list[_Row]) -> None:
        details: dict[str, Any] = {
            "connection": conn.connection_id,
            "grant": conn.grant_id,
            "service": conn.service,
            "first": conn.first_n,
            "count": len(rows),
            "at": ledger.format_time(rows[0][0]),
            "statements": _compact(rows),
        }
        with self.broker.transaction() as db:
            ledger.append(
                db,
                self.broker.clock,
                actor=conn.actor,
                action=Action.CONNECTION_STATEMENTS,
                # grants.grant_target's form ("service:NAME/GRANT"): ``--service`` and ``--grant`` find it
                target=f"service:{conn.service}/{conn.grant_id}",
                details=details,
            )

    def flush_now(self) -> None:
        """Worker thread: ``flush``, and say once (not per batch) when statements must wait."""
        try:
            self.flush()
        except BrokerError as exc:
            if not self.waiting_logged:
                log.warning(
                    "%d statements wait for the database (%s): written when it is back; "
                    "channels stop when %d are waiting",
                    self.pending,
                    exc.message,
                    self.limit,
                )
            self.waiting_logged = True

    def stop(self, deadline: float) -> None:
        """On a graceful stop: write what is queued, trying until ``deadline`` (a monotonic time).
        Never raises."""
        while True:
            self.flush_now()
            if not self.pending or time.monotonic() >= deadline:
                break
            time.sleep(0.2)  # a bounded retry: the database may be back in a moment
        if self.pending:
            log.error("%d statements could not be written to the audit ledger before the stop", self.pending)


def _compact(rows: list[_Row]) -> list[list[Any]]:
    """The rows as ``[µs after the batch's at, kind, text]`` (``+ [name]`` where there is one).

    Lists, not objects, and an integer offset, not a time per row: the hash's canonical JSON
    (RFC 8785, pure Python) costs per item, and this form costs a third of ``{n, at, kind, text}``.
    Text is made valid UTF-8 first (a lone surrogate would make the entry unhashable, and the
    batch unwritable for ever).
    """
    start = rows[0][0]
    compact: list[list[Any]] = []
    for at, statement in rows:
        text = statement.text if statement.text.isascii() else _utf8(statement.text)
        offset = (at - start) // _MICROSECOND
        item: list[Any] = [offset, statement.kind, text]
        if statement.name is not None:
            item.append(statement.name if statement.name.isascii() else _utf8(statement.name))
        compact.append(item)
    return compact


_MICROSECOND = timedelta(microseconds=1)


def _utf8(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


_logs = PerBroker(StatementLog)


def statement_log_for(broker: Broker) -> StatementLog:
    """The statement log of ``broker`` (one per broker object; gone when the broker is)."""
    return _logs(broker)


class StatementFlushLoop(Loop):
    """Writes the statement log every ``statement_flush_interval`` seconds, or sooner when a
    connection has a full batch or ended; backs off while the database is down."""

    name = "statement log"

    def __init__(self, broker: Broker) -> None:
        super().__init__(broker, broker.settings.statement_flush_interval, max_backoff=5.0)
        self.log = statement_log_for(broker)

    async def tick(self) -> None:
        """Raises: Unavailable: the database could not be reached."""
        if self.log.pending:
            await asyncio.to_thread(self.log.flush)

    async def run(self) -> None:
        """Forever: wait for the interval (or a full batch or an ended channel), flush; back off
        while flushing fails (then wake-ups wait for the backoff too)."""
        loop = asyncio.get_running_loop()
        due = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(due.set)

        self.log.on_due = wake
        delay = self.interval
        try:
            while True:
                if self.failing:
                    await asyncio.sleep(delay)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(due.wait(), delay)
                due.clear()
                await self.step()
                delay = self.next_delay(delay)
        finally:
            if self.log.on_due is wake:
                self.log.on_due = None
