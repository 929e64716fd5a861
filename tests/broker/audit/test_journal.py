"""The statement journal: statements a broker process relayed but had not written when it died
are written by the next process on the same data folder, once each; journals go once written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import rfc8785
import sqlalchemy as sa

from access.broker.audit import journal as journal_module
from access.broker.audit.actions import Action
from access.broker.audit.checkpoints import verify_ledger
from access.broker.audit.statements import StatementLog, statement_log_for
from access.broker.runtime import Broker
from access.broker.store.tables import audit_log
from access.broker.wire.base import Statement

GRANT = "g-00000000000000aa"


def _add(log: StatementLog, connection: str, texts: list[str]) -> bool:
    return log.add(
        connection_id=connection,
        grant_id=GRANT,
        service="svc-payments",
        actor="alice",
        statements=[Statement("query", text) for text in texts],
    )


def _recorded(broker: Broker) -> dict[str, list[tuple[int, str]]]:
    found: dict[str, list[tuple[int, str]]] = {}
    with broker.transaction() as conn:
        rows = conn.execute(
            sa.select(audit_log)
            .where(audit_log.c.action == Action.CONNECTION_STATEMENTS.value)
            .order_by(audit_log.c.seq)
        ).all()
    for row in rows:
        details = json.loads(row.details)
        found.setdefault(details["connection"], []).extend(
            (details["first"] + i, item[2]) for i, item in enumerate(details["statements"])
        )
    return found


def _die(log: StatementLog) -> None:
    """What the kernel does to a SIGKILLed process's journal: its files stay, its locks go."""
    log.journal.close(delete=False)


def _next_process(broker: Broker) -> Broker:
    """Another broker process on the same data folder and database."""
    return Broker.from_settings(
        broker.settings, clock=broker.clock, policy=broker.policy, base_url="https://broker.test"
    )


def _journals(broker: Broker) -> list[Path]:
    return sorted((Path(broker.settings.data_dir) / "statements").glob("*.journal"))


def test_statements_a_dead_process_had_not_written_are_written_by_the_next(
    make_broker: Callable[..., Broker],
) -> None:
    broker = make_broker()
    log = statement_log_for(broker)
    assert _add(log, "c-1", [f"SELECT {i}" for i in range(10)])
    assert log.flush() == 10  # in the ledger, and noted in the journal as written
    assert _add(log, "c-1", [f"SELECT {i}" for i in range(10, 15)])
    assert _add(log, "c-2", ["UPDATE t SET x = 'é\n'", "DELETE FROM t"])
    assert _journals(broker) and all(p.stat().st_mode & 0o777 == 0o600 for p in _journals(broker))
    _die(log)  # 7 statements relayed, not written

    after = _next_process(broker)
    later = statement_log_for(after)
    assert later.recover() == 7
    assert later.flush(full_only=True) == 7  # a wake-up writes them: their channels are gone
    recorded = _recorded(after)
    assert recorded["c-1"] == [(i, f"SELECT {i}") for i in range(15)]  # each once, numbered on
    assert recorded["c-2"] == [(0, "UPDATE t SET x = 'é\n'"), (1, "DELETE FROM t")]
    assert _journals(after) == []  # the dead process's journal is gone once written
    assert verify_ledger(after.engine, after.audit_key.public_key()).ok


def test_journal_lines_are_the_json_of_their_records_and_come_back_whole(
    make_broker: Callable[..., Broker],
) -> None:
    """The event loop builds a journal line from quoted strings (not by encoding a record): it
    must be exactly the JSON of the record, and a recovery must give back every text and name."""
    broker = make_broker()
    log = statement_log_for(broker)
    texts = ["SELECT '\"quoted\" \\ back'", "line\nbreak\ttab\x00nul\x1f\x7f", "naïve — ünï ✓ 😀", ""]
    statements = [Statement("query", text) for text in texts] + [Statement("parse", "SELECT $1", 'st"1\n')]
    assert log.add(
        connection_id="c-1", grant_id=GRANT, service='svc "x"', actor="bob\\", statements=statements
    )
    assert log.add(
        connection_id="c-1", grant_id=GRANT, service='svc "x"', actor="bob\\", statements=statements[:1]
    )
    # (a live file is mapped: past its lines, the zero bytes allocated for the next ones)
    lines = _journals(broker)[0].read_bytes().rstrip(b"\0").decode("utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert [record[:6] for record in records] == [
        ["S", "c-1", GRANT, 'svc "x"', "bob\\", 0],
        ["S", "c-1", GRANT, 'svc "x"', "bob\\", 5],
    ]
    assert records[0][7] == [[s.kind, s.text, s.name] for s in statements]
    assert lines == [json.dumps(record, ensure_ascii=False, separators=(",", ":")) for record in records]

    _die(log)
    after = _next_process(broker)
    later = statement_log_for(after)
    assert later.recover() == 6
    assert later.flush() == 6
    assert [text for _n, text in _recorded(after)["c-1"]] == [*texts, "SELECT $1", texts[0]]


def test_named_statements_repeated_over_turns_are_journaled_as_they_are(
    make_broker: Callable[..., Broker],
) -> None:
    """A named statement's quoted pieces are kept for its next executions (``AddSide.named``): a
    name that comes back with another text or kind, or on another connection, must not reuse
    them; past the bound they are made again."""
    broker = make_broker()
    log = statement_log_for(broker)
    turns = [
        [Statement("parse", "SELECT $1", "P_0"), Statement("execute", "SELECT $1", "P_0")],
        [Statement("execute", "SELECT $1", "P_0"), Statement("execute", "SELECT $1", "P_0")],
        [Statement("parse", 'SELECT "ü" \\', "P_0"), Statement("execute", 'SELECT "ü" \\', "P_0")],
        [Statement("execute", "x\ud800", "nämé"), Statement("execute", "x\ud800", "nämé")],
        [Statement("execute", "SELECT $1", "P_0"), Statement("query", "SELECT 2")],
        [Statement("execute", f"SELECT {i}", f"s{i}") for i in range(300)],  # past NAMED_KEPT
        [Statement("execute", "SELECT 7", "s7"), Statement("execute", "SELECT $1", "P_0")],
    ]
    for number, statements in enumerate(turns):
        assert log.add(
            connection_id=f"c-{number % 2}", grant_id=GRANT, service="svc", actor="bob", statements=statements
        )
    data = _journals(broker)[0].read_bytes().rstrip(b"\0").decode("utf-8", "surrogatepass")
    lines = data.splitlines()
    records = [json.loads(line) for line in lines]
    assert [record[7] for record in records] == [[[s.kind, s.text, s.name] for s in t] for t in turns]
    assert lines == [json.dumps(record, ensure_ascii=False, separators=(",", ":")) for record in records]
    assert log.flush() == sum(len(t) for t in turns)
    assert [text for _n, text in _recorded(broker)["c-1"]][:4] == ["SELECT $1"] * 2 + ["x?"] * 2
    with broker.transaction() as conn:
        stored = conn.execute(
            sa.select(audit_log.c.details).where(audit_log.c.action == "connection.statements")
        )
        assert all(rfc8785.dumps(json.loads(details)) == details.encode() for (details,) in stored)
    assert verify_ledger(broker.engine, broker.audit_key.public_key()).ok


def test_a_live_process_journal_is_never_taken(make_broker: Callable[..., Broker]) -> None:
    broker = make_broker()
    log = statement_log_for(broker)
    assert _add(log, "c-1", ["SELECT 1"])
    other = statement_log_for(_next_process(broker))
    assert other.recover() == 0  # locked by its live owner
    assert log.flush() == 1
    assert _recorded(broker)["c-1"] == [(0, "SELECT 1")]


def test_a_torn_last_line_is_ignored(make_broker: Callable[..., Broker]) -> None:
    broker = make_broker()
    log = statement_log_for(broker)
    assert _add(log, "c-1", ["SELECT 1", "SELECT 2"])
    [path] = _journals(broker)
    _die(log)
    with path.open("ab") as f:
        f.write(b'["S","c-1","g","s","a",2,0,[["query","SELECT 3"')  # the crash cut this one
    later = statement_log_for(_next_process(broker))
    assert later.recover() == 2
    later.flush()
    assert _recorded(broker)["c-1"] == [(0, "SELECT 1"), (1, "SELECT 2")]


def test_rotated_journals_are_deleted_once_written(
    make_broker: Callable[..., Broker], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 2000)
    broker = make_broker()
    log = statement_log_for(broker)
    for i in range(100):
        assert _add(log, f"c-{i % 3}", [f"SELECT {i} /* {'x' * 40} */"])
    assert len(_journals(broker)) > 2
    assert log.flush() == 100
    log.flush()  # the writer sees the last rotation only with the next add's hand-over
    assert len(_journals(broker)) <= 1  # only the open one is left
    assert sum(len(v) for v in _recorded(broker).values()) == 100


def test_a_journal_that_cannot_be_written_stops_the_channels(make_broker: Callable[..., Broker]) -> None:
    broker = make_broker()
    blocked = Path(broker.settings.data_dir) / "statements"
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("a file where the journal folder should be")
    log = statement_log_for(broker)
    assert _add(log, "c-1", ["SELECT 1"])  # forwarded already: still written to the ledger
    assert log.journal_failed is not None
    assert not _add(log, "c-1", ["SELECT 2"])  # then refused: the channel must stop
    assert log.flush() == 1
    assert _recorded(broker)["c-1"] == [(0, "SELECT 1")]


def test_a_graceful_stop_leaves_no_journal(make_broker: Callable[..., Broker]) -> None:
    broker = make_broker()
    log = statement_log_for(broker)
    assert _add(log, "c-1", ["SELECT 1"])
    log.stop(deadline=0)
    assert _journals(broker) == []
    assert _recorded(broker)["c-1"] == [(0, "SELECT 1")]


KILLED = """
import os, signal, sys
from pathlib import Path
from access.broker.audit.journal import Journal
journal = Journal(Path(sys.argv[1]))
journal.append('["S","c-1","g","s","a",0,5,[["query","SELECT 1",null]]]\\n')
journal.append('["S","c-1","g","s","a",1,6,[["query","SELECT 2",null],["parse","SELECT $1","p"]]]\\n')
journal.note_written([("c-1", 1)])
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_what_a_killed_process_stored_in_its_mapped_journal_is_recovered(tmp_path: Path) -> None:
    """The lines are stores into a shared mapping, not writes: SIGKILL right after them loses none
    (they are in the page cache), and the allocated zero tail reads as a torn line."""
    folder = tmp_path / "statements"
    done = subprocess.run([sys.executable, "-c", KILLED, str(folder)], env=os.environ, check=False)
    assert done.returncode == -9
    [path] = folder.glob("*.journal")
    assert path.stat().st_size == journal_module.ROTATE_BYTES + journal_module.ROOM  # mapped, never cut
    recovered, held = journal_module.recover(folder)
    journal_module.release(held, delete=False)
    assert [(item.connection, item.first, item.at_us, item.statements) for item in recovered] == [
        ("c-1", 1, [6, 6], [["query", "SELECT 2", None], ["parse", "SELECT $1", "p"]])
    ]


def test_a_rotated_or_closed_journal_is_cut_to_its_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 100)
    journal = journal_module.Journal(tmp_path)
    line = '["S","c-1","g","s","a",0,5,[["query","SELECT 1",null]]]\n'
    assert journal.append(line) == 1
    assert journal.append(line) == 1  # 112 bytes: past ROTATE_BYTES, in the room after it
    assert journal.append(line) == 2  # a new file; the first one cut to its two lines
    first, second = journal.paths
    assert first.read_text() == line * 2
    assert second.stat().st_size == 100 + journal_module.ROOM
    journal.note_written([("c-1", 3)])
    journal.close(delete=False)
    assert second.read_text() == line + '["W","c-1",3]\n'


def test_lines_past_the_mapped_room_are_written_all_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "ROTATE_BYTES", 100)
    monkeypatch.setattr(journal_module, "ROOM", 10)
    journal = journal_module.Journal(tmp_path)
    big = '["S","c-1","g","s","a",0,5,[["query","' + "x" * 300 + '",null]]]\n'
    assert journal.append(big) == 1  # longer than the mapping: pwrite
    journal.note_written([("c-1", 1)])
    [path] = journal.paths
    journal.close(delete=False)
    assert path.read_text() == big + '["W","c-1",1]\n'
