"""Grant requests served together (``grants.batch``): one transaction for several requests, each
with the outcome and the audit entries it would have had alone; the database down during a
batch answers every request 503 with nothing written; one hash chain under concurrency."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from access.broker.audit.checkpoints import verify_ledger
from access.broker.auth import tokens
from access.broker.auth.sessions import revoke_session
from access.broker.errors import GrantDenied, InvalidRequest, Locked, NotFound, Unauthenticated, Unavailable
from access.broker.grants import requests
from access.broker.grants.batch import Ask, GrantWriter, request_grants_for
from access.broker.locks.switch import put_lock
from access.broker.runtime import Broker
from access.broker.store.tables import audit_log, grants
from access.shared.models import Grant, GrantRequest
from tests.broker.conftest import BASE_URL, add_user, login
from tests.fakes.dbproxy import FreezableProxy

pytestmark = pytest.mark.anyio


def ask_for(broker: Broker, name: str, groups: tuple[str, ...] = ("sre",), **body: Any) -> Ask:
    issued = login(broker, add_user(broker, name, groups))
    fields = {"service": "svc-payments", "scope": "read", "ttl": "30m", "reason": f"INC-{name}", **body}
    return Ask(tokens.verify_access_token(broker, issued.access_token), GrantRequest(**fields))


def entries(broker: Broker) -> list[tuple[str, str, dict[str, Any]]]:
    """(actor, action, details) of every ledger entry, in order."""
    import json

    with broker.transaction() as conn:
        rows = conn.execute(sa.select(audit_log).order_by(audit_log.c.seq)).all()
    return [(row.actor, row.action, json.loads(row.details)) for row in rows]


def counts(broker: Broker) -> tuple[int, int]:
    with broker.transaction() as conn:
        count = sa.select(sa.func.count())
        return (
            conn.execute(count.select_from(grants)).scalar_one(),
            conn.execute(count.select_from(audit_log)).scalar_one(),
        )


def chain_ok(broker: Broker) -> bool:
    return verify_ledger(broker.engine, broker.audit_key.public_key()).ok


class Begins:
    """How many transactions the engine began (its ``begin`` events)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine, self.count = engine, 0
        sa.event.listen(engine, "begin", self._on_begin)

    def _on_begin(self, _conn: sa.Connection) -> None:
        self.count += 1

    def close(self) -> None:
        sa.event.remove(self.engine, "begin", self._on_begin)


def settled(broker: Broker, served: object) -> object:
    """What the route answers for one served request: the grant, or the exception."""
    if isinstance(served, BaseException):
        return served
    assert isinstance(served, requests.Outcome)
    try:
        return requests.settle(broker, served)
    except Exception as exc:
        return exc


def test_a_batch_is_one_transaction_and_each_request_keeps_its_own_outcome(any_broker: Broker) -> None:
    broker = any_broker
    alice = ask_for(broker, "alice")
    revoked = ask_for(broker, "bob")
    with broker.transaction() as conn:
        revoke_session(conn, broker.clock, revoked.claims.session_id, "logout")
    unknown = ask_for(broker, "carol", service="svc-nowhere")
    bad_scope = ask_for(broker, "dave", scope="bad scope!")
    too_long = ask_for(broker, "erin", ttl="2h")
    outsider = ask_for(broker, "frank", groups=("nobody",))
    locked = ask_for(broker, "grace")
    put_lock(broker, "user", "grace", actor="admin:test", reason="INC-7 offboarding")
    zoe = ask_for(broker, "zoe")
    asks = [alice, revoked, unknown, bad_scope, too_long, outsider, locked, zoe]
    before = len(entries(broker))

    begins = Begins(broker.engine)
    try:
        served = request_grants_for(broker, asks)
    finally:
        begins.close()
    assert begins.count == 1  # one transaction for all eight
    answers = [settled(broker, one) for one in served]

    first, *_, last = answers
    assert getattr(first, "subject", None) == "alice" and getattr(first, "state", None) == "active"
    assert getattr(last, "subject", None) == "zoe" and getattr(last, "state", None) == "active"
    assert isinstance(answers[1], Unauthenticated)
    assert isinstance(answers[2], NotFound)
    assert isinstance(answers[3], InvalidRequest)
    assert isinstance(answers[4], GrantDenied) and "30m" in (answers[4].hint or "")
    assert isinstance(answers[5], GrantDenied)
    assert isinstance(answers[6], Locked) and "INC-7 offboarding" in answers[6].message

    new = entries(broker)[before:]
    by_actor: dict[str, list[str]] = {}
    for actor, action, _details in new:
        by_actor.setdefault(actor, []).append(action)
    # Refused with reads only (revoked session, unknown service, bad scope): nothing recorded.
    assert by_actor == {
        "alice": ["grant.request", "grant.issue"],
        "erin": ["grant.request", "grant.deny"],
        "frank": ["grant.request", "grant.deny"],
        "grace": ["grant.request", "grant.deny"],
        "zoe": ["grant.request", "grant.issue"],
    }
    # Each request's two entries are next to each other, in the order the requests came.
    assert [actor for actor, _action, _details in new] == [
        name for name in ("alice", "erin", "frank", "grace", "zoe") for _ in range(2)
    ]
    grace_deny = next(d for actor, action, d in new if actor == "grace" and action == "grant.deny")
    assert grace_deny["lock_id"] == answers[6].lock_id
    issued = {d["grant_id"] for _actor, action, d in new if action == "grant.issue"}
    assert issued == {getattr(first, "id", None), getattr(last, "id", None)}
    with broker.transaction() as conn:
        states = dict(conn.execute(sa.select(grants.c.subject, grants.c.state)).all())
    assert states == {
        "alice": "active",
        "erin": "denied",
        "frank": "denied",
        "grace": "denied",
        "zoe": "active",
    }
    assert chain_ok(broker)


REFUSE_SQLITE = (
    "CREATE TRIGGER refuse_reason BEFORE INSERT ON grants WHEN NEW.reason = 'INC-bob' "
    "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
)
REFUSE_PG = [
    "CREATE FUNCTION refuse_reason() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "IF NEW.reason = 'INC-bob' THEN RAISE EXCEPTION 'refused by the test' USING ERRCODE = 'check_violation'; "
    "END IF; RETURN NEW; END $$",
    "CREATE TRIGGER refuse_reason BEFORE INSERT ON grants FOR EACH ROW EXECUTE FUNCTION refuse_reason()",
]


def test_a_request_whose_recording_fails_is_served_alone_and_the_others_issue(any_broker: Broker) -> None:
    """The database refuses bob's grant (a trigger): the batch is rolled back and each request
    served again alone, so alice and carol issue, bob gets his error, and nothing of bob's is
    in the ledger."""
    broker = any_broker
    asks = [ask_for(broker, "alice"), ask_for(broker, "bob"), ask_for(broker, "carol")]
    with broker.transaction() as conn:
        for statement in REFUSE_PG if conn.dialect.name == "postgresql" else [REFUSE_SQLITE]:
            conn.exec_driver_sql(statement)
    before = len(entries(broker))

    answers = [settled(broker, one) for one in request_grants_for(broker, asks)]

    assert [getattr(a, "subject", None) for a in answers] == ["alice", None, "carol"]
    assert isinstance(answers[1], sa.exc.IntegrityError)
    assert [(actor, action) for actor, action, _ in entries(broker)[before:]] == [
        ("alice", "grant.request"),
        ("alice", "grant.issue"),
        ("carol", "grant.request"),
        ("carol", "grant.issue"),
    ]
    with broker.transaction() as conn:
        assert sorted(conn.execute(sa.select(grants.c.subject)).scalars()) == ["alice", "carol"]
    assert chain_ok(broker)


def test_the_database_down_during_a_batch_answers_every_request_503_and_writes_nothing(
    make_proxied_broker: Callable[..., Broker], proxy: FreezableProxy
) -> None:
    """PostgreSQL stops answering after the batch's first grant insert: every request of the
    batch is answered 503 (nothing was changed), and no grant and no entry of any is stored."""
    broker = make_proxied_broker()
    asks = [ask_for(broker, name) for name in ("alice", "bob", "carol")]
    before = counts(broker)

    proxy.freeze_after(b"INSERT INTO grants")
    try:
        served = request_grants_for(broker, asks)
    finally:
        proxy.thaw()

    for one in served:
        assert isinstance(one, Unavailable), one
        assert "database is unavailable, so nothing was changed" in one.message
    assert counts(broker) == before
    assert chain_ok(broker)
    # And once it answers again, the same requests issue.
    again = [settled(broker, one) for one in request_grants_for(broker, asks)]
    assert [getattr(a, "state", None) for a in again] == ["active"] * 3


class RoundTrips:
    """The round trips of every connection the engine checks out, from its checkout to its
    checkin (after the pool's check of it): libpq's trace of the protocol, where each simple
    query and each pipeline's (or extended query's) Sync gets one ReadyForQuery."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine, self.count = engine, 0
        self._traces: dict[int, Any] = {}
        sa.event.listen(engine, "checkout", self._on_checkout)
        sa.event.listen(engine, "checkin", self._on_checkin)

    def _on_checkout(self, dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        import tempfile

        from psycopg import pq

        trace = tempfile.TemporaryFile()  # noqa: SIM115 - closed at the checkin
        self._traces[id(dbapi_conn)] = trace
        dbapi_conn.pgconn.trace(trace.fileno())
        dbapi_conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

    def _on_checkin(self, dbapi_conn: Any, _record: Any) -> None:
        trace = self._traces.pop(id(dbapi_conn), None)
        if trace is None:
            return
        dbapi_conn.pgconn.untrace()
        trace.seek(0)
        data = trace.read()
        self.count += sum(line.split(b"\t")[2:3] == [b"ReadyForQuery"] for line in data.splitlines())
        trace.close()

    def close(self) -> None:
        sa.event.remove(self.engine, "checkout", self._on_checkout)
        sa.event.remove(self.engine, "checkin", self._on_checkin)


@pytest.mark.parametrize("size", [1, 2, 8])
def test_a_batch_on_postgresql_is_five_round_trips_whatever_its_size(
    make_broker: Callable[..., Broker], pg_url: str, size: int
) -> None:
    """BEGIN, the sessions' read, then the locks' holds and reads with the ledger's lock and its
    head's read in one round trip, the batch's entries and grants in one, the COMMIT
    (``store.pipeline``): five round trips after the pool's check of the connection, not nine
    (a lone request: not ten). A lock in force is still found, and the chain verifies."""
    broker = make_broker(db_url=pg_url)
    asks = [ask_for(broker, f"user-{i}") for i in range(size)]
    put_lock(broker, "user", "user-0", actor="admin:test", reason="INC-9")
    before = counts(broker)

    trips = RoundTrips(broker.engine)
    try:
        answers = [settled(broker, one) for one in request_grants_for(broker, asks)]
    finally:
        trips.close()

    assert trips.count == 5
    assert isinstance(answers[0], Locked) and "INC-9" in answers[0].message
    assert [getattr(a, "state", None) for a in answers[1:]] == ["active"] * (size - 1)
    assert counts(broker) == (before[0] + size, before[1] + 2 * size)
    assert chain_ok(broker)


async def test_concurrent_requests_through_the_writer_extend_one_chain(any_broker: Broker) -> None:
    from access.broker.app import create_app

    broker = any_broker
    app = create_app(broker, background=False)
    headers = []
    for name in ("alice", "bob", "carol"):
        issued = login(broker, add_user(broker, name, ("sre",)))
        headers.append({"authorization": f"Bearer {issued.access_token}"})
    body = {"service": "svc-payments", "scope": "read", "ttl": "30m", "reason": "INC-1"}
    denied = {**body, "ttl": "2h"}
    before = counts(broker)

    transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
        answers = await asyncio.gather(
            *(
                http.post("/v1/grants", json=denied if i % 6 == 5 else body, headers=headers[i % 3])
                for i in range(30)
            )
        )

    codes = [answer.status_code for answer in answers]
    assert codes == [403 if i % 6 == 5 else 201 for i in range(30)], [
        a.text for a in answers if a.status_code >= 500
    ]
    ids = [answer.json()["id"] for answer in answers if answer.status_code == 201]
    assert len(set(ids)) == 25
    assert counts(broker) == (before[0] + 30, before[1] + 60)  # each: grant.request, then issue or deny
    assert chain_ok(broker)
    writer: GrantWriter = app.state.grant_writer
    assert 1 <= writer.batches <= 30


async def test_the_writer_bounds_its_queue_and_each_wait(broker: Broker) -> None:
    """A full queue refuses the next request at once, and a request that waited longer than the
    pool's timeout is refused without being served: 503, nothing written."""
    one = ask_for(broker, "alice")
    before = counts(broker)

    full = GrantWriter(broker, max_queue=0)
    with pytest.raises(Unavailable, match="too many grant requests waiting"):
        await full.request(one)

    late = GrantWriter(broker)
    late.max_wait = -1.0  # every request has waited too long by the time the writer takes it
    with pytest.raises(Unavailable, match="too many grant requests waiting"):
        await late.request(one)
    assert late.batches == 0
    assert counts(broker) == before

    served = await GrantWriter(broker, idle=0.05).request(one)
    assert (served.subject, served.state) == ("alice", "active")


@contextlib.contextmanager
def writes_held(broker: Broker) -> Iterator[None]:
    """Another transaction holds what a batch waits for before it writes: PostgreSQL's ledger
    lock; on SQLite the write lock (BEGIN IMMEDIATE), on the pool's one connection."""
    with broker.engine.connect() as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('access_audit_log'))")
        yield


async def queued(writer: GrantWriter, one: Ask) -> asyncio.Future[Grant]:
    """``writer.request(one)`` as a task that has run to its first wait: the request is queued."""
    task = asyncio.ensure_future(writer.request(one))
    await asyncio.sleep(0)  # one turn of the loop: the task's first step (the queueing) has run
    return task


async def until(condition: Callable[[], bool], what: str) -> None:
    """Until ``condition()`` holds, asked every 5 ms, for at most 10 seconds."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out: {what}")


async def test_a_batch_gathers_as_many_requests_as_the_last_one_served(
    make_broker: Callable[..., Broker], db_url: str
) -> None:
    """After a batch of three, the writer does not serve the next request that comes alone: it
    waits (at most its linger, here long enough never to end the wait) until three wait, and
    serves them in one transaction."""
    bounds = {"db_lock_timeout": 30.0, "db_statement_timeout": 30.0, "db_pool_timeout": 30.0}
    broker = make_broker(db_url=db_url, **bounds)
    asks = [ask_for(broker, f"user-{i}") for i in range(7)]
    writer = GrantWriter(broker, linger=60.0)

    with writes_held(broker):
        first = await queued(writer, asks[0])
        await until(lambda: writer.waiting == 0, "the writer takes the first")
        three = [await queued(writer, one) for one in asks[1:4]]
        await until(lambda: writer.waiting == 3, "three wait while the first is served")
    await asyncio.gather(first, *three)
    assert writer.batches == 2  # the first alone, then the three that waited

    fourth = await queued(writer, asks[4])
    await until(lambda: writer.gathering, "the writer waits for more than the one waiting")
    assert writer.batches == 2
    rest = [await queued(writer, one) for one in asks[5:]]
    answers = await asyncio.gather(fourth, *rest)

    assert writer.batches == 3
    assert [(grant.subject, grant.state) for grant in answers] == [
        (f"user-{i}", "active") for i in range(4, 7)
    ]
    assert chain_ok(broker)
