"""Reading grants: list, get, who may see one, and the tunnel's checks (open, connect, watch).

A grant's ``state`` column says what was decided; whether it is usable is decided by the server
clock too: a grant past ``expires_at`` is never usable whatever the column says
(``effective_state``).

Who may see and revoke a grant: its owner, and the policy's audit readers (the people who can
already see every grant in the ledger). A grant that needs approval may be seen, not revoked, by
its reviewers too (``reviews.is_reviewer``: by the policy in force). Anyone else gets
``NotFound``, so grant ids do not leak.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.auth.principal import AuthContext
from access.broker.errors import Expired, Forbidden, NotFound
from access.broker.grants import reviews
from access.broker.grants.lifecycle import grant_target
from access.broker.identities.logins import check_connection_limit
from access.broker.locks import guard as locks
from access.broker.runtime import Broker
from access.broker.store import approvals as votes
from access.broker.store import connections as open_connections
from access.broker.store import grants as store
from access.broker.store.grants import GrantRecord
from access.shared.closecodes import grant_ended_close
from access.shared.models import Grant, GrantState, Review

__all__ = [
    "NotYours",
    "TunnelGrant",
    "effective_state",
    "fetch",
    "get_grant",
    "grant_state",
    "list_break_glass",
    "list_grants",
    "may_view",
    "not_found",
    "open_connection",
    "open_for_tunnel",
    "to_model",
    "to_model_reviewed",
    "visible",
    "watched_grants",
]

_LIST_LIMIT = 500


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


def effective_state(state: str, expires_at: datetime, now: datetime) -> GrantState:
    """The state a grant really is in: active past its expiry, or pending past its review
    deadline, is expired (at the exact instant too)."""
    if state in (GrantState.ACTIVE, GrantState.PENDING) and now >= expires_at:
        return GrantState.EXPIRED
    return GrantState(state)


def to_model(record: GrantRecord, now: datetime, review: Review | None = None) -> Grant:
    """The API's view of a stored grant at ``now`` (effective state, seconds left)."""
    state = effective_state(record.state, record.expires_at, now)
    ended_at, ended_reason = record.ended_at, record.ended_reason
    if state == GrantState.EXPIRED and ended_at is None:
        why = "unreviewed" if record.state == GrantState.PENDING else "expired"
        ended_at, ended_reason = record.expires_at, why
    left = int((record.expires_at - now).total_seconds()) if state == GrantState.ACTIVE else 0
    return Grant(
        id=record.id,
        subject=record.subject,
        service=record.service,
        kind=record.kind,
        scope=record.scope,
        reason=record.reason,
        state=state,
        created_at=record.created_at,
        expires_at=record.expires_at,
        ended_at=ended_at,
        ended_reason=ended_reason,
        seconds_left=max(0, left),
        rule=record.rule,
        requirement=record.requirement,
        ttl_seconds=record.ttl_seconds,
        approved_at=record.approved_at,
        break_glass=record.break_glass,
        review=review,
    )


def to_model_reviewed(
    conn: sa.Connection, broker: Broker, ctx: AuthContext, record: GrantRecord, now: datetime
) -> Grant:
    """``to_model`` with the ``review`` filled for a grant that needs approval, as ``ctx`` sees it."""
    if record.requirement != "approval":
        return to_model(record, now)
    state = effective_state(record.state, record.expires_at, now)
    cast = votes.for_grant(conn, record.id)
    return to_model(record, now, reviews.review_of(conn, broker.policy, ctx, record, cast, state, now))


def visible(ctx: AuthContext, record: GrantRecord, broker: Broker) -> bool:
    """Whether ``ctx`` may see (and revoke) the grant: its owner or an audit reader."""
    return bool(record.principal_id == ctx.principal_id or broker.policy.can_read_audit(ctx))


def may_view(ctx: AuthContext, record: GrantRecord, broker: Broker) -> bool:
    """Whether ``ctx`` may see the grant: ``visible``, or one of its reviewers by the policy now."""
    return visible(ctx, record, broker) or reviews.is_reviewer(broker.policy, ctx, record)


def fetch(conn: sa.Connection, grant_id: str) -> GrantRecord | None:
    """The grant, or None; ids that cannot be grant ids are not even looked up."""
    if not grant_id.startswith("g-") or len(grant_id) > 40:
        return None
    return store.get(conn, grant_id)


def not_found(grant_id: str) -> NotFound:
    return NotFound(f"no grant {grant_id[:40]!r}", hint="see `access grants --all`")


class NotYours(NotFound):
    """Someone else's grant, asked for by a person who may not see it.

    Its status, code, message and hint are those of ``not_found``: the caller cannot tell it
    from a grant that does not exist. Only the ledger (the tunnel's ``connection.refuse``)
    says which it was.
    """

    def __init__(self, same_as: NotFound) -> None:
        super().__init__(same_as.message, hint=same_as.hint)


def list_grants(broker: Broker, ctx: AuthContext, include_ended: bool = False) -> list[Grant]:
    """The caller's grants, newest first: only usable ones and those waiting for review unless
    ``include_ended``. Pending ones carry their ``review``.

    Raises:
        Unavailable: the database could not be reached.
    """
    now = broker.clock.now()
    with broker.transaction() as conn:
        records = store.list_for_principal(
            conn, ctx.principal_id, usable_at=None if include_ended else now, limit=_LIST_LIMIT
        )
        return [
            to_model_reviewed(conn, broker, ctx, record, now)
            if record.state == GrantState.PENDING
            else to_model(record, now)
            for record in records
        ]


def list_break_glass(broker: Broker, ctx: AuthContext) -> list[Grant]:
    """Break-glass grants, newest first, ended ones too, for review after the fact: everyone's for
    an audit reader (the policy's ``audit.readers``), the caller's own for anyone else.

    Raises:
        Unavailable: the database could not be reached.
    """
    now = broker.clock.now()
    everyone = broker.policy.can_read_audit(ctx)
    with broker.transaction() as conn:
        records = store.list_break_glass(conn, None if everyone else ctx.principal_id, limit=_LIST_LIMIT)
    return [to_model(record, now) for record in records]


def get_grant(broker: Broker, ctx: AuthContext, grant_id: str) -> Grant:
    """One grant, for its owner, an audit reader or (for one that needs approval) its reviewers,
    with its ``review``.

    Raises:
        NotFound: no such grant, or not the caller's to see.
        Unavailable: the database could not be reached.
    """
    with broker.transaction() as conn:
        record = fetch(conn, grant_id)
        if record is None or not may_view(ctx, record, broker):
            raise not_found(grant_id)
        return to_model_reviewed(conn, broker, ctx, record, broker.clock.now())


def open_for_tunnel(broker: Broker, ctx: AuthContext, grant_id: str) -> TunnelGrant:
    """Check that ``grant_id`` is usable by ``ctx`` right now and say where to connect.

    Raises:
        NotFound: no such grant, someone else's grant (``NotYours``, answered the same way),
            or its service is no longer in the policy.
        Forbidden: the grant was revoked, denied or is pending; or, for an audit reader (who
            can see it anyway), it belongs to someone else.
        Locked: a lock is in force on the grant, its owner or its service (a ``Forbidden``).
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
        RateLimited: a dynamic Redis service's grant has its ``connection_limit`` open already.
        Unavailable: the database could not be reached, or the ledger not written.
    """
    from access.broker.auth.tokens import check_session

    with broker.transaction() as conn:
        check_session(broker, ctx, conn)
        grant = _usable_for_tunnel(conn, broker, ctx, grant_id)
        target = grant_target(grant.service, grant.grant_id)
        check_connection_limit(conn, broker, grant.service, grant.grant_id, target)
        details = {
            "connection": connection_id,
            "grant": grant.grant_id,
            "service": grant.service,
            "scope": grant.scope,
            "kind": grant.kind,
            "client": client,
            "target": f"{grant.host}:{grant.port}",
        }
        ledger.append(
            conn, broker.clock, actor=ctx.name, action=Action.CONNECTION_OPEN, target=target, details=details
        )
        # Owed a connection.close from now on, by this process or, should it die, another.
        open_connections.add_open(
            conn,
            connection_id,
            instance_id=broker.instance_id,
            actor=ctx.name,
            target=target,
            details=details,
            now=broker.clock.now(),
        )
    return grant


def _usable_for_tunnel(conn: sa.Connection, broker: Broker, ctx: AuthContext, grant_id: str) -> TunnelGrant:
    record = fetch(conn, grant_id)
    if record is None:
        raise not_found(grant_id)
    if record.principal_id != ctx.principal_id:
        if not visible(ctx, record, broker):
            raise NotYours(not_found(grant_id))  # answered exactly as a missing grant
        # An audit reader sees the grant anyway: saying why is no oracle.
        raise Forbidden(f"grant {grant_id} is not yours", hint="see `access grants`")
    state = effective_state(record.state, record.expires_at, broker.clock.now())
    if state == GrantState.EXPIRED:
        raise Expired(
            f"grant {grant_id} expired at {ledger.format_time(record.expires_at)}", hint=_ask_again(record)
        )
    if state == GrantState.PENDING:
        raise Forbidden(
            f"grant {grant_id} is waiting for approval", hint=f"wait for it: `access wait {grant_id}`"
        )
    if state == GrantState.REVOKED:
        # In the words of the tunnel's close: "ended: the policy no longer allows it", "... locked".
        message = grant_ended_close(record.ended_reason or "revoked", grant_id)[1]
        raise Forbidden(message, hint=_ask_again(record))
    if state != GrantState.ACTIVE:
        raise Forbidden(f"grant {grant_id} is {state}", hint=_ask_again(record))
    # Belt and braces: a lock ended the grant when it was put on, but fail closed meanwhile.
    locks.check(conn, broker.clock.now(), user=record.subject, service=record.service, grant_id=record.id)
    svc = broker.policy.service(record.service)
    if svc is None or record.scope not in svc.scopes:
        raise NotFound(
            f"{record.service} ({record.scope}) is no longer in the broker's policy",
            hint="see `access services`",
        )
    return TunnelGrant(
        grant_id=record.id,
        principal_id=record.principal_id,
        subject=record.subject,
        service=svc.name,
        scope=record.scope,
        kind=svc.kind,
        host=svc.host,
        port=svc.port,
        expires_at=record.expires_at,
        options=dict(svc.options),
    )


def _ask_again(record: GrantRecord) -> str:
    return f"request a new grant: `access request {record.service} --scope {record.scope} --ttl ...`"


def grant_state(broker: Broker, grant_ids: Sequence[str]) -> dict[str, tuple[GrantState, datetime]]:
    """Effective state and expiry of each known id (unknown ids are left out).

    Raises:
        Unavailable: the database could not be reached.
    """
    return {gid: (state, expires) for gid, (state, expires, _) in watched_grants(broker, grant_ids).items()}


def watched_grants(
    broker: Broker, grant_ids: Sequence[str]
) -> dict[str, tuple[GrantState, datetime, str | None]]:
    """Effective state, expiry and ended reason (``locked`` for a disabled principal's grants) of
    each known id (unknown ids are left out). For the tunnel watcher.

    Raises:
        Unavailable: the database could not be reached.
    """
    with broker.transaction() as conn:
        found = store.states(conn, grant_ids)
    now = broker.clock.now()
    return {
        gid: (effective_state(state, expires, now), expires, reason)
        for gid, (state, expires, reason) in found.items()
    }
