"""Reading the audit ledger over the API (``GET /v1/audit``): newest first, for audit readers only."""

from __future__ import annotations

import json
import re
from datetime import datetime

from access.broker.audit.actions import Action
from access.broker.auth.principal import AuthContext
from access.broker.errors import Forbidden, InvalidRequest
from access.broker.runtime import Broker
from access.broker.store import audit as store
from access.shared import durations
from access.shared.durations import SinceError
from access.shared.models import AuditEntry, AuditPage
from access.shared.names import is_dns_label, is_principal_name

__all__ = ["MAX_LIMIT", "parse_since", "search_audit"]

MAX_LIMIT = 1000
_GRANT_ID = re.compile(r"g-[0-9a-f]{1,38}")
_ACTIONS = frozenset(action.value for action in Action)


def parse_since(text: str | None, now: datetime) -> datetime | None:
    """``1h`` (that long ago) or an ISO-8601 time; None for no bound (``shared.durations.parse_since``).

    Raises:
        InvalidRequest: neither a duration nor an ISO-8601 time.
    """
    try:
        return durations.parse_since(text, now)
    except SinceError:
        raise InvalidRequest(
            f"bad since {(text or '')[:40]!r}: give a duration such as 1h or 7d, "
            "or a time such as 2030-01-01T00:00:00Z"
        ) from None


def search_audit(
    broker: Broker,
    ctx: AuthContext,
    *,
    service: str | None = None,
    actor: str | None = None,
    since: str | None = None,
    limit: int = 100,
    grant: str | None = None,
    action: str | None = None,
) -> AuditPage:
    """Ledger entries matching the filters, newest first. Only for the policy's audit readers.

    ``grant``: entries about that grant (its request, decision, end, connections and their
    statements); ``action``: only that action (``connection.statements`` for the statement log).

    Raises:
        Forbidden: the policy's ``audit.readers`` do not include the caller.
        InvalidRequest: a bad filter (service or actor name, since, limit).
        Unavailable: the database could not be reached.
    """
    if not broker.policy.can_read_audit(ctx):
        raise Forbidden(
            "your policy does not let you read the audit log",
            hint="ask an operator to add you (or a group of yours) to audit.readers in the broker's policy",
        )
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}")
    if service and not is_dns_label(service):
        raise InvalidRequest(f"bad service name {service[:63]!r}", hint="see `access services`")
    if actor and not is_principal_name(actor) and actor != "broker":
        raise InvalidRequest(f"bad actor name {actor[:64]!r}")
    if grant and not _GRANT_ID.fullmatch(grant):
        raise InvalidRequest(f"bad grant id {grant[:40]!r}", hint="see `access grants`")
    if action and action not in _ACTIONS:
        raise InvalidRequest(f"bad action {action[:40]!r}", hint="docs/audit.md lists the actions")
    start = parse_since(since, broker.clock.now())
    with broker.transaction() as conn:
        rows = store.search(
            conn, service=service, actor=actor, start=start, limit=limit, grant=grant, action=action
        )
    return AuditPage(
        entries=[
            AuditEntry(
                seq=row.seq,
                at=row.at,
                actor=row.actor,
                action=row.action,
                target=row.target,
                details=_details(row.details),
                hash=row.hash,
            )
            for row in rows
        ]
    )


def _details(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except ValueError:
        return {"unparseable": text[:200]}
    return value if isinstance(value, dict) else {"value": value}
