"""Verification hashes each entry as stored (``ledger.stored_hash``), and only an entry whose
stored form does not hash right is parsed and canonicalised again before it is called changed;
a search bounded by time finds the same entries with the index as a scan would."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import rfc8785
import sqlalchemy as sa

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.audit.checkpoints import verify_ledger, write_checkpoint
from access.broker.clock import FakeClock
from access.broker.runtime import Broker
from access.broker.store import audit as store
from access.broker.store.tables import audit_log
from tests.broker.audit.test_checkpoints import append, tamper

AT = "2030-01-02T03:04:05.678901Z"
STRINGS = [
    "alice",
    "é ü 漢字",
    'quote " back \\ slash',
    "ctl \x00\x1f\x7f\n\t\b\f\r",
    "\u2028\u2029 emoji 🙂",
    "",
]


@pytest.mark.parametrize("text", STRINGS)
def test_stored_hash_is_sha256_of_rfc8785(text: str) -> None:
    details = {"b": text, "a": [1, text, None, True], text or "k": -5}
    body = {
        "seq": 9,
        "at": AT,
        "actor": text,
        "action": text,
        "target": text,
        "details": details,
        "prev_hash": ledger.GENESIS,
    }
    expected = hashlib.sha256(rfc8785.dumps(body)).hexdigest()
    got = ledger.stored_hash(9, AT, text, text, text, rfc8785.dumps(details).decode(), ledger.GENESIS)
    assert got == expected


def test_stored_hash_declines_what_has_no_utf8_form() -> None:
    assert ledger.stored_hash(1, AT, "lone \ud800", "a", "t", "{}", ledger.GENESIS) is None
    assert ledger.stored_hash(2**53, AT, "a", "a", "t", "{}", ledger.GENESIS) is None
    with pytest.raises(rfc8785.CanonicalizationError):  # append's path names what is wrong
        ledger.entry_hash(
            seq=1,
            at=datetime(2030, 1, 1, tzinfo=UTC),
            actor="lone \ud800",
            action="a",
            target="t",
            details={},
            prev_hash=ledger.GENESIS,
        )


@pytest.fixture
def broker(make_broker: Callable[..., Broker], db_url: str) -> Broker:
    return make_broker(db_url=db_url)


def test_details_stored_in_another_form_still_verify(broker: Broker) -> None:
    with broker.transaction() as conn:
        ledger.append(
            conn, broker.clock, actor="alice", action=Action.LOGOUT, target="t:1", details={"b": 1, "a": 2}
        )
    append(broker, 2)
    write_checkpoint(broker)
    # The same JSON, not in canonical form (as an older writer might have stored it).
    tamper(broker, """UPDATE audit_log SET details = '{"b": 1, "a": 2}' WHERE seq = 1""")
    result = verify_ledger(broker.engine, broker.audit_key.public_key())
    assert result.ok, result.problems
    assert result.entries == 3


def test_an_edited_time_is_caught(broker: Broker) -> None:
    append(broker, 3)
    write_checkpoint(broker)
    with broker.engine.connect() as conn:
        row = store.entries_after(conn, 1, 1)[0]
    later = (row.at + timedelta(seconds=1)).replace(tzinfo=None)
    literal = (
        f"'{later.isoformat(sep=' ')}'"
        if broker.engine.dialect.name == "sqlite"
        else f"'{later.isoformat()}+00'"
    )
    tamper(broker, f"UPDATE audit_log SET at = {literal} WHERE seq = 2")
    result = verify_ledger(broker.engine, broker.audit_key.public_key())
    assert result.summary().startswith("entry 2 was changed"), result.summary()


def test_a_time_bounded_search_finds_entries_whose_times_go_back(
    make_broker: Callable[..., Broker], db_url: str
) -> None:
    noon = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    broker = make_broker(db_url=db_url)
    for i, minutes in enumerate([0, 90, 10, 80, 20]):  # another broker's clock may lag
        with broker.transaction() as conn:
            ledger.append(
                conn,
                FakeClock(noon + timedelta(minutes=minutes)),
                actor="alice",
                action=Action.LOGOUT,
                target=f"service:svc-a/g-{i}",
            )
    with broker.engine.connect() as conn:
        found = store.search(conn, service="svc-a", actor=None, start=noon + timedelta(minutes=15), limit=100)
        every = conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar_one()
    assert [row.seq for row in found] == [5, 4, 2]  # 12:20, 13:20, 13:30: none lost to the seq bound
    assert every == 5
