"""Ending grants before their expiry: a revoke by the owner or an audit reader, and a lock-out."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from access.broker.auth.principal import AuthContext
from access.broker.grants import lifecycle
from access.broker.grants.lifecycle import GrantEvent, GrantTx
from access.broker.grants.queries import effective_state, fetch, not_found, to_model, visible
from access.broker.runtime import Broker
from access.broker.store import grants as store
from access.broker.store.grants import GrantRecord
from access.shared.models import Grant, GrantState

__all__ = ["EndedGrants", "end_grants_for_principal", "revoke_grant"]


def revoke_grant(broker: Broker, ctx: AuthContext, grant_id: str) -> Grant:
    """End an active grant now (owner or audit reader), audited; live tunnels are cut. A pending
    request is cancelled the same way (``grant.revoke``, reason ``cancelled``): nobody can approve
    it any more.

    Idempotent: a grant that already ended (expired, revoked, denied) is returned as it is,
    unchanged and with nothing audited, so "revoke whatever happened" in a pipeline's clean-up
    succeeds; the caller tells by its ``state`` and ``ended_at``.

    Raises:
        NotFound: no such grant, or not the caller's to see.
        Unavailable: the database could not be reached; nothing changed.
    """
    with lifecycle.transaction(broker) as tx:
        record = fetch(tx.conn, grant_id)
        if record is None or not visible(ctx, record, broker):
            raise not_found(grant_id)
        now = broker.clock.now()
        state = effective_state(record.state, record.expires_at, now)
        if state in (GrantState.ACTIVE, GrantState.PENDING):
            # None: ended meanwhile (expired, revoked, decided by another request): as it is, then.
            why = "revoked" if state == GrantState.ACTIVE else "cancelled"
            lifecycle.apply(tx, record, GrantEvent.REVOKE, actor=ctx.name, now=now, reason=why)
            record = store.get(tx.conn, grant_id)
    assert record is not None  # read (and maybe updated) in this transaction
    return to_model(record, now)


@dataclass(frozen=True)
class EndedGrants:
    """What ``end_grants_for_principal`` ended: active grants revoked, requests cancelled."""

    revoked: tuple[str, ...]
    cancelled: tuple[str, ...]

    @property
    def ids(self) -> list[str]:
        return [*self.revoked, *self.cancelled]


def end_grants_for_principal(
    conn: sa.Connection, broker: Broker, principal_id: str, reason: str, actor: str
) -> EndedGrants:
    """Revoke every usable grant of a principal, and cancel its requests waiting for review,
    inside the caller's transaction; return their ids.

    Each is audited (``grant.revoke`` with ``reason``) and gets its ``grant.ended`` outbox row.
    Nothing is published: the caller owns the transaction, so it publishes
    ``GrantEnded(id, reason)`` after its commit.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database failed; the caller's transaction must fail.
    """
    tx = GrantTx(conn, broker)
    now = broker.clock.now()

    def end(records: list[GrantRecord]) -> tuple[str, ...]:
        return tuple(
            record.id
            for record in records
            if lifecycle.apply(tx, record, GrantEvent.REVOKE, actor=actor, now=now, reason=reason)
        )

    revoked = end(store.live(conn, now, states=("active",), principal_id=principal_id))
    cancelled = end(store.live(conn, now, states=("pending",), principal_id=principal_id))
    return EndedGrants(revoked=revoked, cancelled=cancelled)
