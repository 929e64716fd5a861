"""Service kinds, one module each behind ``base.ServiceKind`` (datasette-style built-ins).

Each kind's client side is the ``access.shared.kinds`` module of the same name. The policy
refuses a service whose kind is not here when it loads (``check_kind``), so ``kind_for`` never
meets an unknown name at run time; if it does, it raises rather than treat it as TCP.
``login`` says what the broker logs in to a target with (issue 10). This package imports only
``access.broker.errors``, ``access.broker.wire.base`` (``TargetLogin``) and ``access.shared``.
"""

from __future__ import annotations

from collections.abc import Mapping

from access.broker.kinds.base import ServiceKind, UnsupportedKind
from access.broker.kinds.kubernetes import Kubernetes
from access.broker.kinds.mysql import MySQL
from access.broker.kinds.postgres import Postgres
from access.broker.kinds.redis import Redis
from access.broker.kinds.tcp import Tcp

__all__ = ["KINDS", "PLANNED_KINDS", "ServiceKind", "UnsupportedKind", "check_kind", "kind_for"]

KINDS: Mapping[str, ServiceKind] = {
    kind.name: kind for kind in (Postgres(), MySQL(), Redis(), Kubernetes(), Tcp())
}
# Kinds that are on the roadmap: a policy may not use them yet, and is told so.
PLANNED_KINDS: tuple[str, ...] = ()


def check_kind(name: str) -> None:
    """Accept ``name`` only if it is a kind the broker supports.

    Raises:
        UnsupportedKind: naming the kind as not supported yet and listing the supported kinds.
    """
    if name in KINDS:
        return
    supported = f"supported kinds: {', '.join(KINDS)}"
    if name in PLANNED_KINDS:
        raise UnsupportedKind(f"kind {name} is not supported yet; {supported}")
    raise UnsupportedKind(f"unknown kind {name[:63]!r} is not supported yet; {supported}")


def kind_for(name: str) -> ServiceKind:
    """The kind called ``name``.

    Raises:
        UnsupportedKind: there is no such kind (nothing falls back to plain TCP).
    """
    check_kind(name)
    return KINDS[name]
