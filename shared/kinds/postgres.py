"""PostgreSQL clients: ``PG*`` variables, and the password in a private ``PGPASSFILE``."""

from __future__ import annotations

from access.shared.kinds.base import ClientContext, ClientKind, ClientSetup, ConnectionInfo

__all__ = ["PostgresClient"]


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


class PostgresClient(ClientKind):
    name = "postgres"

    def configure(self, setup: ClientSetup, info: ConnectionInfo, where: ClientContext) -> None:
        env = setup.env
        env.update(PGHOST=where.host, PGPORT=str(where.port))
        if info.database:
            env["PGDATABASE"] = info.database
        if info.user:
            env["PGUSER"] = info.user
        if where.with_secrets and info.password is not None:
            # A passfile rather than PGPASSWORD: the environment of a process is readable by
            # its user's other processes and ends up in crash reports.
            fields = (where.host, str(where.port), info.database or "*", info.user or "*", info.password)
            line = ":".join(_pgpass_escape(v) for v in fields)
            env["PGPASSFILE"] = str(setup.secret_file(where.secret_dir, "access-pgpass-", line + "\n"))
