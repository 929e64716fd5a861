"""Delivering notices: the outbox handler that POSTs one row to its endpoint, and its loop.

One try: render the body in the endpoint's form, sign it (``signing``) with the secret read
now, POST it with httpx within ``ACCESS_BROKER_WEBHOOK_TIMEOUT`` seconds in all (connecting,
sending and the answer's head; the answer's body is never read), and count any 2xx as
delivered. Anything else (a refusal, a timeout, a 3xx: redirects are not followed, a 4xx or
5xx) raises, and the outbox tries again after its backoff. After
``ACCESS_BROKER_WEBHOOK_MAX_ATTEMPTS`` tries the row is closed and ``notification.failed`` is
audited in the same transaction: a notice is delivered or recorded as lost, never dropped.

Deliveries run in ``WebhookLoop``, not in the outbox loop that ends grants: a slow receiver
holds up other notices, never a grant's end. Error texts never carry the endpoint's URL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx
import sqlalchemy as sa

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.events import outbox
from access.broker.events.bus import Event, GrantDecided, GrantEnded, GrantExtended, PrincipalLocked
from access.broker.notifications import forms, signing
from access.broker.notifications.emit import WEBHOOK
from access.broker.notifications.endpoints import WebhookEndpoint

if TYPE_CHECKING:
    from access.broker.runtime import Broker

__all__ = ["WEBHOOK", "DeliveryFailed", "WebhookLoop", "deliver"]

log = logging.getLogger(__name__)

# Rows one claim takes: each may take the whole timeout (at most 20 s), and all must finish
# well within the outbox's lease (5 minutes).
_BATCH = 10


class DeliveryFailed(Exception):
    """The endpoint did not take the notice (this time): the outbox retries it."""


def deliver(broker: Broker, payload: Mapping[str, Any]) -> None:
    """POST one outbox row's notice to its endpoint, signed.

    Raises:
        DeliveryFailed: the endpoint is not configured here, refused, failed or did not answer
            in time.
        SecretUnavailable: the endpoint's secret cannot be read now.
    """
    endpoint = _endpoint(broker, str(payload["endpoint"]))
    notice: Mapping[str, Any] = payload["notice"]
    body = forms.render(endpoint.format, notice, broker.base_url)
    timestamp = int(broker.clock.now().timestamp())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "access-broker",
        signing.TIMESTAMP_HEADER: str(timestamp),
        signing.SIGNATURE_HEADER: signing.sign(endpoint.secret(), timestamp, body),
        signing.DELIVERY_HEADER: str(payload["delivery"]),
        signing.EVENT_HEADER: str(notice["event"]),
    }
    timeout = broker.settings.webhook_timeout
    try:
        status = asyncio.run(_post(endpoint.url, body, headers, timeout))
    except (TimeoutError, httpx.TimeoutException):  # ours for the whole exchange, or httpx's per step
        raise DeliveryFailed(f"webhook {endpoint.name!r}: no answer within {timeout:g} s") from None
    except httpx.HTTPError as exc:
        # httpx may name the request's URL in its message: the URL can be the secret (Slack).
        text = str(exc).replace(endpoint.url, "<url>")
        raise DeliveryFailed(f"webhook {endpoint.name!r}: {type(exc).__name__}: {text}") from None
    if not 200 <= status < 300:
        raise DeliveryFailed(f"webhook {endpoint.name!r} answered {status}")


async def _post(url: str, body: bytes, headers: Mapping[str, str], deadline: float) -> int:
    # asyncio.timeout bounds the whole exchange: httpx's own timeouts are per operation, so a
    # receiver trickling its answer's head a byte at a time would otherwise hold us for long.
    async with (
        asyncio.timeout(deadline),
        httpx.AsyncClient(timeout=deadline, follow_redirects=False) as client,
        client.stream("POST", url, content=body, headers=dict(headers)) as response,
    ):
        return response.status_code


def _endpoint(broker: Broker, name: str) -> WebhookEndpoint:
    for endpoint in broker.settings.webhooks:
        if endpoint.name == name:
            return endpoint
    raise DeliveryFailed(f"webhook {name!r} is not configured on this broker (ACCESS_BROKER_WEBHOOKS)")


def _record_failure(
    conn: sa.Connection, broker: Broker, payload: Mapping[str, Any], error: str, attempts: int
) -> None:
    notice: Mapping[str, Any] = payload.get("notice") or {}
    grant: Mapping[str, Any] = notice.get("grant") or {}
    ledger.append(
        conn,
        broker.clock,
        actor="broker",
        action=Action.NOTIFICATION_FAILED,
        target=f"webhook:{payload.get('endpoint')}",
        details={
            "delivery": payload.get("delivery"),
            "event": notice.get("event"),
            "event_id": notice.get("id"),
            "grant_id": grant.get("id"),
            "attempts": attempts,
            "error": error,
        },
    )


outbox.register(
    WEBHOOK,
    deliver,
    outbox.GiveUp(after=lambda broker: broker.settings.webhook_max_attempts, record=_record_failure),
)


class WebhookLoop(outbox.OutboxLoop):
    """The outbox loop that runs only webhook deliveries (the other one skips them)."""

    name = "webhooks"

    def __init__(self, broker: Broker, interval: float = outbox.OUTBOX_INTERVAL) -> None:
        super().__init__(broker, interval=interval, only=(WEBHOOK,), batch=_BATCH)

    def wakes_on(self, event: Event) -> bool:
        # With no endpoint configured, no event of this process wrote a delivery (``notify``
        # writes one per subscribed endpoint): waking would only spend a transaction per grant
        # looking for none. Rows left from an earlier configuration are still run every interval.
        if not self.broker.settings.webhooks:
            return False
        return isinstance(event, GrantDecided | GrantEnded | GrantExtended | PrincipalLocked)
