"""The statement log: every statement a channel relays, batched into ``connection.statements``
ledger entries (not one chain append per statement), with a bounded buffer that fails closed.

The channel hands each ``Tap.take()`` batch to ``statement_log_for(broker).add(...)`` on the event
loop *before* forwarding the bytes that carried it. ``add`` does no database work: it numbers the
statements within their connection (``n``, from 0) and queues them, O(1) per statement; at the
end of the loop turn the turn's statements get the broker's time (one reading for all of them)
and one journal write. :class:`StatementFlushLoop` (a worker thread, never the event loop)
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
that stops writes what is queued until its stop deadline (``stop``); what one that dies had
queued but not written is in its journal (``audit.journal``: each loop turn's statements are
appended there at the end of the turn), which the next process on the data folder replays at its
start (``StatementFlushLoop.run`` -> ``read_journals``/``queue_recovered``). A journal that cannot
be written makes ``add`` refuse from then on (fail closed).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from access.broker.audit import journal, ledger
from access.broker.audit.actions import Action
from access.broker.audit.journal import Journal, JournalError
from access.broker.audit.turn import (
    BATCH_STATEMENTS,
    ROW_OVERHEAD,
    AddSide,
    Queued,
    Rows,
    details_json,
    pieces_of,
    statements_json,
    take_queue,
)
from access.broker.clock import SystemClock
from access.broker.errors import BrokerError
from access.broker.loops import Loop
from access.broker.observe.metrics import metrics_for
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

BATCH_BYTES = 256 * 1024  # about this much text in one ledger entry at most (one statement more may pass it)
GROUP_ENTRIES = 16  # entries written in one transaction at most (one chain lock, one commit)


# What ``add`` hands to the writer (``audit.turn.Queued``): (connection, grant, service, actor,
# number of the first statement, the broker's time in µs since the epoch, the statements' ledger
# pieces, their sizes, the journal generation they are in); ``close`` hands (connection, ...,
# -1, _CLOSE, (), 0) and a journal rotation ("", ..., -1, _SEAL, (), old).
_Item = Queued
# Two distinct pieces, compared by identity (no add's pieces are either object).
_CLOSE: tuple[str, ...] = ("close",)
_SEAL: tuple[str, ...] = ("seal",)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _within_bytes(sizes: list[int]) -> tuple[int, int]:
    """How many of ``sizes`` fit in ``BATCH_BYTES`` (at least one), and their size."""
    size = 0
    for i, row_size in enumerate(sizes):
        if i and size + row_size > BATCH_BYTES:
            return i, size
        size += row_size
    return len(sizes), size


class StatementLog:
    """The statements of this process's channels not yet in the ledger, per connection, in order.

    Two sides, no lock between them: the event loop's ``add``/``close`` append to a queue (a
    deque: its ``append`` and ``popleft`` are atomic) and count what they added; the writer
    (``flush``, one thread at a time) moves the queue into its per-connection rows, writes them
    and counts what it wrote. Each counter has one writing thread; ``pending`` is their
    difference, so the ceiling holds without the event loop ever waiting for the writer.
    """

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        metrics_for(broker).statement_log = weakref.ref(self)  # read when scraped (observe)
        self.limit = broker.settings.statement_log_limit
        self.max_bytes = broker.settings.statement_log_bytes
        self._queue: deque[_Item] = deque()  # add/close -> the writer
        # The event loop's side (compiled: ``audit.turn``): the counters, the numbers, the turn.
        self.side = AddSide(self.limit, self.max_bytes)
        self.side.schedule = self._end_turn  # no loop bound: each add is written at once
        self._connections: dict[str, Rows] = {}  # the writer's side
        self._writer = threading.Lock()  # one writer at a time keeps each connection's batches in order
        self.entries = 0  # ledger entries written, since the start
        self.waiting_logged = False
        # The journal (audit.journal): what add queued is on disk before the writer has it. With
        # an event loop bound (``bind``), one write per loop turn for what that turn added.
        self.journal = Journal(Path(broker.settings.data_dir) / "statements")
        self.journal_failed: str | None = None  # why the journal cannot be written: add refuses
        # The end of a loop turn runs compiled (``AddSide.end_turn``), with these.
        self.side.append = self.journal.append
        self.side.put = self._queue.append
        self.side.failed = self._journal_failed
        self.side.seal = _SEAL
        clock = broker.clock
        if type(clock) is not SystemClock:  # the system's is read natively (µs since the epoch)
            self.side.now_us = lambda: (clock.now() - _EPOCH) // _MICROSECOND
        self._outstanding: dict[int, int] = {}  # the writer's side: rows not written per generation
        self._sealed: set[int] = set()  # the writer's side: generations that take no more rows
        self._recovered: dict[int, list[tuple[Path, int]]] = {}  # replayed files per generation

    @property
    def pending(self) -> int:
        """Statements queued, not yet in the ledger."""
        return self.side.added - self.side.done

    @property
    def pending_bytes(self) -> int:
        return self.side.added_bytes - self.side.done_bytes

    @property
    def has_work(self) -> bool:
        """Statements to write, or something queued for the writer (a close, a journal to drop)."""
        return bool(self.pending or self._queue or self._sealed)

    @property
    def written(self) -> int:
        """Statements written to the ledger, since the start."""
        return self.side.done

    @property
    def refused(self) -> int:
        """Statements ``add`` refused (the buffer was full, or the journal failed), since the start."""
        return self.side.refused

    @property
    def on_due(self) -> Callable[[], None] | None:
        """Called when the writer should flush soon (a full batch, an ended channel): the flush loop's."""
        return self.side.wake

    @on_due.setter
    def on_due(self, wake: Callable[[], None] | None) -> None:
        self.side.wake = wake

    def add(
        self,
        *,
        connection_id: str,
        grant_id: str,
        service: str,
        actor: str,
        statements: Sequence[Statement],
    ) -> bool:
        """Queue ``statements`` of one connection (no database work, no lock: for the event loop).

        Returns False, having queued none of them, when they do not fit in the buffer (it is full,
        typically because the database has been unreachable for a while): the caller must not
        forward the bytes that carried them, and should end the channel (fail closed).
        """
        return self.side.add(connection_id, grant_id, service, actor, statements)

    def close(self, connection_id: str) -> None:
        """The channel ended: write its statements soon and then forget it (for the event loop)."""
        if not self.side.forget(connection_id):
            return  # it never had a statement
        self._end_turn()  # now: its last statements go to the writer before it
        self._queue.append((connection_id, "", "", "", 0, -1, _CLOSE, (), self.side.generation))
        if self.on_due is not None:
            self.on_due()

    def bind(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """``add`` runs on ``loop`` (one journal write per loop turn), or (None) on any thread,
        each ``add`` written at once."""
        self._end_turn()
        self.side.schedule = self._end_turn if loop is None else partial(loop.call_soon, self.side.end_turn)

    def _end_turn(self) -> None:
        """Write this turn's statements to the journal, then hand them to the writer
        (``AddSide.end_turn``, compiled: this runs once per loop turn with statements)."""
        self.side.end_turn()

    def _journal_failed(self, exc: Exception) -> None:
        """The journal could not be written: ``add`` refuses from now on (the side is shut)."""
        if not isinstance(exc, JournalError):
            log.exception("statement journal failed, channels to logged-in services stop", exc_info=exc)
        elif self.journal_failed is None:
            log.error("statement journal failed, channels to logged-in services stop: %s", exc)
        self.journal_failed = str(exc)

    def _take_queue(self) -> None:
        """The writer: move what ``add`` and ``close`` queued into the per-connection rows."""
        take_queue(self._queue, self._connections, self._outstanding, self._sealed, _CLOSE, _SEAL)

    def flush(self, *, full_only: bool = False) -> int:
        """Worker thread: write every queued statement, one entry per connection and batch, in
        order; return how many statements were written. ``full_only``: only full batches and
        what ended channels left (a wake-up for a full batch must not write every other channel's
        few statements as entries of their own: the interval's flush takes those).

        Raises:
            Unavailable: the database could not be reached; what is left stays queued.
        """
        if not self._writer.acquire(blocking=False):
            return 0  # another thread is writing: it takes what was just queued too
        written = 0
        side = self.side
        try:
            self._take_queue()
            budget = sum(conn.waiting for conn in self._connections.values())
            # (what is queued now: channels that keep adding wait for the next flush)
            while written < budget:
                group = self._next_group(full_only)
                if not group:
                    break
                self._write(group)
                for conn, _pos, count, size in group:
                    conn.written(count, self._outstanding)
                    side.done_bytes += size
                    side.done += count
                    written += count
                    self.entries += 1
                for conn, _pos, _count, _size in group:
                    if conn.waiting:  # to the back of the line: one busy channel does not hold up the others
                        self._connections.pop(conn.connection_id, None)
                        self._connections[conn.connection_id] = conn
                    elif conn.closed:
                        self._connections.pop(conn.connection_id, None)
                self.journal.note_written(
                    list({conn.connection_id: conn.first_n for conn, _p, _c, _s in group}.items())
                )
                self._drop_written_journals()
        finally:
            self._writer.release()
        if self.waiting_logged and written:
            log.warning("statements that waited for the database are in the audit ledger")
            self.waiting_logged = False
        return written

    def _drop_written_journals(self) -> None:
        """The writer: delete each journal that takes no more rows and has all of its rows written."""
        for generation in [g for g in self._sealed if not self._outstanding.get(g)]:
            self._sealed.discard(generation)
            self._outstanding.pop(generation, None)
            held = self._recovered.pop(generation, None)
            if held is not None:
                journal.release(held, delete=True)
            else:
                self.journal.drop(generation)

    def recover(self) -> int:
        """At the start: queue what dead processes' journals hold and their writer had not
        written (see audit.journal); returns how many statements. The files are deleted once
        those are in the ledger. On the thread that adds (``read_journals`` is the part that
        reads files, for a worker thread)."""
        return self.queue_recovered(self.read_journals())

    def read_journals(self) -> tuple[list[_Item], list[tuple[Path, int]], int]:
        """Worker thread: the queue items of dead processes' journals, the files, the bytes."""
        recovered, held = journal.recover(self.journal.directory)
        generation = -(len(self._recovered) + 1)
        items: list[_Item] = []
        size = 0
        for item in recovered:
            start = 0
            while start < len(item.statements):
                at_us = item.at_us[start]
                end = start + 1
                while end < len(item.statements) and item.at_us[end] == at_us:
                    end += 1
                bodies, sizes = pieces_of(
                    [
                        Statement(str(kind), str(text), None if name is None else str(name))
                        for kind, text, name in item.statements[start:end]
                    ]
                )
                size += sum(sizes)
                first = item.first + start
                items.append(
                    (
                        item.connection,
                        item.grant,
                        item.service,
                        item.actor,
                        first,
                        at_us,
                        bodies,
                        sizes,
                        generation,
                    )
                )
                start = end
        return items, held, size

    def queue_recovered(self, found: tuple[list[_Item], list[tuple[Path, int]], int]) -> int:
        """The add side: hand ``read_journals``' items to the writer, counted as added."""
        items, held, size = found
        if not held:
            return 0
        generation = items[0][8] if items else -(len(self._recovered) + 1)
        count = sum(len(item[6]) for item in items)
        with self._writer:
            self._recovered[generation] = held
        self._queue.extend(items)
        for connection_id in dict.fromkeys(item[0] for item in items):  # their channels are gone
            self._queue.append((connection_id, "", "", "", 0, -1, _CLOSE, (), generation))
        self._queue.append(("", "", "", "", 0, -1, _SEAL, (), generation))
        self.side.added += count
        self.side.added_bytes += size
        if count:
            log.warning(
                "%d statements of %d connections recovered from the journals of a broker process "
                "that stopped before writing them: they go to the audit ledger now",
                count,
                len({item[0] for item in items}),
            )
        if self.on_due is not None:
            self.on_due()
        return count

    def _next_group(self, full_only: bool = False) -> list[tuple[Rows, int, int, int]]:
        """The next entries to write in one transaction (the writer's side): each connection's
        oldest batch in turn, then each one's next, at most ``GROUP_ENTRIES`` in all; each as
        (connection, its first row, how many rows, the bytes they count against the ceiling).
        ``full_only``: a batch short of ``BATCH_STATEMENTS`` (and of ``BATCH_BYTES``) only for
        a closed connection."""
        group: list[tuple[Rows, int, int, int]] = []
        cursors = [(conn, conn.start) for conn in self._connections.values() if conn.waiting]
        while cursors:
            later: list[tuple[Rows, int]] = []
            for conn, pos in cursors:
                sizes = conn.sizes[pos : pos + BATCH_STATEMENTS]
                count, size = len(sizes), sum(sizes)
                if size > BATCH_BYTES:
                    count, size = _within_bytes(sizes)
                elif full_only and count < BATCH_STATEMENTS and not conn.closed:
                    continue  # a partial batch of a live channel: the interval's flush writes it
                group.append((conn, pos, count, size))
                if len(group) >= GROUP_ENTRIES:
                    return group
                pos += count
                if pos < len(conn.sizes):
                    later.append((conn, pos))
            cursors = later
        return group

    def _write(self, group: list[tuple[Rows, int, int, int]]) -> None:
        """One transaction: one ledger entry per (connection, rows), in order (all or none).

        Each entry's details are put together as canonical JSON text from the pieces the event
        loop quoted for the journal (``audit.turn``), not built as objects and encoded again."""
        with self.broker.transaction() as db:
            first_of: dict[str, int] = {}
            for conn, pos, count, _size in group:
                first = first_of.get(conn.connection_id, conn.first_n)
                first_of[conn.connection_id] = first + count
                stamp = conn.stamps[pos]
                details = details_json(
                    ledger.format_time(_EPOCH + timedelta(microseconds=stamp)),
                    conn.connection_id,
                    count,
                    first,
                    conn.grant_id,
                    conn.service,
                    statements_json(conn.bodies, conn.stamps, pos, pos + count),
                )
                ledger.append_canonical(
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
        self.bind(None)
        self.flush_now()
        with self._writer:
            for held in self._recovered.values():
                journal.release(held, delete=False)
            self._recovered.clear()
            self.journal.close(delete=not self.pending)
        if self.pending:
            log.error(
                "%d statements could not be written to the audit ledger before the stop: they stay "
                "in the statement journal, for the next start on this data folder",
                self.pending,
            )


_MICROSECOND = timedelta(microseconds=1)


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

    full = True  # this tick writes everything (the interval), not only full batches (a wake-up)

    async def tick(self) -> None:
        """Raises: Unavailable: the database could not be reached."""
        if self.log.has_work:
            await asyncio.to_thread(partial(self.log.flush, full_only=not self.full))

    async def run(self) -> None:
        """Forever: every interval write everything; between, on a wake-up (a full batch, an
        ended channel) write just that; back off while flushing fails (then wake-ups wait for
        the backoff too). Wake-ups do not move the interval's clock."""
        loop = asyncio.get_running_loop()
        due = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(due.set)

        self.log.on_due = wake
        self.log.bind(loop)
        self.log.queue_recovered(await asyncio.to_thread(self.log.read_journals))
        delay = self.interval
        next_full = loop.time() + self.interval
        try:
            while True:
                if self.failing:
                    await asyncio.sleep(delay)
                    self.full = True
                else:
                    try:
                        await asyncio.wait_for(due.wait(), max(0.0, next_full - loop.time()))
                        self.full = loop.time() >= next_full
                    except TimeoutError:
                        self.full = True
                due.clear()
                if self.full:
                    next_full = loop.time() + self.interval
                await self.step()
                delay = self.next_delay(delay)
        finally:
            if self.log.on_due is wake:
                self.log.on_due = None
            self.log.bind(None)
