"""PostgreSQL services: the broker logs in with the policy's user and password; PG* variables for clients."""

from __future__ import annotations

from access.broker.kinds.base import ServiceKind
from access.shared.kinds.postgres import PostgresClient

__all__ = ["Postgres"]


class Postgres(ServiceKind):
    name = "postgres"
    client = PostgresClient()
    broker_logs_in = True
    uses_database = True
