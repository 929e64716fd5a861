"""PostgreSQL services: database and user from the policy's options; PG* variables for clients."""

from __future__ import annotations

from access.broker.kinds.base import ServiceKind
from access.shared.kinds.postgres import PostgresClient

__all__ = ["Postgres"]


class Postgres(ServiceKind):
    name = "postgres"
    client = PostgresClient()
    uses_database = True
