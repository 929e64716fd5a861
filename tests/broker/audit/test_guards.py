"""The ledger's append-only guards: noticed when dropped, disabled or changed (SQLite and
PostgreSQL), reinstalled by ``access-broker migrate``, reported by ``audit verify``, and the
checkpoint loop signs nothing and gives no new access while they are gone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from access.broker.admin.main import app as admin_app
from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.audit.checkpoints import (
    CheckpointLoop,
    check_ledger,
    refuse_unsafe,
    stored_checkpoints,
    write_checkpoint,
)
from access.broker.errors import LedgerUnsafe
from access.broker.runtime import Broker
from access.broker.store.ledger_ddl import drop_append_only_ddl, guard_problems, install_guards
from access.broker.store.tables import audit_log
from tests.broker.audit.test_checkpoints import append, tamper


@pytest.fixture
def broker(make_broker: Callable[..., Broker], db_url: str) -> Broker:
    return make_broker(db_url=db_url)


def _ddl(broker: Broker, *statements: str) -> None:
    with broker.engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


def _problems(broker: Broker) -> list[str]:
    with broker.engine.connect() as conn:
        return guard_problems(conn)


def _admin(broker: Broker, *args: str) -> tuple[int, str, str]:
    env = {
        "ACCESS_BROKER_DATA_DIR": str(broker.settings.data_dir),
        "ACCESS_BROKER_DATABASE_URL": broker.settings.resolved_database_url,
    }
    result = CliRunner().invoke(admin_app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_intact_guards_have_no_problems(broker: Broker) -> None:
    assert _problems(broker) == []


def test_a_dropped_disabled_or_changed_guard_is_named(broker: Broker) -> None:
    pg = broker.engine.dialect.name == "postgresql"
    if pg:
        _ddl(broker, "DROP TRIGGER audit_log_no_truncate ON audit_log")
        assert _problems(broker) == ["trigger audit_log_no_truncate on audit_log is missing"]
        _ddl(broker, "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_change")
        assert "trigger audit_log_no_change on audit_log is disabled" in _problems(broker)
        # The same name, a neutered function: triggers that no longer refuse anything.
        _ddl(
            broker,
            "ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_change",
            "CREATE OR REPLACE FUNCTION audit_log_refuse() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN RETURN OLD; END $$",
        )
        assert "trigger audit_checkpoints_no_change on audit_checkpoints was changed" in _problems(broker)
    else:
        _ddl(broker, "DROP TRIGGER audit_log_no_delete")
        assert _problems(broker) == ["trigger audit_log_no_delete on audit_log is missing"]
        _ddl(
            broker,
            "DROP TRIGGER audit_log_no_update",
            "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log WHEN 0 "
            "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
        )
        assert "trigger audit_log_no_update on audit_log was changed" in _problems(broker)
    with broker.engine.begin() as conn:
        install_guards(conn)
    assert _problems(broker) == []


def test_migrate_reinstalls_the_guards_and_records_it(broker: Broker) -> None:
    append(broker, 2)
    _ddl(broker, *drop_append_only_ddl(broker.engine.dialect.name))
    assert len(_problems(broker)) == 4

    code, _, err = _admin(broker, "migrate")
    assert code == 0, err
    assert "audit_log_no_" in err and "reinstalled" in err and "audit verify" in err
    assert _problems(broker) == []
    with pytest.raises(sa.exc.DBAPIError), broker.engine.begin() as conn:
        conn.execute(audit_log.update().values(actor="mallory"))
    with broker.engine.connect() as conn:
        last = conn.execute(sa.select(audit_log).order_by(audit_log.c.seq.desc()).limit(1)).one()
    assert last.action == "ledger.guards_restore" and "audit_log_no_" in last.details

    code, _, err = _admin(broker, "migrate")  # nothing to do the second time: nothing recorded
    assert code == 0 and "reinstalled" not in err
    with broker.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar_one() == 3


def test_verify_reports_missing_guards(broker: Broker) -> None:
    append(broker, 2)
    assert _admin(broker, "audit", "verify")[0] == 0
    _ddl(broker, drop_append_only_ddl(broker.engine.dialect.name)[0])
    code, out, err = _admin(broker, "audit", "verify")
    assert code == 1, out + err
    assert "is missing: the database no longer refuses edits" in err
    assert "access-broker migrate" in err


def test_the_broker_refuses_to_serve_without_guards(broker: Broker) -> None:
    refuse_unsafe(broker)  # intact: no complaint
    _ddl(broker, drop_append_only_ddl(broker.engine.dialect.name)[0])
    with pytest.raises(LedgerUnsafe) as err:
        refuse_unsafe(broker)
    assert err.value.message.startswith("refusing to serve: the audit ledger is unsafe: trigger ")
    assert err.value.hint is not None and "access-broker migrate" in err.value.hint


def test_checkpoint_loop_stops_signing_and_fails_closed_until_the_guards_are_back(broker: Broker) -> None:
    append(broker, 3)
    loop = CheckpointLoop(broker)
    asyncio.run(loop.tick())
    _ddl(broker, *drop_append_only_ddl(broker.engine.dialect.name))
    append(broker, 2)  # the broker's own ledger entries go on until the next tick

    asyncio.run(loop.tick())
    with broker.engine.connect() as conn:
        assert [c.seq for c in stored_checkpoints(conn)] == [3]  # nothing signed over it
    assert "audit_log_no_" in (ledger.unsafe(broker.engine) or "")
    with pytest.raises(LedgerUnsafe), broker.transaction() as conn:  # no new access...
        ledger.append(conn, broker.clock, actor="alice", action=Action.GRANT_ISSUE, target="g")
    with broker.transaction() as conn:  # ...but ends are still recorded
        ledger.append(conn, broker.clock, actor="alice", action=Action.GRANT_REVOKE, target="g")
    with pytest.raises(LedgerUnsafe):
        write_checkpoint(broker)  # `access-broker audit checkpoint` refuses as well

    code, _, err = _admin(broker, "migrate")
    assert code == 0, err
    asyncio.run(loop.tick())
    assert ledger.unsafe(broker.engine) is None
    with broker.engine.connect() as conn:
        assert [c.seq for c in stored_checkpoints(conn)] == [3, 7]


def test_checkpoint_loop_signs_nothing_over_a_tail_that_fails_verification(broker: Broker) -> None:
    """The guards put back after an edit since the last checkpoint: no signature may cover it."""
    append(broker, 4)
    loop = CheckpointLoop(broker)
    asyncio.run(loop.tick())
    append(broker, 3)
    tamper(broker, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 6")
    asyncio.run(loop.tick())
    assert (ledger.unsafe(broker.engine) or "").startswith("the audit ledger is unsafe: entry 6 was changed")
    with broker.engine.connect() as conn:
        assert [c.seq for c in stored_checkpoints(conn)] == [4]


def test_deleted_checkpoint_rows_are_noticed_by_the_loop(broker: Broker) -> None:
    append(broker, 4)
    loop = CheckpointLoop(broker)
    asyncio.run(loop.tick())
    tamper(broker, "DELETE FROM audit_checkpoints")
    with broker.engine.connect() as conn:
        assert check_ledger(conn, broker.audit_key.public_key()) == []  # nothing to see from inside
        assert check_ledger(conn, broker.audit_key.public_key(), loop.anchor) == [
            "the checkpoint at seq 4 is gone: checkpoint rows were deleted"
        ]
    asyncio.run(loop.tick())
    assert ledger.unsafe(broker.engine) is not None
