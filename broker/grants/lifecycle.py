"""A grant's states and the transitions between them, in one table, and the one way to apply one.

::

    (new) --issue--> active --revoke--> revoked   (owner, audit reader, lock-out, policy reload)
      |    ^            '----expire--> expired   (the expiry loop, at expires_at)
      |    '---approve---.
      |                  |
      +---park--> pending --reject--> denied     (a reviewer says no)
      |              |  '---expire--> expired    (unreviewed: its review deadline passed)
      |              '-----revoke---> revoked    (the requester cancels; a reload ends it)
      '---deny---> denied

    from      event    to        audit entry     ends the grant   notice (webhooks)
    (new)     issue    active    grant.issue     no               grant.issued
    (new)     park     pending   grant.pending   no               grant.requested
    (new)     deny     denied    grant.deny      no               grant.denied
    pending   approve  active    grant.issue     no               grant.issued
    pending   reject   denied    grant.reject    no               grant.denied
    pending   expire   expired   grant.expired   no               grant.expired
    pending   revoke   revoked   grant.revoke    no               grant.revoked
    active    revoke   revoked   grant.revoke    yes              grant.revoked
    active    expire   expired   grant.expired   yes              grant.expired

A pending grant was never usable, so its ends end nothing (no ``grant.ended`` outbox row: it
has no identity and no tunnel). ``approve`` is the vote that completes the tally
(``grants.approvals``; each vote has its own ``grant.approve`` entry and ``grant.approved``
notice there): the grant's clock starts then, ``expires_at = now + ttl_seconds``. Revoked,
denied and expired are final. ``TRANSITIONS`` is the table; ``next_state`` is its pure lookup,
tested as a table.

``apply`` makes a transition happen, and is the only code that changes a grant's state:

1. in the store, in the caller's transaction, conditional on the from-state (a new grant is
   an insert; an approval or an end is an update ``WHERE state = <from>``, so of two replicas,
   or a replica and an admin command, exactly one moves the grant and the other gets False);
2. its audit entry (the action of the table) in the SAME transaction: a change whose entry
   cannot be written does not happen; and its notice (the table's ``notice``) for the webhooks
   subscribed to it, as outbox rows in the same transaction (``notifications.emit``);
3. for a transition that ends the grant, an outbox row ``grant.ended`` in the same transaction
   (``events.outbox``: the cross-process signal, and the end of the grant's per-grant identity);
4. its event on ``broker.events`` only after the commit (``GrantDecided`` for an issue or a
   deny, ``GrantEnded`` for an end): ``transaction(broker)`` publishes what its transitions
   collected once it has committed, so a subscriber never hears of a change that was rolled
   back. A caller that owns the transaction itself (``end_grants_for_principal``) publishes
   after its own commit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.errors import Conflict
from access.broker.events import outbox
from access.broker.events.bus import Event, GrantDecided, GrantEnded
from access.broker.notifications.emit import notify
from access.broker.notifications.kinds import Notice
from access.broker.runtime import Broker
from access.broker.store import grants as store
from access.broker.store.grants import GrantRecord
from access.shared.models import GrantState

__all__ = [
    "TRANSITIONS",
    "GrantEvent",
    "GrantTx",
    "IllegalTransition",
    "Transition",
    "apply",
    "grant_target",
    "next_state",
    "transaction",
]


class GrantEvent(StrEnum):
    ISSUE = "issue"
    PARK = "park"
    DENY = "deny"
    APPROVE = "approve"
    REJECT = "reject"
    REVOKE = "revoke"
    EXPIRE = "expire"


@dataclass(frozen=True)
class Transition:
    to_state: GrantState
    action: Action
    ends: bool  # the grant stops being usable: an outbox row, and GrantEnded after the commit
    notice: Notice  # what webhooks subscribed to it are told (notifications.emit)


# (from-state, event) -> transition. ``None`` is a grant not stored yet.
TRANSITIONS: Mapping[tuple[GrantState | None, GrantEvent], Transition] = {
    (None, GrantEvent.ISSUE): Transition(
        GrantState.ACTIVE, Action.GRANT_ISSUE, ends=False, notice=Notice.GRANT_ISSUED
    ),
    (None, GrantEvent.PARK): Transition(
        GrantState.PENDING, Action.GRANT_PENDING, ends=False, notice=Notice.GRANT_REQUESTED
    ),
    (None, GrantEvent.DENY): Transition(
        GrantState.DENIED, Action.GRANT_DENY, ends=False, notice=Notice.GRANT_DENIED
    ),
    (GrantState.PENDING, GrantEvent.APPROVE): Transition(
        GrantState.ACTIVE, Action.GRANT_ISSUE, ends=False, notice=Notice.GRANT_ISSUED
    ),
    (GrantState.PENDING, GrantEvent.REJECT): Transition(
        GrantState.DENIED, Action.GRANT_REJECT, ends=False, notice=Notice.GRANT_DENIED
    ),
    (GrantState.PENDING, GrantEvent.EXPIRE): Transition(
        GrantState.EXPIRED, Action.GRANT_EXPIRED, ends=False, notice=Notice.GRANT_EXPIRED
    ),
    (GrantState.PENDING, GrantEvent.REVOKE): Transition(
        GrantState.REVOKED, Action.GRANT_REVOKE, ends=False, notice=Notice.GRANT_REVOKED
    ),
    (GrantState.ACTIVE, GrantEvent.REVOKE): Transition(
        GrantState.REVOKED, Action.GRANT_REVOKE, ends=True, notice=Notice.GRANT_REVOKED
    ),
    (GrantState.ACTIVE, GrantEvent.EXPIRE): Transition(
        GrantState.EXPIRED, Action.GRANT_EXPIRED, ends=True, notice=Notice.GRANT_EXPIRED
    ),
}

_CREATING = frozenset(event for (state, event) in TRANSITIONS if state is None)


class IllegalTransition(Conflict):
    """The table has no such transition (a grant revoked twice, say): a 409, nothing changed."""


def next_state(state: GrantState | None, event: GrantEvent) -> Transition:
    """The transition ``event`` makes from ``state`` (None: a new grant). Pure.

    Raises:
        IllegalTransition: no such transition.
    """
    transition = TRANSITIONS.get((state, event))
    if transition is None:
        raise IllegalTransition(f"a grant that is {state or 'new'} cannot {event}")
    return transition


def grant_target(service: str, grant_id: str) -> str:
    """The ledger ``target`` of entries about a grant (``service:svc-payments/g-…``).

    ``GET /v1/audit?service=`` matches on it, so the tunnel's connection entries use it too.
    """
    return f"service:{service}/{grant_id}"


@dataclass
class GrantTx:
    """One transaction of grant changes: its connection, and the events to publish once it commits."""

    conn: sa.Connection
    broker: Broker
    after_commit: list[Event] = field(default_factory=list)


@contextmanager
def transaction(broker: Broker) -> Iterator[GrantTx]:
    """A database transaction whose transitions' events are published after it commits.

    Raises:
        Unavailable: the database could not be reached; nothing changed, nothing is published.
    """
    with broker.transaction() as conn:
        tx = GrantTx(conn, broker)
        yield tx
    for event in tx.after_commit:
        broker.events.publish(event)


def apply(
    tx: GrantTx,
    grant: GrantRecord,
    event: GrantEvent,
    *,
    actor: str,
    now: datetime,
    reason: str | None = None,
    details: Mapping[str, Any] | None = None,
    notice: Mapping[str, Any] | None = None,
) -> GrantRecord | None:
    """Make ``event`` happen to ``grant`` in ``tx``: store, audit, outbox; publish after commit.

    For a new grant (issue, park, deny) ``grant`` is the row to insert (its state is set here).
    For an approval (the vote that completes a pending grant's tally) ``grant`` is the row as
    read: it becomes active from ``now`` for its ``ttl_seconds``. For an end, ``grant`` is the row
    as read, and ``reason`` says why (``revoked``, ``locked``, ``expired``, ``unreviewed``).
    ``details`` are the audit entry's (ends default to id, reason, subject, scope); ``notice``
    what the webhook notice says beyond the grant (default: why it ended or was refused).
    Returns the grant as it is now, or None when it was no longer in the state read: someone
    else moved it first, and nothing was written.

    Raises:
        IllegalTransition: the table has no such transition from the grant's state.
        sqlalchemy.exc.SQLAlchemyError: the database failed; the transaction must fail.
    """
    from_state = None if event in _CREATING else GrantState(grant.state)
    transition = next_state(from_state, event)
    why = reason or str(transition.to_state)
    to_state = transition.to_state
    if from_state is None:
        after = replace(grant, state=to_state)
        store.insert(tx.conn, after)
    elif to_state == GrantState.ACTIVE:
        assert grant.ttl_seconds is not None  # every pending grant stores the TTL asked for
        expires_at = now + timedelta(seconds=grant.ttl_seconds)
        if not store.activate(tx.conn, grant.id, approved_at=now, expires_at=expires_at):
            return None
        after = replace(grant, state=to_state, approved_at=now, expires_at=expires_at)
        details = {**(details or {}), "expires_at": ledger.format_time(expires_at)}
    else:
        if not store.end(
            tx.conn, grant.id, from_state=from_state, to_state=to_state, now=now, reason=why, actor=actor
        ):
            return None
        after = replace(grant, state=to_state, ended_at=now, ended_reason=why, ended_by=actor)
        if details is None:
            details = {"grant_id": grant.id, "reason": why, "subject": grant.subject, "scope": grant.scope}
    ledger.append(
        tx.conn,
        tx.broker.clock,
        actor=actor,
        action=transition.action,
        target=grant_target(grant.service, grant.id),
        details=dict(details or {"grant_id": grant.id}),
    )
    told = dict(notice) if notice is not None else _notice_details(transition, from_state, why, details)
    notify(tx.conn, tx.broker, transition.notice, actor=actor, grant=after, details=told)
    if transition.ends:
        outbox.enqueue(tx.conn, tx.broker.clock, outbox.GRANT_ENDED, {"grant_id": grant.id, "reason": why})
        tx.after_commit.append(GrantEnded(grant.id, why))
    else:
        tx.after_commit.append(GrantDecided(grant.id, str(transition.to_state)))
    return after


def _notice_details(
    transition: Transition, from_state: GrantState | None, why: str, details: Mapping[str, Any] | None
) -> dict[str, Any]:
    """What a notice says beyond the grant: why it ended, or why the policy refused it."""
    if transition.ends or (from_state == GrantState.PENDING and transition.to_state != GrantState.ACTIVE):
        return {"why": why}
    if transition.to_state == GrantState.DENIED and details and details.get("why"):
        return {"why": details["why"]}
    return {}
