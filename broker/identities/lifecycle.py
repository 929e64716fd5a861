"""A grant's identity from issue to drop.

make (``intend`` + ``make``)
    ``grants.requests`` writes the ``intended`` row in the transaction that issues the grant,
    then, after that commit and before the grant is returned, calls ``make``: the target creates
    the identity (PostgreSQL: ``VALID UNTIL`` the grant's expiry), and the name and the sealed
    password are recorded (``identity.create``). Synchronously, on purpose: fail closed and
    simple (a grant is never handed out without its identity; a target that refuses or does not
    answer fails the request with 503 and the grant is ended at once), and after the commit, on
    purpose: the row is durable before the target sees anything (a crash between leaves a trace),
    and the grant is already known, so a concurrent reconcile sees an active grant, not an
    unknown one whose identity it would end. A broker that dies between the two leaves an active
    grant with an ``intended`` row: ``reconcile`` takes the row over once the issuing attempt is
    past ``MAKE_GRACE`` and makes it then (``identity.create`` with ``why: recovered``). Only
    the attempt that holds the row (``attempt_at``) records what it made; one that finds its row
    taken over leaves the identity to the new attempt, and one that finds its grant ended ends
    what it made.

end (``end_for_grant``)
    The ``grant.ended`` outbox row's handler (``events.outbox``): on the replica that runs the
    outbox, the password is forgotten (state ``ending``), the target ends the identity (lock the
    login, end its sessions, hand its objects to the policy's ``owner``, drop) and the row becomes
    ``dropped`` (``identity.drop``). A target that is down raises, and the outbox retries with its
    backoff. Idempotent: an absent identity is done. Reconcile may end the same identity at the
    same time: whichever moves the row to ``dropped`` first writes the one audit entry.

extend (``follow_expiry``)
    The ``grant.extended`` outbox row's handler: an extended grant's identity gets the grant's
    current expiry on its target (PostgreSQL ``VALID UNTIL``, MySQL's password lifetime; Redis
    users have none), so a login after the old expiry still works. Idempotent and never earlier
    (the provisioner's ``extend``), so rows of two extensions may run in any order, on any replica.

reconcile: ``identities.reconcile``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.errors import BrokerError, Conflict
from access.broker.identities.sealing import Sealer
from access.broker.identities.targets import broker_id, provisioner
from access.broker.policy.model import ServiceConfig
from access.broker.provision.base import IdentitySpec, Provisioner
from access.broker.provision.common import ProvisionFailed
from access.broker.store import grants as grant_store
from access.broker.store import identities as store

if TYPE_CHECKING:
    from access.broker.runtime import Broker
    from access.broker.store.grants import GrantRecord

__all__ = ["MAKE_GRACE", "audit", "end_for_grant", "follow_expiry", "intend", "make", "spec_for"]

log = logging.getLogger(__name__)

# How long an attempt to make an identity may run before reconcile may take its row over: well
# past what one takes unless its target is failing (every admin wait is bounded: connect 3-5 s,
# PostgreSQL's watchdog cuts its connection at 30 s, Redis answers each command within 5 s, MySQL
# each statement within 11 s). Safe even when an attempt outlives it: only the attempt holding
# the row records, and one taken over ends nothing. What is left: such a late attempt can reset
# the password after the new one made it, and the grant's connects then fail (closed).
MAKE_GRACE = timedelta(minutes=2)


def _target(service: str, grant_id: str) -> str:
    """``grants.lifecycle.grant_target``'s form (a test keeps them equal): importing it would close
    a cycle, grants -> events.outbox -> identities (the ``grant.ended`` handler) -> grants."""
    return f"service:{service}/{grant_id}"


def audit(
    conn: sa.Connection, broker: Broker, action: Action, service: str, grant_id: str, **details: Any
) -> None:
    """An ``identity.*`` entry about ``grant_id``'s identity, on the grant's audit target."""
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


def make(broker: Broker, record: GrantRecord, attempt: datetime, **details: Any) -> str:
    """Make the grant's identity on the target and record it; return its name. ``attempt`` is when
    this attempt began (the row's ``attempt_at``); ``details`` go in ``identity.create``.

    Raises:
        BrokerError: the target refused or did not answer (the row keeps the error; the caller
            ends the grant, and the end cleans up whatever the target made).
        Conflict: the grant ended meanwhile (what was made is ended), or another attempt took the
            row over (what was made is left to it).
    """
    svc = broker.policy.services[record.service]
    try:
        with provisioner(broker, svc) as target:
            identity = target.create(spec_for(svc, record))
            sealed = Sealer(broker.token_ring).seal(record.id, identity.password)
            with broker.transaction() as conn:
                if store.created(conn, record.id, identity.name, sealed, attempt):
                    audit(
                        conn,
                        broker,
                        Action.IDENTITY_CREATE,
                        svc.name,
                        record.id,
                        identity=identity.name,
                        **details,
                    )
                    return identity.name
                row = store.get(conn, record.id)
            taken_over = row is not None and row.state in (store.INTENDED, store.CREATED)
            if not taken_over:
                target.end(identity.name)  # the grant ended while it was being made
    except (BrokerError, ValueError) as exc:
        with broker.transaction() as conn:
            store.note_error(conn, record.id, _reason(exc))
        if isinstance(exc, BrokerError):
            raise
        # The provisioner refused the spec itself (a role that reaches superuser, say).
        raise ProvisionFailed(str(exc), hint="correct the service's privileges in the policy") from exc
    if taken_over:
        # A reconcile took the row over (this attempt outlived MAKE_GRACE): the identity is the
        # same one (found by its tag), and the new attempt's password is the one to keep.
        raise Conflict(
            f"grant {record.id}'s identity was taken over by another attempt to make it",
            hint="connect again in a moment, or request a new grant",
        )
    raise Conflict(f"grant {record.id} ended while its identity was being made", hint="request a new grant")


def _reason(exc: Exception) -> str:
    return exc.message if isinstance(exc, BrokerError) else f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------- extend


def follow_expiry(broker: Broker, grant_id: str) -> bool:
    """Give the grant's identity the grant's current expiry on its target (never an earlier one).
    True if it had an identity to move; False for an ended grant or one without a made identity.

    Raises:
        BrokerError: the target is down or refused (the outbox tries again later).
    """
    with broker.transaction() as conn:
        row = store.get(conn, grant_id)
        grant = grant_store.get(conn, grant_id)
    if row is None or row.state != store.CREATED or row.target_name is None:
        return False
    if grant is None or grant.state != "active":
        return False  # ended meanwhile: its end drops the identity
    svc = broker.policy.service(row.service)
    if svc is None or not svc.dynamic:
        return False
    with provisioner(broker, svc) as target:
        target.extend(row.target_name, grant.expires_at)
    return True


# ---------------------------------------------------------------- end


def end_for_grant(broker: Broker, grant_id: str, reason: str = "ended") -> bool:
    """End the grant's identity, if it has one (the ``grant.ended`` handler). True if it had one.

    ``identity.drop`` is written only if this call closes the row: a reconcile that closed it
    first has written its own ``identity.reconcile``, and an end is audited once.

    Raises:
        BrokerError: the target is down or refused (the outbox tries again later).
    """
    with broker.transaction() as conn:
        row = store.get(conn, grant_id)
        # The password is forgotten before anything else. False: closed meanwhile, by a reconcile.
        if row is None or row.state not in store.LIVE or not store.ending(conn, grant_id):
            return False
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
        now = broker.clock.now()
        if row.error is not None and row.target_name is None:
            closed = store.failed(conn, grant_id, row.error, now)
        else:
            closed = store.dropped(conn, grant_id, now)
        if closed:
            audit(conn, broker, Action.IDENTITY_DROP, row.service, grant_id, identity=name, reason=reason)
    return True


def _find(target: Provisioner, ours: str, grant_id: str) -> str | None:
    """The name of the grant's identity on the target (made, but not recorded: a crash between)."""
    return next((o.name for o in target.ours() if o.grant_id == grant_id and o.broker_id == ours), None)
