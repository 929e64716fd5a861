"""`access-broker audit verify` catches an edited entry, a deleted entry and a cut-off tail.

The database refuses UPDATE/DELETE on the ledger, so the attacker here first drops the
append-only triggers, as someone with full database access could.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from access.broker.store import engine as db_engine
from access.broker.store import tables as db
from access.broker.store.ledger_ddl import drop_append_only_ddl, install_guards
from tests.e2e.conftest import BrokerProcess, Cli

pytestmark = pytest.mark.e2e


def _engine(url: str) -> sa.Engine:
    return db_engine.create_engine(url)


@contextlib.contextmanager
def _unguarded(engine: sa.Engine) -> Iterator[sa.Connection]:
    """Drop the append-only triggers, tamper, and put them back (so only the chain can tell)."""
    with engine.begin() as conn:
        for statement in drop_append_only_ddl(engine.dialect.name):
            conn.exec_driver_sql(statement)
        yield conn
        install_guards(conn)


def _verify(broker: BrokerProcess) -> tuple[int, str]:
    result = broker.admin("audit", "verify", check=False)
    return result.returncode, result.stdout + result.stderr


def test_verify_detects_edit_delete_and_tail_cut(cli: Cli, broker: BrokerProcess) -> None:
    assert cli.device_login("alice", "alice-password-1").returncode == 0
    for ttl in ("5m", "6m", "7m"):
        assert (
            cli.run(
                "request", "svc-payments", "--scope", "read", "--ttl", ttl, "--reason", "INC-7"
            ).returncode
            == 0
        )
    assert broker.stop() == 0  # graceful: the broker signs a final checkpoint

    code, out = _verify(broker)
    assert code == 0, out

    engine = _engine(broker.database_url)
    with engine.begin() as conn:
        # An append-only ledger: the database itself refuses the edit.
        with pytest.raises(sa.exc.DBAPIError), conn.begin_nested():
            conn.execute(db.audit_log.update().where(db.audit_log.c.seq == 3).values(actor="mallory"))
        rows = conn.execute(sa.select(db.audit_log).order_by(db.audit_log.c.seq)).mappings().all()
    assert len(rows) >= 8

    def restore() -> None:
        with _unguarded(engine) as conn:
            conn.execute(db.audit_log.delete())
            conn.execute(db.audit_log.insert(), [dict(r) for r in rows])
        code, out = _verify(broker)
        assert code == 0, out

    # 1. An edited entry.
    with _unguarded(engine) as conn:
        conn.execute(
            db.audit_log.update().where(db.audit_log.c.seq == 3).values(details='{"reason":"nothing to see"}')
        )
    code, out = _verify(broker)
    assert code != 0
    assert re.search(r"\b3\b", out), out
    restore()

    # 2. A deleted entry in the middle.
    with _unguarded(engine) as conn:
        conn.execute(db.audit_log.delete().where(db.audit_log.c.seq == 5))
    code, out = _verify(broker)
    assert code != 0
    assert re.search(r"\b[56]\b", out), out
    restore()

    # 3. The tail cut off after the last checkpoint was signed.
    last = rows[-1]["seq"]
    with _unguarded(engine) as conn:
        conn.execute(db.audit_log.delete().where(db.audit_log.c.seq > last - 2))
    code, out = _verify(broker)
    assert code != 0, out
    restore()
    engine.dispose()


# Both dialects are covered by tests/broker/audit/test_guards.py; one end-to-end run is enough.
@pytest.mark.parametrize("e2e_db", ["sqlite"], indirect=True)
def test_dropped_guards_stop_serve_until_migrate_puts_them_back(broker: BrokerProcess) -> None:
    """Triggers dropped: `audit verify` says so, `serve` refuses, `migrate` reinstalls them."""
    assert broker.stop() == 0
    engine = _engine(broker.database_url)
    with engine.begin() as conn:
        for statement in drop_append_only_ddl(engine.dialect.name):
            conn.exec_driver_sql(statement)
    engine.dispose()

    code, out = _verify(broker)
    assert code == 1 and "audit_log_no_" in out and "access-broker migrate" in out, out
    served = broker.admin("serve", "--host", "127.0.0.1", "--port", "0", "--insecure-http", check=False)
    assert served.returncode == 1, served.stderr
    assert "refusing to serve: the audit ledger is unsafe: trigger audit_log_no_" in served.stderr
    assert "access-broker migrate" in served.stderr

    migrated = broker.admin("migrate")
    assert "reinstalled" in migrated.stderr
    code, out = _verify(broker)
    assert code == 0, out
    broker.start()
