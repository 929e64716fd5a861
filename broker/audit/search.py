"""Reading the audit ledger over the API (``GET /v1/audit``), for audit readers only: the newest
entries first, or (``follow_audit``) the entries after a seq, oldest first, waiting a bounded
time for new ones (``access audit --follow``)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from access.broker.audit.actions import Action
from access.broker.auth.principal import AuthContext
from access.broker.errors import Forbidden, InvalidRequest
from access.broker.runtime import Broker
from access.broker.store import audit as store
from access.shared import durations
from access.shared.durations import SinceError
from access.shared.models import AuditEntry, AuditPage
from access.shared.names import is_dns_label, is_principal_name

__all__ = ["MAX_LIMIT", "MAX_WAIT", "follow_audit", "parse_since", "search_audit"]

MAX_LIMIT = 1000
MAX_WAIT = 25  # seconds a follow request may wait for new entries (below proxies' idle timeouts)
MAX_WAITING = 64  # follow requests waiting at once in this process; more are answered at once
POLL_INTERVAL = 0.5  # seconds between looks at the ledger while a follow request waits
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
    start = _checked(broker, ctx, service, actor, since, limit, grant, action)
    with broker.transaction() as conn:
        # The head before the search: a follower starting there may see an entry again (the
        # search found it too), never miss one.
        head = store.chain_head(conn)
        rows = store.search(
            conn, service=service, actor=actor, start=start, limit=limit, grant=grant, action=action
        )
    return _page(rows, 0 if head is None else head[0])


_waiting = 0


async def follow_audit(
    broker: Broker,
    ctx: AuthContext,
    *,
    after_seq: int,
    wait: float = 0,
    service: str | None = None,
    actor: str | None = None,
    since: str | None = None,
    limit: int = 100,
    grant: str | None = None,
    action: str | None = None,
) -> AuditPage:
    """Entries with seq > ``after_seq`` matching the filters, oldest first, at most ``limit``;
    when there are none yet, waits up to ``wait`` seconds (at most ``MAX_WAIT``) for one.

    ``last_seq`` of the answer is where to ask from next: the last entry's seq, or, when the
    answer holds all there was, the ledger's head (so entries the filters skip are not read
    again). The wait is a poll every ``POLL_INTERVAL``; past ``MAX_WAITING`` waiting requests a
    request is answered at once (its client asks again).

    Raises:
        Forbidden: the policy's ``audit.readers`` do not include the caller.
        InvalidRequest: a bad filter, a negative ``after_seq`` or ``wait`` out of range.
        Unavailable: the database could not be reached.
    """
    global _waiting
    if after_seq < 0:
        raise InvalidRequest("after_seq must be 0 or more (the seq of the last entry you have)")
    if not 0 <= wait <= MAX_WAIT:
        raise InvalidRequest(f"wait must be between 0 and {MAX_WAIT} seconds")
    start = _checked(broker, ctx, service, actor, since, limit, grant, action)
    filters: dict[str, Any] = {
        "service": service,
        "actor": actor,
        "start": start,
        "grant": grant,
        "action": action,
    }
    page = await asyncio.to_thread(_after, broker, after_seq, limit, filters)
    if page.entries or wait <= 0 or _waiting >= MAX_WAITING:
        return page
    deadline = time.monotonic() + wait
    _waiting += 1
    try:
        while not page.entries and (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(POLL_INTERVAL, left))
            page = await asyncio.to_thread(_after, broker, page.last_seq or after_seq, limit, filters)
    finally:
        _waiting -= 1
    return page


def _after(broker: Broker, after_seq: int, limit: int, filters: dict[str, Any]) -> AuditPage:
    with broker.transaction() as conn:
        # The head first: appends are serialised until they commit, so every entry up to it is
        # there to be read (none below it can still appear).
        head = store.chain_head(conn)
        top = 0 if head is None else head[0]
        rows = store.search_after(conn, after=after_seq, upto=top, limit=limit, **filters)
    last = rows[-1].seq if len(rows) == limit else max(top, after_seq)
    return _page(rows, last)


def _checked(
    broker: Broker,
    ctx: AuthContext,
    service: str | None,
    actor: str | None,
    since: str | None,
    limit: int,
    grant: str | None,
    action: str | None,
) -> datetime | None:
    """The start time of ``since``, once the caller and every filter are checked."""
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
    return parse_since(since, broker.clock.now())


def _page(rows: Sequence[Any], last_seq: int) -> AuditPage:
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
        ],
        last_seq=last_seq,
    )


def _details(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except ValueError:
        return {"unparseable": text[:200]}
    return value if isinstance(value, dict) else {"value": value}
