"""Plain TCP services: bytes through the tunnel, ACCESS_HOST/ACCESS_PORT for the client.

Only a service the policy declares ``kind: tcp`` is one: no other kind falls back to it.
"""

from __future__ import annotations

from access.broker.kinds.base import ServiceKind
from access.shared.kinds.tcp import TcpClient

__all__ = ["Tcp"]


class Tcp(ServiceKind):
    name = "tcp"
    client = TcpClient()
