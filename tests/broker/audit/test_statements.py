"""The statement log: batches into few ledger entries, in order and complete, tamper-evident,
bounded (``add`` returns False at the ceiling), and nothing lost while the database is down."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import rfc8785
import sqlalchemy as sa

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.audit.checkpoints import verify_ledger
from access.broker.audit.statements import (
    BATCH_STATEMENTS,
    ROW_OVERHEAD,
    StatementFlushLoop,
    StatementLog,
    statement_log_for,
)
from access.broker.errors import Unavailable
from access.broker.runtime import Broker
from access.broker.store.tables import audit_log
from access.broker.wire.base import Statement
from tests.broker.audit.test_checkpoints import tamper
from tests.fakes.dbproxy import FreezableProxy

GRANT = "g-0123456789abcdef"


def _add(log: StatementLog, connection: str, statements: list[Statement]) -> bool:
    return log.add(
        connection_id=connection, grant_id=GRANT, service="svc-payments", actor="alice", statements=statements
    )


def _queries(prefix: str, count: int) -> list[Statement]:
    return [Statement("query", f"SELECT {i} /* {prefix} */") for i in range(count)]


def _batches(broker: Broker) -> list[Any]:
    with broker.transaction() as conn:
        return list(
            conn.execute(
                sa.select(audit_log)
                .where(audit_log.c.action == Action.CONNECTION_STATEMENTS.value)
                .order_by(audit_log.c.seq)
            ).all()
        )


def _recorded(broker: Broker) -> dict[str, list[tuple[int, str]]]:
    """Per connection, its statements as the ledger has them: (n, text), in ledger order."""
    found: dict[str, list[tuple[int, str]]] = {}
    for row in _batches(broker):
        details = json.loads(row.details)
        assert details["count"] == len(details["statements"])
        found.setdefault(details["connection"], []).extend(
            (details["first"] + i, item[2]) for i, item in enumerate(details["statements"])
        )
    return found


def test_many_statements_make_few_entries_in_order_and_complete(make_broker: Callable[..., Broker]) -> None:
    broker = make_broker()
    log = statement_log_for(broker)
    sent: dict[str, list[Statement]] = {"c-1": [], "c-2": [], "c-3": []}
    for round_ in range(60):  # three channels, interleaved, in chunks of 20
        for connection, statements in sent.items():
            chunk = _queries(f"{connection} {round_}", 20)
            assert _add(log, connection, chunk)
            statements.extend(chunk)
    assert log.pending == 3600 and _batches(broker) == []  # add itself writes nothing
    named = [Statement("parse", "SELECT $1", "s1"), Statement("execute", "SELECT $1", "s1")]
    assert _add(log, "c-1", named)
    sent["c-1"].extend(named)

    assert log.flush() == 3602
    assert log.pending == 0 and log.pending_bytes == 0
    batches = _batches(broker)
    # 1202 statements of c-1 are three batches, 1200 of each of the other two: 3 + 3 + 3 entries, not 3602.
    assert len(batches) == 9
    assert all(len(json.loads(b.details)["statements"]) <= BATCH_STATEMENTS for b in batches)
    recorded = _recorded(broker)
    for connection, statements in sent.items():
        assert recorded[connection] == [(n, s.text) for n, s in enumerate(statements)]
    first = [json.loads(b.details)["connection"] for b in batches[:3]]
    assert first == ["c-1", "c-2", "c-3"]  # each channel in turn, not one channel's backlog first
    [tail] = [json.loads(b.details) for b in batches if json.loads(b.details)["count"] == 202]
    parse, execute = tail["statements"][-2:]
    assert (tail["first"], tail["count"]) == (1000, 202)
    assert parse[1:] == ["parse", "SELECT $1", "s1"] and execute[1:] == ["execute", "SELECT $1", "s1"]
    assert 0 <= parse[0] == execute[0]  # µs after the batch's first statement: the same add
    assert {b.target for b in batches} == {f"service:svc-payments/{GRANT}"}
    assert {b.actor for b in batches} == {"alice"}
    assert verify_ledger(broker.engine, broker.audit_key.public_key()).ok


def test_an_edited_statement_fails_verification(make_broker: Callable[..., Broker]) -> None:
    broker = make_broker()
    log = statement_log_for(broker)
    assert _add(log, "c-1", [Statement("query", "DELETE FROM payments"), Statement("query", "SELECT 1")])
    log.flush()
    [batch] = _batches(broker)
    assert verify_ledger(broker.engine, broker.audit_key.public_key()).ok
    edited = batch.details.replace("DELETE FROM payments", "SELECT 2")
    tamper(broker, f"UPDATE audit_log SET details = '{edited}' WHERE seq = {batch.seq}")
    result = verify_ledger(broker.engine, broker.audit_key.public_key())
    assert result.summary().startswith(f"entry {batch.seq} was changed")


def test_a_full_buffer_refuses_and_queues_nothing_of_the_refused(make_broker: Callable[..., Broker]) -> None:
    broker = make_broker(statement_log_limit=1000)
    log = statement_log_for(broker)
    assert _add(log, "c-1", _queries("a", 990))
    assert not _add(log, "c-2", _queries("b", 11))  # would pass the ceiling: none of them is queued
    assert _add(log, "c-2", _queries("b", 10))  # exactly at it
    assert not _add(log, "c-1", _queries("c", 1))
    assert (log.pending, log.refused) == (1000, 12)
    assert log.flush() == 1000
    assert _add(log, "c-1", _queries("d", 1))  # room again once written; numbering goes on
    log.flush()
    assert [n for n, _ in _recorded(broker)["c-1"]] == list(range(991))


def test_the_byte_ceiling_refuses_too(make_broker: Callable[..., Broker]) -> None:
    broker = make_broker(statement_log_bytes=1024 * 1024)
    log = statement_log_for(broker)
    big = Statement("query", "x" * 4096)
    fits = 1024 * 1024 // (4096 + ROW_OVERHEAD)
    assert _add(log, "c-1", [big] * fits)
    assert not _add(log, "c-1", [big])
    assert log.pending == fits


def test_database_down_buffers_up_to_the_ceiling_then_writes_everything(
    make_proxied_broker: Callable[..., Broker], proxy: FreezableProxy
) -> None:
    broker = make_proxied_broker(statement_log_limit=1000)
    log = statement_log_for(broker)
    assert _add(log, "c-1", _queries("before", 10))
    log.flush()
    assert len(_batches(broker)) == 1
    sent = _queries("before", 10)

    assert _add(log, "c-1", _queries("frozen", 10))
    sent += _queries("frozen", 10)
    proxy.freeze()
    failed: list[BaseException] = []

    def flush() -> None:
        try:
            log.flush()
        except BaseException as exc:
            failed.append(exc)

    writer = threading.Thread(target=flush)
    try:
        writer.start()  # hangs on the frozen database until its statement timeout
        # Meanwhile the channels go on: add never waits for the writer, up to the ceiling.
        for i in range(99):
            assert _add(log, "c-2" if i % 2 else "c-1", _queries(f"down {i}", 10)), i
        assert log.pending == 1000
        assert not _add(log, "c-1", _queries("too many", 1))
        writer.join(timeout=15)
        assert not writer.is_alive() and len(failed) == 1 and isinstance(failed[0], Unavailable)
    finally:
        proxy.thaw()
    assert log.pending == 1000  # nothing was dropped
    assert log.flush() == 1000
    recorded = _recorded(broker)
    assert [n for n, _ in recorded["c-1"]] == list(range(10 + 10 + 500))
    assert [n for n, _ in recorded["c-2"]] == list(range(490))
    assert [text for _, text in recorded["c-1"][:20]] == [s.text for s in sent]
    assert verify_ledger(broker.engine, broker.audit_key.public_key()).ok


def test_the_flush_loop_writes_a_full_batch_and_a_closed_channel_at_once(
    make_broker: Callable[..., Broker],
) -> None:
    broker = make_broker(statement_flush_interval=10.0)  # the timer alone would not write in time
    log = statement_log_for(broker)

    async def scenario() -> None:
        task = asyncio.create_task(StatementFlushLoop(broker).run())
        try:
            await asyncio.sleep(0)  # the loop runs up to its first wait, having hooked itself in
            assert log.on_due is not None

            async def written(count: int) -> None:
                deadline = time.monotonic() + 5
                while log.written < count:
                    assert time.monotonic() < deadline, f"{log.written} of {count} written"
                    await asyncio.sleep(0.02)

            assert _add(log, "c-1", _queries("nearly", BATCH_STATEMENTS - 1))
            assert _add(log, "c-1", _queries("full", 1))
            await written(BATCH_STATEMENTS)
            assert _add(log, "c-2", _queries("ends", 3))
            log.close("c-2")
            await written(BATCH_STATEMENTS + 3)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert log.on_due is None

    asyncio.run(scenario())
    assert [len(v) for v in _recorded(broker).values()] == [BATCH_STATEMENTS, 3]
    assert log.pending == 0 and log.entries == 2


def test_statements_are_still_recorded_while_the_ledger_is_unsafe(make_broker: Callable[..., Broker]) -> None:
    """Like a close, a batch records access that already happened: an unsafe ledger (which gives no
    new access) must not stop it being written, or every channel would be cut at the ceiling."""
    broker = make_broker()
    log = statement_log_for(broker)
    ledger.set_unsafe(broker.engine, "guards missing (test)")
    try:
        assert _add(log, "c-1", _queries("unsafe", 3))
        assert log.flush() == 3
    finally:
        ledger.set_unsafe(broker.engine, None)
    assert len(_batches(broker)) == 1


def test_text_that_is_no_valid_utf8_is_still_written(make_broker: Callable[..., Broker]) -> None:
    """A lone surrogate has no canonical JSON: kept as is, its batch could never be hashed, and the
    buffer behind it would fill until every channel stopped."""
    broker = make_broker()
    log = statement_log_for(broker)
    assert _add(log, "c-1", [Statement("query", "SELECT '\ud800'"), Statement("prepare", "x", "n\udfff")])
    assert log.flush() == 2
    [batch] = _batches(broker)
    assert json.loads(batch.details)["statements"][0][2] == "SELECT '?'"
    assert verify_ledger(broker.engine, broker.audit_key.public_key()).ok


def test_each_entry_s_details_are_their_own_rfc8785_form(make_broker: Callable[..., Broker]) -> None:
    """The writer puts an entry's details together as text from the pieces the event loop quoted
    for the journal: that text must be the RFC 8785 form of what it says (quotes, controls,
    non-ASCII, names, a lone surrogate, several loop turns and so several offsets), or a reader
    that re-encodes an entry would not find its hash."""
    broker = make_broker()
    log = statement_log_for(broker)
    texts = [
        "SELECT '\"q\" \\ b'",
        "line\nbreak\ttab\x00nul\x1f\x7f\u2028",
        "naïve — ünï ✓ 😀",
        "",
        "x\ud800y",
    ]
    for turn, text in enumerate(texts):
        assert _add(log, "c-1", [Statement("query", text), Statement("parse", text, f"s{turn}é")])
        broker.clock.advance(timedelta(microseconds=1234 * (turn + 1)))  # type: ignore[attr-defined]
    assert _add(log, "c-2", [Statement("exécute", "SELECT 1", None)])
    assert log.flush() == 2 * len(texts) + 1
    batches = _batches(broker)
    assert len(batches) == 2
    for batch in batches:
        details = json.loads(batch.details)
        assert rfc8785.dumps(details) == batch.details.encode("utf-8")
        assert (
            ledger.stored_hash(
                batch.seq,
                ledger.format_time(batch.at),
                batch.actor,
                batch.action,
                batch.target,
                batch.details,
                batch.prev_hash,
            )
            == batch.hash
        )
    first = json.loads(batches[0].details)
    assert [item[0] for item in first["statements"]] == [
        0,
        0,
        1234,
        1234,
        3702,
        3702,
        7404,
        7404,
        12340,
        12340,
    ]
    assert first["statements"][1][1:] == ["parse", texts[0], "s0é"]
    assert first["statements"][9][2] == "x?y"
    assert verify_ledger(broker.engine, broker.audit_key.public_key()).ok


def test_the_broker_writes_what_waits_when_it_stops(make_broker: Callable[..., Broker]) -> None:
    """The app's lifespan runs the flush loop, and a graceful stop writes the rest at once."""
    from access.broker.app import create_app

    broker = make_broker(statement_flush_interval=10.0)
    app = create_app(broker)
    log = statement_log_for(broker)

    async def serve_and_stop() -> None:
        async with app.router.lifespan_context(app):
            assert _add(log, "c-1", _queries("late", 7))
            assert _batches(broker) == []

    asyncio.run(serve_and_stop())
    assert log.pending == 0
    assert [n for n, _ in _recorded(broker)["c-1"]] == list(range(7))


def test_the_writer_is_woken_once_per_full_batch_not_per_add(make_broker: Callable[..., Broker]) -> None:
    broker = make_broker()
    log = statement_log_for(broker)
    wakes: list[None] = []
    log.on_due = lambda: wakes.append(None)
    for _ in range(BATCH_STATEMENTS * 3 // 10):  # 1500 statements, 10 an add, none written
        assert _add(log, "c-1", _queries("x", 10))
    assert len(wakes) == 3
    log.close("c-1")
    assert len(wakes) == 4


def test_a_wake_up_for_a_full_batch_leaves_other_channels_few_statements_for_the_interval(
    make_broker: Callable[..., Broker],
) -> None:
    """Eight busy channels fill batches at different moments: if each wake-up wrote every other
    channel's few statements too, most entries would hold a handful of statements."""
    broker = make_broker()
    log = statement_log_for(broker)
    assert _add(log, "c-1", _queries("full", BATCH_STATEMENTS))
    assert _add(log, "c-2", _queries("few", 3))
    assert _add(log, "c-3", _queries("ended", 2))
    log.close("c-3")
    assert log.flush(full_only=True) == BATCH_STATEMENTS + 2  # the full batch and the ended channel
    assert log.pending == 3
    assert log.flush() == 3  # the interval's flush takes the rest
    assert [len(v) for v in _recorded(broker).values()] == [BATCH_STATEMENTS, 2, 3]
