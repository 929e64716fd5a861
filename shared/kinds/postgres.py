"""PostgreSQL clients: ``PG*`` variables; no password (the broker logs in to the target itself)."""

from __future__ import annotations

from access.shared.kinds.base import ClientContext, ClientKind, ClientSetup, ConnectionInfo

__all__ = ["PostgresClient"]

# The user name the client presents to the local port: the broker ignores it and logs in as the
# grant's identity, but libpq needs one (and defaults the database to it).
LOCAL_USER = "access"


class PostgresClient(ClientKind):
    name = "postgres"

    def configure(self, setup: ClientSetup, info: ConnectionInfo, where: ClientContext) -> None:
        env = setup.env
        env.update(PGHOST=where.host, PGPORT=str(where.port), PGUSER=info.user or LOCAL_USER)
        if info.database:
            env["PGDATABASE"] = info.database
