"""A grant's identity from issue to drop, and the reconciliation that leaves nothing behind.

make (``intend`` + ``make``)
    ``grants.requests`` writes the ``intended`` row in the transaction that issues the grant,
    then, after that commit and before the grant is returned, calls ``make``: the target creates
    the identity (PostgreSQL: ``VALID UNTIL`` the grant's expiry), and the name and the sealed
    password are recorded (``identity.create``). Synchronously, on purpose: fail closed and
    simple (a grant is never handed out without its identity; a target that refuses or does not
    answer fails the request with 503 and the grant is ended at once), and after the commit, on
    purpose: the row is durable before the target sees anything (a crash between leaves a trace),
    and the grant is already known, so a concurrent reconcile sees an active grant, not an
    unknown one whose identity it would end.

end (``end_for_grant``)
    The ``grant.ended`` outbox row's handler (``events.outbox``): on the replica that runs the
    outbox, the password is forgotten (state ``ending``), the target ends the identity (lock the
    login, end its sessions, hand its objects to the policy's ``owner``, drop) and the row becomes
    ``dropped`` (``identity.drop``). A target that is down raises, and the outbox retries with its
    backoff. Idempotent: an absent identity is done.

reconcile (``ReconcileLoop``, at start and every ``identity_reconcile_interval`` seconds)
    For each dynamic service: every identity on the target whose tag names THIS broker
    (``targets.broker_id``) and a grant that has ended, or that the store does not know, is ended
    (``identity.reconcile``), also one the store lost; and every live row whose grant has ended
    and that has nothing left on the target is closed. Identities of other brokers, and names of
    ours without a readable tag, are left alone: nothing proves they are ours to drop.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.errors import BrokerError
from access.broker.identities.sealing import Sealer
from access.broker.identities.targets import broker_id, provisioner
from access.broker.loops import Loop
from access.broker.policy.model import ServiceConfig
from access.broker.provision.base import IdentitySpec, Provisioner
from access.broker.provision.common import ProvisionFailed
from access.broker.store import grants as grant_store
from access.broker.store import identities as store

if TYPE_CHECKING:
    from access.broker.runtime import Broker
    from access.broker.store.grants import GrantRecord

__all__ = ["ReconcileLoop", "end_for_grant", "intend", "make", "reconcile"]

log = logging.getLogger(__name__)


def _target(service: str, grant_id: str) -> str:
    """``grants.lifecycle.grant_target``'s form (a test keeps them equal): importing it would close
    a cycle, grants -> events.outbox -> identities (the ``grant.ended`` handler) -> grants."""
    return f"service:{service}/{grant_id}"


def _audit(
    conn: sa.Connection, broker: Broker, action: Action, service: str, grant_id: str, **details: Any
) -> None:
    ledger.append(
        conn,
        broker.clock,
        actor="broker",
        action=action,
        target=_target(service, grant_id),
        details={"grant_id": grant_id, "service": service, **details},
    )


# ---------------------------------------------------------------- make


def intend(conn: sa.Connection, record: GrantRecord, now: datetime) -> None:
    """Record, in the issuing transaction, that the grant will get an identity."""
    store.intend(conn, record.id, record.service, now)


def spec_for(svc: ServiceConfig, record: GrantRecord) -> IdentitySpec:
    creds = svc.credentials
    assert creds is not None
    return IdentitySpec(
        grant_id=record.id,
        principal=record.subject,
        scope=record.scope,
        expires_at=record.expires_at,
        privileges=creds.privileges(svc.kind, record.scope),
        connection_limit=creds.connection_limit,
    )


def make(broker: Broker, record: GrantRecord) -> str:
    """Make the grant's identity on the target and record it; return its name.

    Raises:
        BrokerError: the target refused or did not answer (the row keeps the error; the caller
            ends the grant, and the end cleans up whatever the target made).
    """
    svc = broker.policy.services[record.service]
    try:
        with provisioner(broker, svc) as target:
            identity = target.create(spec_for(svc, record))
            sealed = Sealer(broker.token_key).seal(record.id, identity.password)
            with broker.transaction() as conn:
                if store.created(conn, record.id, identity.name, sealed):
                    _audit(conn, broker, Action.IDENTITY_CREATE, svc.name, record.id, identity=identity.name)
                    return identity.name
            target.end(identity.name)  # the grant ended while it was being made
    except (BrokerError, ValueError) as exc:
        with broker.transaction() as conn:
            store.note_error(conn, record.id, _reason(exc))
        if isinstance(exc, BrokerError):
            raise
        # The provisioner refused the spec itself (a role that reaches superuser, say).
        raise ProvisionFailed(str(exc), hint="correct the service's privileges in the policy") from exc
    raise _ended_meanwhile(record.id)


def _ended_meanwhile(grant_id: str) -> BrokerError:
    from access.broker.errors import Conflict

    return Conflict(f"grant {grant_id} ended while its identity was being made", hint="request a new grant")


def _reason(exc: Exception) -> str:
    return exc.message if isinstance(exc, BrokerError) else f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------- end


def end_for_grant(broker: Broker, grant_id: str, reason: str = "ended") -> bool:
    """End the grant's identity, if it has one (the ``grant.ended`` handler). True if it had one.

    Raises:
        BrokerError: the target is down or refused (the outbox tries again later).
    """
    with broker.transaction() as conn:
        row = store.get(conn, grant_id)
        if row is None or row.state not in store.LIVE:
            return False
        store.ending(conn, grant_id)  # the password is forgotten before anything else
    svc = broker.policy.service(row.service)
    if svc is None or not svc.dynamic:
        raise BrokerError(
            f"grant {grant_id}'s identity is on {row.service}, which the policy no longer makes"
            " identities for",
            hint="put the service back in the policy until its identities are gone",
        )
    with provisioner(broker, svc) as target:
        name = row.target_name or _find(target, broker_id(broker), grant_id)
        try:
            if name is not None:
                target.end(name)
        except BrokerError as exc:
            with broker.transaction() as conn:
                store.note_error(conn, grant_id, exc.message)
            raise
    with broker.transaction() as conn:
        if row.error is not None and row.target_name is None:
            store.failed(conn, grant_id, row.error, broker.clock.now())
        else:
            store.dropped(conn, grant_id, broker.clock.now())
        _audit(conn, broker, Action.IDENTITY_DROP, row.service, grant_id, identity=name, reason=reason)
    return True


def _find(target: Provisioner, ours: str, grant_id: str) -> str | None:
    """The name of the grant's identity on the target (made, but not recorded: a crash between)."""
    return next((o.name for o in target.ours() if o.grant_id == grant_id and o.broker_id == ours), None)


# ---------------------------------------------------------------- reconcile


@dataclass(frozen=True)
class Reconciled:
    service: str
    grant_id: str
    identity: str | None
    why: str


def reconcile(broker: Broker) -> list[Reconciled]:
    """One pass over every dynamic service; returns what it ended or closed.

    Raises:
        BrokerError: a target could not be listed or an identity not ended (the others were still
            done); the loop backs off and tries again.
    """
    done: list[Reconciled] = []
    failures: list[BrokerError] = []
    for svc in broker.policy.services.values():
        if svc.dynamic:
            try:
                done += _reconcile_service(broker, svc)
            except BrokerError as exc:
                failures.append(exc)
    if failures:
        raise failures[0]
    return done


def _ended(state: tuple[str, datetime, str | None] | None, now: datetime) -> str | None:
    """Why an identity of this grant must go (None: the grant is usable)."""
    if state is None:
        return "unknown grant"
    grant_state, expires_at, _ = state
    if grant_state == "active" and now < expires_at:
        return None
    return "grant " + ("expired" if grant_state == "active" else grant_state)


def _reconcile_service(broker: Broker, svc: ServiceConfig) -> list[Reconciled]:
    ours = broker_id(broker)
    done: list[Reconciled] = []
    with provisioner(broker, svc) as target:
        found = [o for o in target.ours() if o.broker_id == ours and o.grant_id is not None]
        with broker.transaction() as conn:
            rows = store.live(conn, svc.name)
            ids = [o.grant_id for o in found if o.grant_id] + [r.grant_id for r in rows]
            states = grant_store.states(conn, ids)
        now = broker.clock.now()
        for identity in found:
            assert identity.grant_id is not None
            why = _ended(states.get(identity.grant_id), now)
            if why is None:
                continue
            target.end(identity.name)
            done.append(Reconciled(svc.name, identity.grant_id, identity.name, why))
        on_target = {o.grant_id for o in found}
        for row in rows:
            why = _ended(states.get(row.grant_id), now)
            if why is not None and row.grant_id not in on_target:
                done.append(Reconciled(svc.name, row.grant_id, None, why))
    with broker.transaction() as conn:
        for item in done:
            store.dropped(conn, item.grant_id, now)
            _audit(
                conn,
                broker,
                Action.IDENTITY_RECONCILE,
                item.service,
                item.grant_id,
                identity=item.identity,
                why=item.why,
            )
    return done


class ReconcileLoop(Loop):
    """Reconcile at start, then every ``identity_reconcile_interval`` seconds."""

    name = "identity reconcile"

    def __init__(self, broker: Broker, interval: float | None = None) -> None:
        super().__init__(broker, interval or broker.settings.identity_reconcile_interval, max_backoff=60.0)

    async def tick(self) -> None:
        await asyncio.to_thread(reconcile, self.broker)

    async def run(self) -> None:
        await self.step()
        await super().run()
