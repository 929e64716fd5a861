"""The ledger records only actions of the one enumeration, and docs/audit.md lists each of them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.clock import FakeClock
from access.broker.store.engine import create_engine, migrate
from access.broker.store.tables import audit_log

DOCS = Path(__file__).resolve().parents[3] / "docs" / "audit.md"
BROKER = Path(__file__).resolve().parents[3] / "broker"


def test_docs_list_every_action_and_no_other() -> None:
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", DOCS.read_text(), re.M))
    assert documented == {action.value for action in Action}


def test_every_action_is_recorded_somewhere() -> None:
    # An action nobody records is a line in the docs that promises an entry that never comes.
    source = "\n".join(p.read_text() for p in BROKER.rglob("*.py") if p.name != "actions.py")
    unused = [action.name for action in Action if f"Action.{action.name}" not in source]
    assert not unused


def test_a_string_that_is_no_action_is_refused_and_nothing_is_written(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    migrate(engine)
    with pytest.raises(ValueError), engine.begin() as conn:
        ledger.append(conn, FakeClock(), actor="alice", action="grant.whatever", target="x")  # type: ignore[arg-type]
    with engine.begin() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar_one() == 0
    with engine.begin() as conn:
        entry = ledger.append(conn, FakeClock(), actor="alice", action=Action.LOGOUT, target="session:s1")
    assert entry.action == "logout"
    engine.dispose()
