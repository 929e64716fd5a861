"""Redis services: a password (``REDISCLI_AUTH`` for the client) when one is configured."""

from __future__ import annotations

from access.broker.kinds.base import ServiceKind
from access.shared.kinds.redis import RedisClient

__all__ = ["Redis"]


class Redis(ServiceKind):
    name = "redis"
    client = RedisClient()
