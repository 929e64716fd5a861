"""Signed checkpoints and ``verify_ledger``: tampering (with the triggers dropped) is caught.

Each tampering test drops the append-only triggers first, as an attacker with database access
would, then edits, deletes or cuts rows; verification must name what happened.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from access.broker.admin.main import app as admin_app
from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.audit.checkpoints import (
    CheckpointLoop,
    export_checkpoints,
    export_entries,
    load_checkpoints,
    sign_checkpoint,
    stored_checkpoints,
    verify_ledger,
    write_checkpoint,
)
from access.broker.clock import FakeClock
from access.broker.runtime import Broker
from access.broker.store.ledger_ddl import drop_append_only_ddl, install_guards
from access.broker.store.tables import audit_checkpoints, audit_log


@pytest.fixture
def broker(make_broker: Callable[..., Broker], db_url: str) -> Broker:
    return make_broker(db_url=db_url)


def append(broker: Broker, n: int, actor: str = "alice") -> None:
    for _ in range(n):
        with broker.transaction() as conn:
            seq = conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar_one() + 1
            ledger.append(
                conn, broker.clock, actor=actor, action=Action.LOGOUT, target=f"thing:{seq}", details={}
            )


def tamper(broker: Broker, *statements: str) -> None:
    """Drop the guards, run ``statements``, and put the guards back, as a careful attacker would."""
    with broker.engine.begin() as conn:
        for ddl in drop_append_only_ddl(conn.dialect.name):
            conn.exec_driver_sql(ddl)
        for statement in statements:
            conn.exec_driver_sql(statement)
        install_guards(conn)


def test_clean_ledger_verifies(broker: Broker) -> None:
    append(broker, 5)
    assert write_checkpoint(broker) is not None
    append(broker, 2)
    result = verify_ledger(broker.engine, broker.audit_key.public_key())
    assert result.ok, result.problems
    assert (result.entries, result.last_checkpoint_seq, result.unsigned_tail) == (7, 5, 2)
    assert result.summary() == "ledger OK: 7 entries, last checkpoint at seq 5"
    with broker.engine.connect() as conn:  # a Connection works as well as an Engine
        assert verify_ledger(conn, broker.audit_key.public_key()).ok


def test_empty_ledger_verifies(broker: Broker) -> None:
    assert write_checkpoint(broker) is None
    result = verify_ledger(broker.engine, broker.audit_key.public_key())
    assert result.ok
    assert result.summary() == "ledger OK: 0 entries, last checkpoint at none yet"


def test_checkpoint_is_skipped_when_nothing_is_new(broker: Broker) -> None:
    append(broker, 3)
    first = write_checkpoint(broker)
    assert first is not None
    assert (first.seq, first.key_id) == (3, first.key_id)
    assert first.signature_valid(broker.audit_key.public_key())
    assert not first.signature_valid(Ed25519PrivateKey.generate().public_key())
    assert write_checkpoint(broker) is None
    append(broker, 1)
    second = write_checkpoint(broker)
    assert second is not None and second.seq == 4
    with broker.engine.connect() as conn:
        assert [c.seq for c in stored_checkpoints(conn)] == [3, 4]


def test_edited_entry_is_named(broker: Broker) -> None:
    append(broker, 10)
    write_checkpoint(broker)
    tamper(broker, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 4")
    result = verify_ledger(broker.engine, broker.audit_key.public_key())
    assert not result.ok
    assert result.problems[0].seq == 4
    assert result.summary().startswith("entry 4 was changed")


def test_edited_details_are_caught(broker: Broker) -> None:
    append(broker, 3)
    tamper(broker, """UPDATE audit_log SET details = '{"i":1}' WHERE seq = 2""")
    result = verify_ledger(broker.engine, broker.audit_key.public_key())
    assert result.summary().startswith("entry 2 was changed")


def test_deleted_entry_is_named(broker: Broker) -> None:
    append(broker, 10)
    tamper(broker, "DELETE FROM audit_log WHERE seq = 6")
    result = verify_ledger(broker.engine, broker.audit_key.public_key())
    assert not result.ok
    assert result.problems[0].kind == "missing"
    assert result.summary() == "entry 6 was deleted: the ledger jumps from seq 5 to 7"


def test_rewritten_chain_is_caught_by_the_checkpoint(broker: Broker) -> None:
    """An attacker edits entry 3 and recomputes every hash after it: the chain looks whole."""
    append(broker, 6)
    write_checkpoint(broker)
    with broker.engine.connect() as conn:
        rows = conn.execute(sa.select(audit_log).order_by(audit_log.c.seq)).all()
    statements = []
    prev = ledger.GENESIS
    for row in rows:
        actor = "mallory" if row.seq == 3 else row.actor
        digest = ledger.entry_hash(
            seq=row.seq,
            at=row.at,
            actor=actor,
            action=row.action,
            target=row.target,
            details=json.loads(row.details),
            prev_hash=prev,
        )
        values = f"actor = '{actor}', prev_hash = '{prev}', hash = '{digest}'"
        statements.append(f"UPDATE audit_log SET {values} WHERE seq = {row.seq}")
        prev = digest
    tamper(broker, *statements)
    result = verify_ledger(broker.engine, broker.audit_key.public_key())
    assert [p.kind for p in result.problems] == ["checkpoint_mismatch"]
    assert result.summary().startswith("entries 1 to 6 were rewritten")


def test_tail_cut_after_a_checkpoint(broker: Broker) -> None:
    append(broker, 8)
    write_checkpoint(broker)
    tamper(broker, "DELETE FROM audit_log WHERE seq > 5")
    result = verify_ledger(broker.engine, broker.audit_key.public_key())
    assert not result.ok
    assert result.problems[0].kind == "truncated"
    assert result.summary() == (
        "entry 6 is missing: a checkpoint signed 8 entries but the ledger has only 5 (the tail was cut off)"
    )


def test_tail_cut_and_regrown_is_caught(broker: Broker) -> None:
    """Cut the tail, then let the broker append again: the checkpoint's head no longer matches."""
    append(broker, 5)
    write_checkpoint(broker)
    tamper(broker, "DELETE FROM audit_log WHERE seq > 3")
    append(broker, 4, actor="bob")
    result = verify_ledger(broker.engine, broker.audit_key.public_key())
    assert [p.kind for p in result.problems] == ["checkpoint_mismatch"]


def test_forged_checkpoint_signature(broker: Broker) -> None:
    append(broker, 4)
    forger = Ed25519PrivateKey.generate()
    forged = sign_checkpoint(forger, 4, "f" * 64, broker.clock.now())
    with broker.engine.begin() as conn:
        conn.execute(
            audit_checkpoints.insert().values(
                seq=forged.seq,
                head_hash=forged.head_hash,
                at=forged.at,
                key_id=forged.key_id,
                signature=forged.signature,
            )
        )
    result = verify_ledger(broker.engine, broker.audit_key.public_key())
    assert [p.kind for p in result.problems] == ["bad_signature"]
    assert "checkpoint at seq 4 has no valid signature" in result.summary()


def test_altered_checkpoint_row(broker: Broker) -> None:
    append(broker, 4)
    write_checkpoint(broker)
    tamper(broker, "UPDATE audit_checkpoints SET seq = 2")
    result = verify_ledger(broker.engine, broker.audit_key.public_key())
    assert [p.kind for p in result.problems] == ["bad_signature"]


def test_exported_checkpoints_catch_deleted_checkpoint_rows(broker: Broker) -> None:
    append(broker, 6)
    write_checkpoint(broker)
    with broker.engine.connect() as conn:
        exported = list(export_checkpoints(conn, broker.audit_key))
    line = json.loads(exported[0])
    assert line["public_key"].startswith("-----BEGIN PUBLIC KEY-----")
    assert set(line) == {"seq", "head_hash", "at", "key_id", "signature", "public_key"}
    kept = load_checkpoints(exported)
    # The attacker removes the checkpoint rows along with the tail.
    tamper(broker, "DELETE FROM audit_checkpoints", "DELETE FROM audit_log WHERE seq > 4")
    assert verify_ledger(broker.engine, broker.audit_key.public_key()).ok  # undetectable from inside
    result = verify_ledger(broker.engine, broker.audit_key.public_key(), kept)
    assert [p.kind for p in result.problems] == ["truncated"]
    assert "not in the database" in result.warnings[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [("not json", "line 1: not a checkpoint"), ('\n{"seq": 1}', "line 2: not a checkpoint")],
)
def test_load_checkpoints_rejects_garbage(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_checkpoints(text.splitlines())


def test_export_entries(broker: Broker) -> None:
    clock = broker.clock
    assert isinstance(clock, FakeClock)
    append(broker, 2)
    clock.advance(timedelta(hours=2))
    append(broker, 1)
    with broker.engine.connect() as conn:
        every = [json.loads(line) for line in export_entries(conn)]
        recent = [json.loads(line) for line in export_entries(conn, since=clock.now() - timedelta(hours=1))]
    assert [e["seq"] for e in every] == [1, 2, 3]
    assert [e["seq"] for e in recent] == [3]
    assert every[1]["prev_hash"] == every[0]["hash"]


def test_checkpoint_loop_writes(make_broker: Callable[..., Broker], sqlite_url: str) -> None:
    broker = make_broker(db_url=sqlite_url, checkpoint_interval=0.01)
    append(broker, 2)
    loop = CheckpointLoop(broker)
    asyncio.run(loop.tick())
    asyncio.run(loop.tick())  # nothing new: no second checkpoint
    with broker.engine.connect() as conn:
        assert [c.seq for c in stored_checkpoints(conn)] == [2]


# ---------------------------------------------------------------- access-broker audit ...


def _cli(broker: Broker, *args: str) -> tuple[int, str, str]:
    env = {
        "ACCESS_BROKER_DATA_DIR": str(broker.settings.data_dir),
        "ACCESS_BROKER_DATABASE_URL": broker.settings.resolved_database_url,
    }
    result = CliRunner().invoke(admin_app, ["audit", *args], env=env)
    return result.exit_code, result.stdout, result.stderr


def test_cli_verify_ok_and_json(broker: Broker) -> None:
    append(broker, 3)
    code, out, err = _cli(broker, "checkpoint")
    assert code == 0 and "checkpoint at seq 3" in err
    append(broker, 1)
    code, out, err = _cli(broker, "verify")
    assert (code, out.strip()) == (0, "ledger OK: 4 entries, last checkpoint at seq 3")
    assert "the last 1 entries are not covered by a checkpoint" in err
    code, out, _ = _cli(broker, "verify", "-o", "json")
    data = json.loads(out)
    assert (code, data["ok"], data["entries"], data["last_checkpoint_seq"]) == (0, True, 4, 3)


def test_cli_verify_names_the_first_bad_entry(broker: Broker) -> None:
    append(broker, 50)
    _cli(broker, "checkpoint")
    tamper(broker, "UPDATE audit_log SET action = 'nothing.happened' WHERE seq = 42")
    code, out, err = _cli(broker, "verify")
    assert code == 1
    assert out == ""
    assert err.startswith("error: entry 42 was changed")
    code, out, _ = _cli(broker, "verify", "-o", "json")
    assert code == 1 and json.loads(out)["problems"][0]["seq"] == 42


def test_cli_export_checkpoints_then_verify_with_them(broker: Broker, tmp_path: Path) -> None:
    append(broker, 5)
    _cli(broker, "checkpoint")
    kept = tmp_path / "checkpoints.jsonl"
    code, _, err = _cli(broker, "export-checkpoints", "--file", str(kept))
    assert code == 0 and "1 checkpoint(s) exported" in err
    tamper(broker, "DELETE FROM audit_checkpoints", "DELETE FROM audit_log WHERE seq = 5")
    assert _cli(broker, "verify")[0] == 0
    code, _, err = _cli(broker, "verify", "--checkpoints", str(kept))
    assert code == 1 and "entry 5 is missing" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text("garbage\n")
    code, _, err = _cli(broker, "verify", "--checkpoints", str(bad))
    assert code == 2 and "line 1: not a checkpoint" in err


def test_cli_export_entries(broker: Broker) -> None:
    append(broker, 3)
    code, out, _ = _cli(broker, "export")
    assert code == 0
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [1, 2, 3]
    code, _, err = _cli(broker, "export", "--since", "yesterday")
    assert code == 2 and "bad since 'yesterday'" in err
