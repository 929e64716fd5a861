"""Reconciliation: the targets and the store agree, and nothing is left behind (``ReconcileLoop``).

At start and every ``identity_reconcile_interval`` seconds, for each dynamic service:

* every identity on the target whose tag names THIS broker (``targets.broker_id``) and a grant
  that has ended, or that the store does not know, is ended (``identity.reconcile``), also one
  the store lost; identities of other brokers, and names of ours without a readable tag, are
  left alone: nothing proves they are ours to drop;
* every live row whose grant has ended and that has nothing left on the target is closed (an
  ``intended`` row whose broker died before the target made anything, say);
* every ``intended`` row whose grant is active and whose attempt began more than
  ``lifecycle.MAKE_GRACE`` ago (the broker that issued the grant died before the target made
  it, or before it recorded it) is taken over and made (``identity.create``, ``why:
  recovered``): the provisioner finds an identity made right before the crash by its tag and
  gives it a fresh password. Without this the grant could never be connected with.

Every end is audited once, whichever path closes the row first (this one or the ``grant.ended``
outbox handler, on any replica): the store's transitions are conditional, and only the one that
moved the row writes the entry. One item that fails (a target that refuses) does not stop the
others; the loop backs off and tries again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from access.broker.audit.actions import Action
from access.broker.errors import BrokerError, Conflict
from access.broker.identities.lifecycle import MAKE_GRACE, audit, make
from access.broker.identities.targets import broker_id, provisioner
from access.broker.loops import Loop
from access.broker.policy.model import ServiceConfig
from access.broker.provision.base import OurIdentity, Provisioner
from access.broker.store import grants as grant_store
from access.broker.store import identities as store

if TYPE_CHECKING:
    from access.broker.runtime import Broker

__all__ = ["ReconcileLoop", "Reconciled", "reconcile"]

RECOVERED = "recovered"  # identity.create's ``why`` when reconcile made it


@dataclass(frozen=True)
class Reconciled:
    service: str
    grant_id: str
    identity: str | None
    why: str


def reconcile(broker: Broker) -> list[Reconciled]:
    """One pass over every dynamic service; returns what it ended, closed or made (and audited).

    Raises:
        BrokerError: a target could not be listed, or an identity not ended or made (the others
            were still done); the loop backs off and tries again.
    """
    done: list[Reconciled] = []
    failures: list[BrokerError] = []
    for svc in broker.policy.services.values():
        if svc.dynamic:
            try:
                done += _reconcile_service(broker, svc, failures)
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


def _reconcile_service(broker: Broker, svc: ServiceConfig, failures: list[BrokerError]) -> list[Reconciled]:
    ours = broker_id(broker)
    done: list[Reconciled | None] = []
    with provisioner(broker, svc) as target:
        # Listed before the rows are read: an identity made after the listing belongs to a grant
        # the read then sees (an issue commits its grant before the target makes anything).
        found = [o for o in target.ours() if o.broker_id == ours and o.grant_id is not None]
        with broker.transaction() as conn:
            rows = {r.grant_id: r for r in store.live(conn, svc.name)}
            states = grant_store.states(conn, [o.grant_id for o in found if o.grant_id] + list(rows))
        now = broker.clock.now()
        for identity in found:
            assert identity.grant_id is not None
            why = _ended(states.get(identity.grant_id), now)
            if why is not None:
                done.append(_attempt(failures, _end_found, broker, target, svc, identity, why))
        on_target = {o.grant_id for o in found}
        for row in rows.values():
            why = _ended(states.get(row.grant_id), now)
            if why is not None and row.grant_id not in on_target:
                done.append(_attempt(failures, _close, broker, svc, row.grant_id, why))
            elif why is None and row.state == store.INTENDED and row.attempt < now - MAKE_GRACE:
                done.append(_attempt(failures, _recover, broker, svc, row.grant_id))
    return [item for item in done if item is not None]


def _attempt(
    failures: list[BrokerError], step: Callable[..., Reconciled | None], *args: object
) -> Reconciled | None:
    """``step(*args)``, its failure kept for the end of the pass (the others still run)."""
    try:
        return step(*args)
    except BrokerError as exc:
        failures.append(exc)
        return None


def _end_found(
    broker: Broker, target: Provisioner, svc: ServiceConfig, identity: OurIdentity, why: str
) -> Reconciled | None:
    """End an identity of ours whose grant ended or is unknown; audited if this closed its row."""
    grant_id = identity.grant_id
    assert grant_id is not None
    with broker.transaction() as conn:
        store.ending(conn, grant_id, identity.name)  # its password forgotten first, if it had a row
    target.end(identity.name)
    with broker.transaction() as conn:
        now = broker.clock.now()
        # No row at all (the store lost it): ``lost`` records one, so a second replica's pass
        # does not audit it again. A row already closed: the other path audited this end.
        closed = store.dropped(conn, grant_id, now) or store.lost(
            conn, grant_id, svc.name, identity.name, now
        )
        if not closed:
            return None
        audit(conn, broker, Action.IDENTITY_RECONCILE, svc.name, grant_id, identity=identity.name, why=why)
    return Reconciled(svc.name, grant_id, identity.name, why)


def _close(broker: Broker, svc: ServiceConfig, grant_id: str, why: str) -> Reconciled | None:
    """Close a live row whose grant ended and that has nothing on the target."""
    with broker.transaction() as conn:
        if not store.dropped(conn, grant_id, broker.clock.now()):
            return None
        audit(conn, broker, Action.IDENTITY_RECONCILE, svc.name, grant_id, identity=None, why=why)
    return Reconciled(svc.name, grant_id, None, why)


def _recover(broker: Broker, svc: ServiceConfig, grant_id: str) -> Reconciled | None:
    """Take over an ``intended`` row of an active grant whose attempt is stale, and make it."""
    now = broker.clock.now()
    with broker.transaction() as conn:
        record = grant_store.get(conn, grant_id)
        if record is None or not store.take_over(conn, grant_id, now, now - MAKE_GRACE):
            return None  # another replica took it over first
    try:
        name = make(broker, record, now, why=RECOVERED)
    except Conflict:
        return None  # the grant ended meanwhile (what was made is ended), or another took over
    return Reconciled(svc.name, grant_id, name, RECOVERED)


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
