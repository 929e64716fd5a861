"""The login the broker presents to a dynamic service's target for a grant (the tunnel's seam),
and the connection limit the broker keeps for the targets that have none of their own (Redis)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

from access.broker.errors import RateLimited
from access.broker.identities.sealing import Sealer
from access.broker.store import connections
from access.broker.store import grants as grant_store
from access.broker.store import identities as store
from access.broker.wire.base import TargetLogin

if TYPE_CHECKING:
    from access.broker.runtime import Broker

__all__ = ["check_connection_limit", "identity_login"]


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
    password = Sealer(broker.token_ring).open(grant_id, row.sealed_password)
    if password is None:
        return None
    svc = broker.policy.service(row.service)
    database = svc.options.get("database") if svc is not None and svc.kind != "redis" else None
    return TargetLogin(user=row.target_name, password=password, database=str(database) if database else None)


def check_connection_limit(
    conn: sa.Connection, broker: Broker, service: str, grant_id: str, target: str
) -> None:
    """Refuse one more connection of a grant to a dynamic Redis service once it has the policy's
    ``connection_limit`` open, counted across replicas (``open_connections``, ``target`` being the
    grant's audit target), in the caller's transaction, before it records the new one.

    PostgreSQL (``CONNECTION LIMIT``) and MySQL (``MAX_USER_CONNECTIONS``) enforce the limit on
    the identity themselves; Redis ACL users have no such limit, so the broker, through which
    every connection of the identity goes (only the broker knows its password), keeps it. The
    grant's row is locked while counting, so two replicas opening at once cannot both take the
    last place. A connection counts from its ``connection.open`` until its ``connection.close``
    is written (milliseconds after it closes; for a replica that died, once another writes it).

    Raises:
        RateLimited: the grant has ``connection_limit`` connections open already.
    """
    svc = broker.policy.service(service)
    if svc is None or svc.kind != "redis" or not svc.dynamic or svc.credentials is None:
        return
    limit = svc.credentials.connection_limit
    grant_store.lock(conn, grant_id)
    if connections.count_open(conn, target) >= limit:
        raise RateLimited(
            f"grant {grant_id} already has {limit} connections open to {service}, the most its"
            " identity may have (the service's connection_limit)",
            hint="close one of them and connect again; operators: credentials.connection_limit in the policy",
        )
