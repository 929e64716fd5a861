"""PostgreSQL services: database and user from the policy's options; PG* variables for clients."""

from __future__ import annotations

from access.broker.kinds.base import ServiceKind

__all__ = ["Postgres"]


class Postgres(ServiceKind):
    name = "postgres"
    default_port = 5432
    uses_database = True
