"""Database-level guards that make the audit ledger append-only.

The application never updates or deletes ledger rows; these triggers make the database refuse
it too, so a bug or a careless operator with SQL access cannot quietly rewrite history. Someone
who drops the triggers first can still edit rows: that is what the hash chain and the signed
checkpoints catch (``access-broker audit verify``).

``guard_problems`` says whether the guards are all there and unchanged: the broker refuses to
serve, and stops signing checkpoints, while they are not; ``install_guards`` (what
``access-broker migrate`` runs when they are not) puts them back.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["append_only_ddl", "drop_append_only_ddl", "guard_problems", "install_guards"]

_MESSAGE = "audit_log is append-only"


def append_only_ddl(dialect: str) -> list[str]:
    if dialect == "sqlite":
        return [
            f"CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
            f"BEGIN SELECT RAISE(ABORT, '{_MESSAGE}'); END",
            f"CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
            f"BEGIN SELECT RAISE(ABORT, '{_MESSAGE}'); END",
            f"CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints "
            f"BEGIN SELECT RAISE(ABORT, '{_MESSAGE}'); END",
            f"CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints "
            f"BEGIN SELECT RAISE(ABORT, '{_MESSAGE}'); END",
        ]
    if dialect == "postgresql":
        return [
            "CREATE FUNCTION audit_log_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN RAISE EXCEPTION '{_MESSAGE}' USING ERRCODE = 'insufficient_privilege'; END $$",
            "CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION audit_log_refuse()",
            "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse()",
            "CREATE TRIGGER audit_checkpoints_no_change BEFORE UPDATE OR DELETE ON audit_checkpoints "
            "FOR EACH ROW EXECUTE FUNCTION audit_log_refuse()",
            "CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse()",
        ]
    raise ValueError(f"no append-only guard for {dialect}")


def drop_append_only_ddl(dialect: str) -> list[str]:
    if dialect == "sqlite":
        return [
            "DROP TRIGGER IF EXISTS audit_log_no_update",
            "DROP TRIGGER IF EXISTS audit_log_no_delete",
            "DROP TRIGGER IF EXISTS audit_checkpoints_no_update",
            "DROP TRIGGER IF EXISTS audit_checkpoints_no_delete",
        ]
    return [
        "DROP TRIGGER IF EXISTS audit_log_no_change ON audit_log",
        "DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log",
        "DROP TRIGGER IF EXISTS audit_checkpoints_no_change ON audit_checkpoints",
        "DROP TRIGGER IF EXISTS audit_checkpoints_no_truncate ON audit_checkpoints",
        "DROP FUNCTION IF EXISTS audit_log_refuse()",
    ]


# ---------------------------------------------------------------- are the guards there?

_PG_FUNCTION = "audit_log_refuse"
# pg_trigger.tgtype bits: ROW 1, BEFORE 2, INSERT 4, DELETE 8, UPDATE 16, TRUNCATE 32.
_PG_TRIGGERS = {
    "audit_log_no_change": ("audit_log", 1 | 2 | 8 | 16),
    "audit_log_no_truncate": ("audit_log", 2 | 32),
    "audit_checkpoints_no_change": ("audit_checkpoints", 1 | 2 | 8 | 16),
    "audit_checkpoints_no_truncate": ("audit_checkpoints", 2 | 32),
}


def _squeeze(text: str) -> str:
    return " ".join(text.split())


def guard_problems(conn: sa.Connection) -> list[str]:
    """What is wrong with the ledger's append-only guards on ``conn``'s database; [] when intact.

    A guard is intact when its trigger exists on its table with exactly the definition
    ``append_only_ddl`` gives (SQLite: the stored CREATE statement; PostgreSQL: timing, events,
    row or statement, no WHEN clause or column list, enabled, and the refusing function's body).

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database could not be read.
    """
    dialect = conn.dialect.name
    if dialect == "sqlite":
        return _sqlite_problems(conn)
    if dialect == "postgresql":
        return _pg_problems(conn)
    raise ValueError(f"no append-only guard for {dialect}")


def _sqlite_problems(conn: sa.Connection) -> list[str]:
    query = sa.text("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger'")
    stored = {row.name: (row.tbl_name, row.sql or "") for row in conn.execute(query)}
    problems = []
    for statement in append_only_ddl("sqlite"):
        words = statement.split()
        name, table = words[2], words[words.index("ON") + 1]
        if name not in stored:
            problems.append(f"trigger {name} on {table} is missing")
        elif stored[name][0] != table or _squeeze(stored[name][1]) != _squeeze(statement):
            problems.append(f"trigger {name} on {table} was changed")
    return problems


def _pg_problems(conn: sa.Connection) -> list[str]:
    rows = conn.execute(
        sa.text(
            "SELECT t.tgname, c.relname, t.tgtype, t.tgenabled, t.tgqual IS NULL AS unconditional, "
            "t.tgattr::text AS columns, p.proname, p.prosrc, l.lanname "
            "FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_language l ON l.oid = p.prolang "
            "WHERE NOT t.tgisinternal "
            "AND t.tgrelid IN (to_regclass('audit_log'), to_regclass('audit_checkpoints'))"
        )
    ).all()
    found = {row.tgname: row for row in rows}
    body = _squeeze(append_only_ddl("postgresql")[0].split("$$")[1])
    problems = []
    for name, (table, tgtype) in _PG_TRIGGERS.items():
        row = found.get(name)
        if row is None or row.relname != table:
            problems.append(f"trigger {name} on {table} is missing")
        elif row.tgenabled not in ("O", "A"):
            problems.append(f"trigger {name} on {table} is disabled")
        elif (
            row.tgtype != tgtype
            or not row.unconditional
            or row.columns.strip()
            or row.proname != _PG_FUNCTION
            or row.lanname != "plpgsql"
            or _squeeze(row.prosrc) != body
        ):
            problems.append(f"trigger {name} on {table} was changed")
    return problems


def install_guards(conn: sa.Connection) -> None:
    """Drop whatever is left of the guards and create them again, in the caller's transaction.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database refused (e.g. no privilege).
    """
    dialect = conn.dialect.name
    for statement in [*drop_append_only_ddl(dialect), *append_only_ddl(dialect)]:
        conn.exec_driver_sql(statement)
