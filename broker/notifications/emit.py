"""Emitting a notice: one outbox row per subscribed endpoint, in the transaction of the change.

So a notice exists exactly when its change does (a rolled-back change sends nothing, a
committed one cannot lose it), and writing it costs the request one insert per endpoint and no
network: ``delivery`` POSTs it later, from the outbox, with retries. With no endpoint
subscribed to an event nothing is written.

Each row carries the endpoint's name, its delivery id (``X-Access-Delivery``, the same on every
retry, for receivers to drop duplicates) and the notice: what happened, to which grant, by
whom. The process that makes the change must know the endpoints: every replica, and admin
commands such as ``access-broker users disable``, need the same ``ACCESS_BROKER_WEBHOOKS``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from access.broker.audit.ledger import format_time
from access.broker.events import outbox
from access.broker.notifications.kinds import Notice
from access.broker.store.grants import GrantRecord
from access.shared.durations import format_duration

if TYPE_CHECKING:
    from access.broker.runtime import Broker

__all__ = ["WEBHOOK", "grant_facts", "notify"]

# The outbox kind of one delivery to one endpoint (``delivery`` registers its handler).
WEBHOOK = "webhook.deliver"


def grant_facts(grant: GrantRecord) -> dict[str, Any]:
    """What a notice says about a grant (JSON): never a credential, only what the ledger holds too."""
    return {
        "id": grant.id,
        "subject": grant.subject,
        "service": grant.service,
        "kind": grant.kind,
        "scope": grant.scope,
        "state": grant.state,
        "reason": grant.reason,
        "ttl": _ttl(grant),
        "requested_at": format_time(grant.created_at),
        "expires_at": format_time(grant.expires_at),
        "rule": grant.rule,
        "requirement": grant.requirement,
        "ended_reason": grant.ended_reason,
        "ended_by": grant.ended_by,
        "approved_at": format_time(grant.approved_at) if grant.approved_at else None,
        "break_glass": grant.break_glass,
    }


def _ttl(grant: GrantRecord) -> str | None:
    """The TTL asked for (a pending grant's ``expires_at`` is its review deadline, not its end)."""
    if grant.ttl_seconds:
        return format_duration(grant.ttl_seconds)
    if grant.expires_at > grant.created_at:
        return format_duration(grant.expires_at - grant.created_at)
    return None


def notify(
    conn: sa.Connection,
    broker: Broker,
    event: Notice,
    *,
    actor: str,
    grant: GrantRecord | None = None,
    details: Mapping[str, Any] | None = None,
) -> list[str]:
    """Tell every endpoint subscribed to ``event``, in the caller's transaction; return the delivery ids.

    ``grant`` is the grant as it is after the change; ``details`` what else the event says
    (``why``, ``reviewer``, ``comment``, a lock's ``target``): JSON, no secrets. Approvals call
    this for ``grant.requested`` and ``grant.approved``; the grant lifecycle for its transitions.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database failed; the caller's transaction must fail.
    """
    endpoints = [endpoint for endpoint in broker.settings.webhooks if event in endpoint.events]
    if not endpoints:
        return []
    notice = {
        "event": str(event),
        "id": "ev-" + secrets.token_hex(8),
        "at": format_time(broker.clock.now()),
        "actor": actor,
        "grant": grant_facts(grant) if grant is not None else None,
        "details": dict(details or {}),
    }
    deliveries = []
    for endpoint in endpoints:
        delivery = "d-" + secrets.token_hex(12)
        outbox.enqueue(
            conn, broker.clock, WEBHOOK, {"endpoint": endpoint.name, "delivery": delivery, "notice": notice}
        )
        deliveries.append(delivery)
    return deliveries
