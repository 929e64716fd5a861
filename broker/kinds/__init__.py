"""Service kinds, one module each behind ``base.ServiceKind`` (datasette-style built-ins)."""

from __future__ import annotations

from access.broker.kinds.base import ServiceKind
from access.broker.kinds.mysql import MySQL
from access.broker.kinds.postgres import Postgres
from access.broker.kinds.redis import Redis
from access.broker.kinds.tcp import Tcp

__all__ = ["KINDS", "ServiceKind", "kind_for"]

KINDS: dict[str, ServiceKind] = {kind.name: kind for kind in (Postgres(), MySQL(), Redis(), Tcp())}


def kind_for(name: str) -> ServiceKind:
    """The kind called ``name``; unknown kinds (e.g. kubernetes, not built yet) behave as plain TCP."""
    return KINDS.get(name, KINDS["tcp"])
