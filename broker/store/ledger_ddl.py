"""Database-level guards that make the audit ledger append-only.

The application never updates or deletes ledger rows; these triggers make the database refuse
it too, so a bug or a careless operator with SQL access cannot quietly rewrite history. Someone
who drops the triggers first can still edit rows: that is what the hash chain and the signed
checkpoints catch (``access-broker audit verify``).
"""

from __future__ import annotations

__all__ = ["append_only_ddl", "drop_append_only_ddl"]

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
