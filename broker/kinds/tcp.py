"""Plain TCP services: bytes through the tunnel, ACCESS_HOST/ACCESS_PORT for the client."""

from __future__ import annotations

from access.broker.kinds.base import ServiceKind

__all__ = ["Tcp"]


class Tcp(ServiceKind):
    name = "tcp"
