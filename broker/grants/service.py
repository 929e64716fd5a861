"""Grants: request (decided by the policy), list, revoke, expire, and open for a tunnel.

A grant's ``state`` column says what was decided (active, revoked, denied, expired); whether it
is usable is decided by the server clock too: a grant past ``expires_at`` is never usable
whatever the column says (``effective_state``). Every change is audited in the same
transaction; ``GrantEnded`` events are published only after the commit, so a subscriber never
sees an end that was rolled back.

Who may see and revoke a grant: its owner, and the policy's audit readers (the people who can
already see every grant in the ledger). Anyone else gets ``NotFound``, so grant ids do not leak.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.auth.principal import AuthContext
from access.broker.errors import Conflict, Expired, Forbidden, GrantDenied, InvalidRequest, NotFound
from access.broker.events.bus import GrantEnded
from access.broker.loops import Loop
from access.broker.policy import Decision, UnknownScope, UnknownService, evaluate
from access.broker.runtime import Broker
from access.broker.store.tables import grants as grants_table
from access.shared.durations import DurationError, format_duration, parse_duration
from access.shared.models import MAX_REASON_LENGTH, Grant, GrantRequest, GrantState
from access.shared.names import NAME_RULE, is_dns_label, is_scope

__all__ = [
    "EXPIRY_INTERVAL",
    "ExpiryLoop",
    "TunnelGrant",
    "effective_state",
    "end_grants_for_principal",
    "expire_due",
    "get_grant",
    "grant_state",
    "grant_target",
    "list_grants",
    "open_connection",
    "open_for_tunnel",
    "request_grant",
    "revoke_grant",
]

log = logging.getLogger(__name__)

EXPIRY_INTERVAL = 0.5
_LIST_LIMIT = 500
_EXPIRE_BATCH = 500
_ID_BATCH = 500


@dataclass(frozen=True)
class TunnelGrant:
    """What the tunnel needs to connect: the target comes from the policy, never from the client."""

    grant_id: str
    principal_id: str
    subject: str
    service: str
    scope: str
    kind: str
    host: str
    port: int
    expires_at: datetime
    options: Mapping[str, Any]


def grant_target(service: str, grant_id: str) -> str:
    """The ledger ``target`` of entries about a grant (``service:svc-payments/g-…``).

    ``GET /v1/audit?service=`` matches on it, so the tunnel's connection entries use it too.
    """
    return f"service:{service}/{grant_id}"


def effective_state(state: str, expires_at: datetime, now: datetime) -> GrantState:
    """The state a grant really is in: active past its expiry is expired (at the exact instant too)."""
    if state == GrantState.ACTIVE and now >= expires_at:
        return GrantState.EXPIRED
    return GrantState(state)


def _to_model(row: Any, now: datetime) -> Grant:
    state = effective_state(row.state, row.expires_at, now)
    ended_at, ended_reason = row.ended_at, row.ended_reason
    if state == GrantState.EXPIRED and ended_at is None:
        ended_at, ended_reason = row.expires_at, "expired"
    left = int((row.expires_at - now).total_seconds()) if state == GrantState.ACTIVE else 0
    return Grant(
        id=row.id,
        subject=row.subject,
        service=row.service,
        kind=row.kind,
        scope=row.scope,
        reason=row.reason,
        state=state,
        created_at=row.created_at,
        expires_at=row.expires_at,
        ended_at=ended_at,
        ended_reason=ended_reason,
        seconds_left=max(0, left),
        rule=row.rule,
    )


def _check_reason(reason: str) -> str:
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidRequest(f"reason is over {MAX_REASON_LENGTH} characters")
    if any(not ch.isprintable() for ch in reason):
        raise InvalidRequest("reason must be one line of printable text")
    return reason.strip()


def _parse_ttl(text: str, broker: Broker, ctx: AuthContext, service: str, scope: str) -> timedelta:
    try:
        ttl: timedelta = parse_duration(text)
    except DurationError as exc:
        probe = evaluate(broker.policy, ctx, service, scope, timedelta(seconds=1))
        limit = ""
        if probe.allowed and probe.max_ttl is not None:
            limit = f"; the maximum for {scope} on {service} is {format_duration(probe.max_ttl)}"
        raise InvalidRequest(f"{exc}{limit}", hint="write the ttl like 45s, 30m or 1h30m") from exc
    return ttl


def _decide(broker: Broker, ctx: AuthContext, request: GrantRequest) -> tuple[Decision, timedelta, str]:
    service, scope = request.service, request.scope
    if not is_dns_label(service):
        raise InvalidRequest(f"bad service name {service[:63]!r}: {NAME_RULE}", hint="see `access services`")
    if not is_scope(scope):
        raise InvalidRequest(f"bad scope {scope[:32]!r}", hint="see `access services` for the scopes")
    reason = _check_reason(request.reason)
    try:
        broker.policy.lookup(service, scope)
    except UnknownService as exc:
        raise NotFound(str(exc), hint="see `access services` for what you may request") from exc
    except UnknownScope as exc:
        raise InvalidRequest(str(exc), hint="see `access services`") from exc
    ttl = _parse_ttl(request.ttl, broker, ctx, service, scope)
    return evaluate(broker.policy, ctx, service, scope, ttl), ttl, reason


def request_grant(broker: Broker, ctx: AuthContext, request: GrantRequest) -> Grant:
    """Decide ``request`` by the policy and record it; return the active grant.

    The request and the decision are audited (``grant.request`` then ``grant.issue`` or
    ``grant.deny``); a denied request is stored as a grant in state ``denied``.

    Raises:
        InvalidRequest: bad service name, scope, TTL or reason (nothing is recorded).
        NotFound: the policy has no such service (nothing is recorded).
        GrantDenied: the policy said no, or the rule needs approval (recorded as denied).
        Unavailable: the database or the ledger could not be written; nothing changed.
    """
    decision, ttl, reason = _decide(broker, ctx, request)
    svc = broker.policy.services[decision.service]
    grant_id = "g-" + secrets.token_hex(8)
    now = broker.clock.now()
    denial: str | None = None
    if not decision.allowed:
        denial = decision.reason
    elif not decision.issuable:
        # Approvals (ROADMAP 1) will park such requests as "pending"; until reviewers exist,
        # a grant that needs approval cannot be issued.
        denial = f"{decision.reason}, and approvals are not enabled on this broker yet"
    expires_at = now + ttl if denial is None else now
    row: dict[str, Any] = {
        "id": grant_id,
        "principal_id": ctx.principal_id,
        "subject": ctx.name,
        "service": svc.name,
        "kind": svc.kind,
        "scope": decision.scope,
        "reason": reason,
        "state": GrantState.ACTIVE if denial is None else GrantState.DENIED,
        "rule": decision.rule,
        "requirement": decision.requirement,
        "created_at": now,
        "expires_at": expires_at,
        "ended_at": None if denial is None else now,
        "ended_reason": None if denial is None else "denied",
        "ended_by": None if denial is None else "policy",
    }
    target = grant_target(svc.name, grant_id)
    with broker.transaction() as conn:
        ledger.append(
            conn,
            broker.clock,
            actor=ctx.name,
            action=Action.GRANT_REQUEST,
            target=target,
            details={
                "grant_id": grant_id,
                "scope": decision.scope,
                "ttl": format_duration(ttl),
                "reason": reason,
            },
        )
        conn.execute(grants_table.insert().values(**row))
        details: dict[str, Any] = {
            "grant_id": grant_id,
            "rule": decision.rule,
            "requirement": decision.requirement,
        }
        if denial is None:
            details["expires_at"] = ledger.format_time(expires_at)
            ledger.append(
                conn, broker.clock, actor=ctx.name, action=Action.GRANT_ISSUE, target=target, details=details
            )
        else:
            details["why"] = denial
            ledger.append(
                conn, broker.clock, actor=ctx.name, action=Action.GRANT_DENY, target=target, details=details
            )
    if denial is not None:
        hint = "see `access services` for what you may request"
        if decision.max_ttl is not None and ttl > decision.max_ttl:
            hint = f"ask for --ttl {format_duration(decision.max_ttl)} or less"
        raise GrantDenied(denial, hint=hint)
    return _to_model(_Row(row), now)


class _Row:
    """Attribute access over the values we just inserted (same shape as a selected row)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.__dict__.update(values)


def _visible(ctx: AuthContext, row: Any, broker: Broker) -> bool:
    return bool(row.principal_id == ctx.principal_id or broker.policy.can_read_audit(ctx))


def _fetch(conn: sa.Connection, grant_id: str) -> Any:
    if not grant_id.startswith("g-") or len(grant_id) > 40:
        return None
    return conn.execute(sa.select(grants_table).where(grants_table.c.id == grant_id)).first()


def _not_found(grant_id: str) -> NotFound:
    return NotFound(f"no grant {grant_id[:40]!r}", hint="see `access grants --all`")


def list_grants(broker: Broker, ctx: AuthContext, include_ended: bool = False) -> list[Grant]:
    """The caller's grants, newest first: only usable ones unless ``include_ended``.

    Raises:
        Unavailable: the database could not be reached.
    """
    now = broker.clock.now()
    query = sa.select(grants_table).where(grants_table.c.principal_id == ctx.principal_id)
    if not include_ended:
        query = query.where(grants_table.c.state == GrantState.ACTIVE, grants_table.c.expires_at > now)
    query = query.order_by(grants_table.c.created_at.desc(), grants_table.c.id).limit(_LIST_LIMIT)
    with broker.transaction() as conn:
        rows = conn.execute(query).all()
    return [_to_model(row, now) for row in rows]


def get_grant(broker: Broker, ctx: AuthContext, grant_id: str) -> Grant:
    """One grant, for its owner or an audit reader.

    Raises:
        NotFound: no such grant, or not the caller's to see.
        Unavailable: the database could not be reached.
    """
    with broker.transaction() as conn:
        row = _fetch(conn, grant_id)
    if row is None or not _visible(ctx, row, broker):
        raise _not_found(grant_id)
    return _to_model(row, broker.clock.now())


def _end(
    conn: sa.Connection,
    broker: Broker,
    row: Any,
    *,
    state: GrantState,
    reason: str,
    actor: str,
    now: datetime,
) -> bool:
    """Move an active grant to ``state``, audited; False when someone else ended it first."""
    result = conn.execute(
        grants_table.update()
        .where(grants_table.c.id == row.id, grants_table.c.state == GrantState.ACTIVE)
        .values(state=state, ended_at=now, ended_reason=reason, ended_by=actor)
    )
    if result.rowcount != 1:
        return False
    action = Action.GRANT_EXPIRED if state == GrantState.EXPIRED else Action.GRANT_REVOKE
    details = {"grant_id": row.id, "reason": reason, "subject": row.subject, "scope": row.scope}
    ledger.append(
        conn,
        broker.clock,
        actor=actor,
        action=action,
        target=grant_target(row.service, row.id),
        details=details,
    )
    return True


def revoke_grant(broker: Broker, ctx: AuthContext, grant_id: str) -> Grant:
    """End an active grant now (owner or audit reader), audited; live tunnels are cut.

    Raises:
        NotFound: no such grant, or not the caller's to see.
        Conflict: the grant is not active (already expired, revoked or denied).
        Unavailable: the database could not be reached; nothing changed.
    """
    with broker.transaction() as conn:
        row = _fetch(conn, grant_id)
        if row is None or not _visible(ctx, row, broker):
            raise _not_found(grant_id)
        now = broker.clock.now()
        state = effective_state(row.state, row.expires_at, now)
        if state != GrantState.ACTIVE:
            raise Conflict(f"grant {grant_id} is already {state}", hint="see `access grants`")
        if not _end(conn, broker, row, state=GrantState.REVOKED, reason="revoked", actor=ctx.name, now=now):
            raise Conflict(f"grant {grant_id} was ended meanwhile", hint="see `access grants`")
        row = _fetch(conn, grant_id)
    broker.events.publish(GrantEnded(grant_id, "revoked"))
    return _to_model(row, now)


def end_grants_for_principal(
    conn: sa.Connection, broker: Broker, principal_id: str, reason: str, actor: str
) -> list[str]:
    """Revoke every usable grant of a principal inside the caller's transaction; return their ids.

    Each is audited (``grant.revoke`` with ``reason``). Nothing is published: the caller
    publishes ``GrantEnded(id, reason)`` after its commit.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database failed; the caller's transaction must fail.
    """
    now = broker.clock.now()
    rows = conn.execute(
        sa.select(grants_table).where(
            grants_table.c.principal_id == principal_id,
            grants_table.c.state == GrantState.ACTIVE,
            grants_table.c.expires_at > now,
        )
    ).all()
    return [
        row.id
        for row in rows
        if _end(conn, broker, row, state=GrantState.REVOKED, reason=reason, actor=actor, now=now)
    ]


def open_for_tunnel(broker: Broker, ctx: AuthContext, grant_id: str) -> TunnelGrant:
    """Check that ``grant_id`` is usable by ``ctx`` right now and say where to connect.

    Raises:
        NotFound: no such grant, or its service is no longer in the policy.
        Forbidden: the grant belongs to someone else, was revoked, denied or is pending.
        Expired: the grant is past its expiry (whatever its state column says).
        Unavailable: the database could not be reached.
    """
    with broker.transaction() as conn:
        return _usable_for_tunnel(conn, broker, ctx, grant_id)


def open_connection(
    broker: Broker, ctx: AuthContext, grant_id: str, *, connection_id: str, client: str
) -> TunnelGrant:
    """One more connection through a tunnel: in one transaction, check that the sign-in session
    behind ``ctx`` is live and ``grant_id`` usable, and write ``connection.open`` (fail closed).

    One transaction rather than one per step: on SQLite each takes the write lock, so this is
    what a new connection through the tunnel waits for.

    Raises:
        Unauthenticated: the session was signed out, revoked or expired; the principal disabled.
        NotFound, Forbidden, Expired: as ``open_for_tunnel``.
        Unavailable: the database could not be reached, or the ledger not written.
    """
    from access.broker.auth.tokens import check_session

    with broker.transaction() as conn:
        check_session(broker, ctx, conn)
        grant = _usable_for_tunnel(conn, broker, ctx, grant_id)
        ledger.append(
            conn,
            broker.clock,
            actor=ctx.name,
            action=Action.CONNECTION_OPEN,
            target=grant_target(grant.service, grant.grant_id),
            details={
                "connection": connection_id,
                "grant": grant.grant_id,
                "service": grant.service,
                "scope": grant.scope,
                "kind": grant.kind,
                "client": client,
                "target": f"{grant.host}:{grant.port}",
            },
        )
    return grant


def _usable_for_tunnel(conn: sa.Connection, broker: Broker, ctx: AuthContext, grant_id: str) -> TunnelGrant:
    row = _fetch(conn, grant_id)
    if row is None:
        raise _not_found(grant_id)
    if row.principal_id != ctx.principal_id:
        raise Forbidden(f"grant {grant_id} is not yours", hint="see `access grants`")
    now = broker.clock.now()
    state = effective_state(row.state, row.expires_at, now)
    if state == GrantState.EXPIRED:
        raise Expired(
            f"grant {grant_id} expired at {ledger.format_time(row.expires_at)}", hint=_ask_again(row)
        )
    if state != GrantState.ACTIVE:
        raise Forbidden(f"grant {grant_id} is {state}", hint=_ask_again(row))
    svc = broker.policy.service(row.service)
    if svc is None or row.scope not in svc.scopes:
        raise NotFound(
            f"{row.service} ({row.scope}) is no longer in the broker's policy", hint="see `access services`"
        )
    return TunnelGrant(
        grant_id=row.id,
        principal_id=row.principal_id,
        subject=row.subject,
        service=svc.name,
        scope=row.scope,
        kind=svc.kind,
        host=svc.host,
        port=svc.port,
        expires_at=row.expires_at,
        options=dict(svc.options),
    )


def _ask_again(row: Any) -> str:
    return f"request a new grant: `access request {row.service} --scope {row.scope} --ttl ...`"


def grant_state(broker: Broker, grant_ids: Sequence[str]) -> dict[str, tuple[GrantState, datetime]]:
    """Effective state and expiry of each known id (unknown ids are left out). For the tunnel watcher.

    Raises:
        Unavailable: the database could not be reached.
    """
    ids = list(dict.fromkeys(grant_ids))
    found: dict[str, tuple[GrantState, datetime]] = {}
    with broker.transaction() as conn:
        for start in range(0, len(ids), _ID_BATCH):
            chunk = ids[start : start + _ID_BATCH]
            query = sa.select(grants_table.c.id, grants_table.c.state, grants_table.c.expires_at).where(
                grants_table.c.id.in_(chunk)
            )
            for row in conn.execute(query):
                found[row.id] = (row.state, row.expires_at)
    now = broker.clock.now()
    return {gid: (effective_state(state, expires, now), expires) for gid, (state, expires) in found.items()}


def expire_due(broker: Broker) -> list[str]:
    """Mark active grants past their expiry as expired (audited ``grant.expired``); return their ids.

    Safe with several replicas: the update is conditional on ``state='active'``, so each grant
    is expired and audited exactly once. Nothing is published (``ExpiryLoop`` does that).

    Raises:
        Unavailable: the database could not be reached; nothing changed.
    """
    now = broker.clock.now()
    with broker.transaction() as conn:
        rows = conn.execute(
            sa.select(grants_table)
            .where(grants_table.c.state == GrantState.ACTIVE, grants_table.c.expires_at <= now)
            .order_by(grants_table.c.expires_at)
            .limit(_EXPIRE_BATCH)
        ).all()
        return [
            row.id
            for row in rows
            if _end(conn, broker, row, state=GrantState.EXPIRED, reason="expired", actor="broker", now=now)
        ]


class ExpiryLoop(Loop):
    """Every ``EXPIRY_INTERVAL`` seconds: expire due grants and publish ``GrantEnded(id, "expired")``.

    Tunnels do not wait for this loop: they cut at ``expires_at`` on their own timers; this
    records the end in the ledger.
    """

    name = "grant expiry"

    def __init__(self, broker: Broker, interval: float = EXPIRY_INTERVAL) -> None:
        super().__init__(broker, interval)

    async def tick(self) -> None:
        """Raises: Unavailable: the database could not be reached; nothing changed."""
        for grant_id in await asyncio.to_thread(expire_due, self.broker):
            self.broker.events.publish(GrantEnded(grant_id, "expired"))
