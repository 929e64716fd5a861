"""MySQL and MariaDB services: database and user from the policy's options."""

from __future__ import annotations

from access.broker.kinds.base import ServiceKind

__all__ = ["MySQL"]


class MySQL(ServiceKind):
    name = "mysql"
    default_port = 3306
    uses_database = True
