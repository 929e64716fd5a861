"""Redis services: the broker logs in (AUTH) with the service's user and password; the client sends none."""

from __future__ import annotations

from access.broker.kinds.base import ServiceKind
from access.shared.kinds.redis import RedisClient

__all__ = ["Redis"]


class Redis(ServiceKind):
    name = "redis"
    client = RedisClient()
    broker_logs_in = True
