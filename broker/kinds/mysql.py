"""MySQL and MariaDB services: database and user from the policy's options."""

from __future__ import annotations

from access.broker.kinds.base import ServiceKind
from access.shared.kinds.mysql import MySQLClient

__all__ = ["MySQL"]


class MySQL(ServiceKind):
    name = "mysql"
    client = MySQLClient()
    uses_database = True
