"""MySQL and MariaDB services: the broker logs in with the policy's user and password."""

from __future__ import annotations

from access.broker.kinds.base import ServiceKind
from access.shared.kinds.mysql import MySQLClient

__all__ = ["MySQL"]


class MySQL(ServiceKind):
    name = "mysql"
    client = MySQLClient()
    broker_logs_in = True
    uses_database = True
