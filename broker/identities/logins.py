"""The login the broker presents to a dynamic service's target for a grant (the tunnel's seam)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from access.broker.identities.sealing import Sealer
from access.broker.store import grants as grant_store
from access.broker.store import identities as store
from access.broker.wire.base import TargetLogin

if TYPE_CHECKING:
    from access.broker.runtime import Broker

__all__ = ["identity_login"]


def identity_login(broker: Broker, grant_id: str) -> TargetLogin | None:
    """The grant's identity as a ``TargetLogin``, or None: no identity made (yet), the grant not
    active (or past its expiry), or the password no longer opens (the signing key changed). The
    caller refuses the channel on None (and still checks the grant itself, as for any channel).

    Raises:
        Unavailable: the database could not be reached.
    """
    with broker.transaction() as conn:
        row = store.get(conn, grant_id)
        grant = grant_store.states(conn, [grant_id]).get(grant_id)
    if row is None or row.state != store.CREATED or row.target_name is None or row.sealed_password is None:
        return None
    if grant is None or grant[0] != "active" or broker.clock.now() >= grant[1]:
        return None  # ended, or past its expiry before the expiry loop saw it: fail closed
    password = Sealer(broker.token_key).open(grant_id, row.sealed_password)
    if password is None:
        return None
    svc = broker.policy.service(row.service)
    database = svc.options.get("database") if svc is not None and svc.kind != "redis" else None
    return TargetLogin(user=row.target_name, password=password, database=str(database) if database else None)
