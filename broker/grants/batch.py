"""Grant requests in turn on one writer thread, several in one transaction (group commit).

``POST /v1/grants`` hands its request to the app's ``GrantWriter`` instead of the generic
thread pool: one thread per app takes the requests waiting, in the order they came, and serves
up to ``MAX_BATCH`` of them in ONE transaction (``request_grants_for``): one checkout, one BEGIN
and one COMMIT, one ledger lock and head read for all of them, instead of eight threads queued
for SQLite's one connection (each hand-off of it a GIL hand-off) or, on PostgreSQL, a ping, a
BEGIN, a COMMIT and a ledger lock and head read per request.

Each request keeps its own outcome:

1. every request is first decided with reads only (``requests.ask_each``: the sessions of all
   of them in one statement, the policy, the locks in force on their users and services held
   and read in one statement each); a refusal there (a revoked session, a bad service) is that
   request's answer, and nothing is written for it;
2. then every decided request is recorded in turn (``requests.record_asked``: its
   ``grant.request`` and decision entries on the one hash chain, the grant, its notices), the
   batch's grants and ledger entries inserted at the end in one statement each
   (``store.deferred``), before the COMMIT. What a request writes never changes another's
   decision: decisions read sessions and locks, and requests write neither. Locks in force are
   read (and on PostgreSQL held shared) for all of them before the ledger's lock is taken, the
   order every other writer takes them in;
3. if recording one of them fails (a database error that is not the database being down, a
   ledger found unsafe, a bug), the whole transaction is rolled back and each request of the
   batch is served again alone, in a transaction of its own (``requests.request_grant_for``),
   so it gets the outcome it would have had alone; nothing of the failed batch was written (a
   batch of one request, served the same way, has its failure for its answer at once);
4. if the database is down or did not answer (``Unavailable``), every request of the batch is
   answered 503 and nothing of any of them was written (fail closed); a COMMIT that may or may
   not have happened answers each that the outcome is unknown.

A batch is every request waiting when the writer is free; if fewer wait than the last batch
served, it first waits for that many, at most ``LINGER`` seconds (``GrantWriter._gather``).

Every wait is bounded: at most ``MAX_QUEUE`` requests wait (the next one is answered 503 at
once), a request that waited longer than the pool's timeout is answered 503 without being
served, a batch gathers for ``LINGER`` at most, and each batch's statements are bounded by the
database timeouts. The ledger stays one
chain across replicas: its lock is the database's (``audit.ledger``). The thread ends after
``IDLE_EXIT`` seconds without requests and starts again with the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa

from access.broker.audit import ledger
from access.broker.auth.principal import AuthContext
from access.broker.auth.tokencache import AccessClaims
from access.broker.errors import Unavailable
from access.broker.grants import lifecycle, requests
from access.broker.runtime import Broker, database_down
from access.broker.store import grants as store
from access.shared.models import Grant, GrantRequest

__all__ = ["IDLE_EXIT", "LINGER", "MAX_BATCH", "MAX_QUEUE", "Ask", "GrantWriter", "request_grants_for"]

MAX_BATCH = 32  # requests in one transaction
MAX_QUEUE = 1024  # requests waiting for the writer; the next one is refused (503)
IDLE_EXIT = 2.0  # seconds without a request before the writer thread ends
LINGER = 0.002  # seconds a batch waits, at most, for as many requests as the last one served


@dataclass(frozen=True)
class Ask:
    """One ``POST /v1/grants``: the bearer's verified claims, the body, and who to tell the caller."""

    claims: AccessClaims
    request: GrantRequest
    seen: Callable[[AuthContext], None] | None = None


# What each request of a batch comes to: recorded (to settle after the commit), or its error.
Served = requests.Outcome | BaseException


class _RecordFailed(Exception):
    """Recording one request of a batch failed: roll the batch back and serve each alone."""


def request_grants_for(broker: Broker, asks: Sequence[Ask]) -> list[Served]:
    """Serve ``asks`` in one transaction, each with its own outcome (see the module's text):
    for each, in order, its ``Outcome`` (committed; ``requests.settle`` gives the answer) or the
    exception that is its answer. Never raises for one request's sake. A lone request is served
    the same way (its statements sent together as a batch's are, ``store.pipeline``), and a
    failure is then its answer at once.
    """
    policy = broker.policy  # one policy for the batch: a reload swaps it from another thread
    served: list[Served | None] = [None] * len(asks)
    try:
        with lifecycle.transaction(broker) as tx:
            now = broker.clock.now()
            answers = requests.ask_each(
                tx, policy, [(one.claims, one.request, one.seen) for one in asks], now
            )
            decided: list[tuple[int, requests.Asked]] = []
            for i, answer in enumerate(answers):
                if isinstance(answer, requests.Asked):
                    decided.append((i, answer))
                else:  # refused with reads only, nothing written: this one's answer
                    served[i] = answer
            try:
                # The batch's grants and ledger entries in one insert each, at the end, in this
                # transaction (the decisions above read neither).
                with store.deferred(tx.conn), ledger.deferred(tx.conn):
                    for i, asked in decided:
                        served[i] = requests.record_asked(tx, asked)
            except sa.exc.SQLAlchemyError as exc:
                if database_down(exc):
                    raise  # the database is down: every request of the batch is answered 503
                raise _RecordFailed from exc
            except Exception as exc:
                raise _RecordFailed from exc
    except _RecordFailed as failed:
        return _each_alone(broker, asks, failed.__cause__ or failed)
    except Unavailable as exc:  # down, or the COMMIT's outcome unknown: the same for all of them
        return [exc] * len(asks)
    except sa.exc.SQLAlchemyError as exc:  # a refusal or error of the database while deciding: alone
        return _each_alone(broker, asks, exc)
    # Every request has its outcome by now; one without would be a bug, answered as one (a 500).
    return [RuntimeError("a batched grant request got no outcome") if one is None else one for one in served]


def _each_alone(broker: Broker, asks: Sequence[Ask], failure: BaseException) -> list[Served]:
    """After the batch's ``failure``: each request served again in a transaction of its own; a
    request that was alone has the failure for its answer (served again, it would fail again)."""
    if len(asks) == 1:
        return [failure]
    return [_alone(broker, one) for one in asks]


def _alone(broker: Broker, one: Ask) -> Served:
    """``one`` in a transaction of its own, as ``requests.request_grant_for`` serves it."""
    policy = broker.policy
    try:
        with lifecycle.transaction(broker) as tx:
            caller = requests.caller_of(broker, one.claims, one.seen)
            return requests.record_asked(
                tx, requests.ask(tx, policy, caller, one.request, broker.clock.now())
            )
    except Exception as exc:  # its answer: the route raises it as request_grant_for would have
        return exc


@dataclass
class _Job:
    ask: Ask
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[requests.Outcome]
    queued_at: float = field(default_factory=time.monotonic)


def _deliver(done: list[tuple[_Job, Served]]) -> None:
    """On the job's event loop: each future gets its outcome (unless its request was abandoned)."""
    for job, outcome in done:
        if job.future.done():
            continue
        if isinstance(outcome, BaseException):
            job.future.set_exception(outcome)
        else:
            job.future.set_result(outcome)


class GrantWriter:
    """The app's writer of grant requests: a bounded queue and one thread (see the module's text)."""

    def __init__(
        self,
        broker: Broker,
        *,
        max_batch: int = MAX_BATCH,
        max_queue: int = MAX_QUEUE,
        idle: float = IDLE_EXIT,
        linger: float = LINGER,
    ) -> None:
        self.broker = broker
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.idle = idle
        self.linger = linger
        # The longest a request waits for the writer: as long as it would for a pooled connection.
        self.max_wait = broker.settings.pool.timeout
        self._jobs: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._waiting = False  # the thread waits for requests (the one that makes ``_want`` wakes it)
        self._want = 1
        self.batches = 0  # transactions served (tests and the benchmark read it)

    @property
    def waiting(self) -> int:
        """How many requests wait for the writer (tests read it)."""
        with self._cond:
            return len(self._jobs)

    @property
    def gathering(self) -> bool:
        """The writer waits for more requests before serving those waiting (``_gather``)."""
        with self._cond:
            return self._waiting and self._want > 1

    async def request(self, one: Ask) -> Grant:
        """``requests.request_grant_for(broker, one.claims, one.request, seen=one.seen)``, served in turn.

        Raises:
            Unavailable: too many requests waiting, or this one waited too long (nothing recorded).
            everything ``request_grant_for`` raises.
        """
        loop = asyncio.get_running_loop()
        job = _Job(one, loop, loop.create_future())
        with self._cond:
            if len(self._jobs) >= self.max_queue:
                raise _busy()
            self._jobs.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="grant-writer", daemon=True)
                self._thread.start()
            elif self._waiting and len(self._jobs) >= self._want:
                self._cond.notify()  # else it is serving (and takes this one next) or gathering
        outcome = await job.future
        if outcome.blocking:  # a dynamic identity is made on the target: not on the event loop
            return await asyncio.to_thread(requests.settle, self.broker, outcome)
        return requests.settle(self.broker, outcome)

    def _run(self) -> None:
        served = 1  # the last batch's size
        while True:
            with self._cond:
                while not self._jobs:
                    self._waiting = True
                    woken = self._cond.wait(self.idle)
                    self._waiting = False
                    if not woken and not self._jobs:
                        self._thread = None
                        return
                self._gather(min(served, self.max_batch))
                # All that waits, up to the ceiling, shares this batch's transaction.
                batch = [self._jobs.popleft() for _ in range(min(len(self._jobs), self.max_batch))]
            self._serve(batch)
            served = len(batch)

    def _gather(self, want: int) -> None:
        """Wait, at most ``linger`` seconds, until ``want`` requests wait (the lock is held).

        The clients of the batch just answered tend to come back together, a moment after their
        answers: the one request that came while the batch was served would otherwise be
        served alone, and the others in the next batch, two transactions where one would do
        (under steady load at concurrency 8, batches of 1 and 7 in turn). Woken by the request
        that makes ``want``, not by each; one that does not come costs one ``linger``, and the
        next batch then waits for as many as this one served.
        """
        if len(self._jobs) >= want:
            return
        deadline = time.monotonic() + self.linger
        self._want = want
        try:
            while len(self._jobs) < want:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._waiting = True
                self._cond.wait(left)
        finally:
            self._waiting = False
            self._want = 1

    def _serve(self, batch: list[_Job]) -> None:
        now = time.monotonic()
        done: list[tuple[_Job, Served]] = []
        live = []
        for job in batch:
            if job.future.cancelled():
                continue  # its client went away before it was served: nothing to record
            if now - job.queued_at > self.max_wait:
                done.append((job, _busy()))
            else:
                live.append(job)
        if live:
            try:
                outcomes = request_grants_for(self.broker, [job.ask for job in live])
            except BaseException as exc:  # a bug: every request of the batch gets it, none hangs
                outcomes = [exc] * len(live)
            self.batches += 1
            if len(outcomes) != len(live):  # a bug: answered as one (a 500), so that none hangs
                outcomes = [RuntimeError("a batch of grant requests lost its outcomes")] * len(live)
            done.extend(zip(live, outcomes, strict=True))
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Served]]] = {}
        for job, outcome in done:
            by_loop.setdefault(job.loop, []).append((job, outcome))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # its loop has closed: nobody waits for these
                loop.call_soon_threadsafe(_deliver, items)


def _busy() -> Unavailable:
    return Unavailable(
        "the broker has too many grant requests waiting, so this one was not served",
        hint="try again in a few seconds",
    )
