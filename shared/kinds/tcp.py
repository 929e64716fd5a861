"""Plain TCP clients: only the ``ACCESS_*`` variables every kind gets."""

from __future__ import annotations

from access.shared.kinds.base import ClientKind

__all__ = ["TcpClient"]


class TcpClient(ClientKind):
    name = "tcp"
