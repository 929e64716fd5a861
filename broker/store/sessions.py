"""Login sessions and their refresh tokens (the ``sessions`` and ``refresh_tokens`` tables).

Revocations and the refresh-token "mark used" are conditional updates that report whether
they changed a row, so two replicas racing on the same session or token cannot both win.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from access.broker.store import signals
from access.broker.store.tables import principals, refresh_tokens, sessions

__all__ = [
    "RefreshToken",
    "SessionView",
    "by_id",
    "by_ids",
    "insert",
    "insert_refresh_token",
    "mark_refresh_token_used",
    "principal_name",
    "refresh_token",
    "revoke",
    "revoke_for_principal",
    "revoked_reasons",
    "session_of_refresh_token",
    "set_upstream_refresh",
]

_ID_BATCH = 500  # ids per IN (...): well under every backend's bound-parameter limit

_with_principal = sessions.join(principals, sessions.c.principal_id == principals.c.id)


@dataclass(frozen=True)
class RefreshToken:
    """A refresh token with its session and principal, as ``refresh`` needs to judge it."""

    token_hash: str
    used_at: datetime | None
    expires_at: datetime
    session_id: str
    client_id: str
    revoked_at: datetime | None
    session_expires_at: datetime
    principal_id: str
    name: str
    disabled: bool
    # An upstream OIDC sign-in's session: the provider, its sealed refresh token (None: it gave
    # none), and the person's subject there.
    upstream_provider: str | None = None
    upstream_refresh: bytes | None = None
    subject: str | None = None


@dataclass(frozen=True)
class SessionView:
    """A session and its principal, as access-token checks need them (live or not)."""

    principal_id: str
    expires_at: datetime
    revoked_at: datetime | None
    name: str
    kind: str
    groups: tuple[str, ...]
    disabled: bool
    mfa_at: datetime | None = None  # the sign-in's second factor, if it presented one


def insert(
    conn: sa.Connection,
    *,
    session_id: str,
    principal_id: str,
    client_id: str,
    created_at: datetime,
    expires_at: datetime,
    mfa_at: datetime | None = None,
    upstream_provider: str | None = None,
    upstream_refresh: bytes | None = None,
) -> None:
    """Open a session (``mfa_at``: when its sign-in presented a second factor, if it did; of an
    upstream sign-in: with its provider and sealed refresh token)."""
    conn.execute(
        sessions.insert().values(
            id=session_id,
            principal_id=principal_id,
            client_id=client_id,
            created_at=created_at,
            expires_at=expires_at,
            mfa_at=mfa_at,
            upstream_provider=upstream_provider,
            upstream_refresh=upstream_refresh,
        )
    )


def set_upstream_refresh(conn: sa.Connection, session_id: str, sealed: bytes | None) -> None:
    """Store the provider's rotated refresh token (sealed) for an upstream session."""
    conn.execute(sessions.update().where(sessions.c.id == session_id).values(upstream_refresh=sealed))


def insert_refresh_token(
    conn: sa.Connection, *, token_hash: str, session_id: str, created_at: datetime, expires_at: datetime
) -> None:
    """Store a refresh token (its hash) for a session."""
    conn.execute(
        refresh_tokens.insert().values(
            token_hash=token_hash, session_id=session_id, created_at=created_at, expires_at=expires_at
        )
    )


def revoke(conn: sa.Connection, session_id: str, now: datetime, reason: str) -> bool:
    """Revoke one session unless it already is. True if this call revoked it (and then every
    replica is told at commit: ``signals``)."""
    result = conn.execute(
        sessions.update()
        .where(sessions.c.id == session_id, sessions.c.revoked_at.is_(None))
        # A revoked session never refreshes again: its upstream refresh token is of no more use.
        .values(revoked_at=now, revoked_reason=reason, upstream_refresh=None)
    )
    if result.rowcount == 0:
        return False
    signals.send(conn, signals.Signal(signals.SESSION_ENDED, session_id, reason=reason))
    return True


def revoke_for_principal(conn: sa.Connection, principal_id: str, now: datetime, reason: str) -> list[str]:
    """Revoke every session of a principal not yet revoked. Returns the ids of those revoked
    (read in the caller's transaction, then revoked unless someone else just did); every replica
    is told of each at commit."""
    live = sessions.c.principal_id == principal_id, sessions.c.revoked_at.is_(None)
    ids = [str(row.id) for row in conn.execute(sa.select(sessions.c.id).where(*live))]
    if ids:
        conn.execute(
            sessions.update()
            .where(*live)
            .values(revoked_at=now, revoked_reason=reason, upstream_refresh=None)
        )
    for session_id in ids:
        signals.send(conn, signals.Signal(signals.SESSION_ENDED, session_id, reason=reason))
    return ids


def revoked_reasons(conn: sa.Connection, session_ids: Sequence[str]) -> dict[str, str]:
    """The revoked ones among ``session_ids``, each with its ``revoked_reason`` (live and unknown
    ids are left out). One query per 500 ids."""
    ids = list(dict.fromkeys(session_ids))
    found: dict[str, str] = {}
    for start in range(0, len(ids), _ID_BATCH):
        query = sa.select(sessions.c.id, sessions.c.revoked_reason).where(
            sessions.c.id.in_(ids[start : start + _ID_BATCH]), sessions.c.revoked_at.is_not(None)
        )
        for row in conn.execute(query):
            found[row.id] = row.revoked_reason or "revoked"
    return found


def refresh_token(conn: sa.Connection, token_hash: str) -> RefreshToken | None:
    """The refresh token with this hash, with its session and principal, or None."""
    row = conn.execute(
        sa.select(
            refresh_tokens.c.token_hash,
            refresh_tokens.c.used_at,
            refresh_tokens.c.expires_at,
            sessions.c.id.label("session_id"),
            sessions.c.client_id,
            sessions.c.revoked_at,
            sessions.c.expires_at.label("session_expires_at"),
            principals.c.id.label("principal_id"),
            principals.c.name,
            principals.c.disabled,
            principals.c.subject,
            sessions.c.upstream_provider,
            sessions.c.upstream_refresh,
        )
        .select_from(
            refresh_tokens.join(sessions, refresh_tokens.c.session_id == sessions.c.id).join(
                principals, sessions.c.principal_id == principals.c.id
            )
        )
        .where(refresh_tokens.c.token_hash == token_hash)
    ).first()
    if row is None:
        return None
    return RefreshToken(
        token_hash=row.token_hash,
        used_at=row.used_at,
        expires_at=row.expires_at,
        session_id=row.session_id,
        client_id=row.client_id,
        revoked_at=row.revoked_at,
        session_expires_at=row.session_expires_at,
        principal_id=row.principal_id,
        name=row.name,
        disabled=bool(row.disabled),
        upstream_provider=row.upstream_provider,
        upstream_refresh=None if row.upstream_refresh is None else bytes(row.upstream_refresh),
        subject=row.subject,
    )


def mark_refresh_token_used(conn: sa.Connection, token_hash: str, now: datetime) -> bool:
    """Mark a refresh token used unless someone already did. True if this call marked it."""
    result = conn.execute(
        refresh_tokens.update()
        .where(refresh_tokens.c.token_hash == token_hash, refresh_tokens.c.used_at.is_(None))
        .values(used_at=now)
    )
    return result.rowcount > 0


def session_of_refresh_token(conn: sa.Connection, token_hash: str) -> str | None:
    """The id of the session a refresh token belongs to, or None for an unknown token."""
    session_id = conn.execute(
        sa.select(refresh_tokens.c.session_id).where(refresh_tokens.c.token_hash == token_hash)
    ).scalar_one_or_none()
    return None if session_id is None else str(session_id)


def principal_name(conn: sa.Connection, session_id: str) -> str | None:
    """The name of the principal a session belongs to, or None for an unknown session."""
    name = conn.execute(
        sa.select(principals.c.name).select_from(_with_principal).where(sessions.c.id == session_id)
    ).scalar_one_or_none()
    return None if name is None else str(name)


# Built once: every authenticated request runs it (see store/audit.py's statements).
_VIEW = (
    sessions.c.principal_id,
    sessions.c.expires_at,
    sessions.c.revoked_at,
    sessions.c.mfa_at,
    principals.c.name,
    principals.c.kind,
    principals.c.groups,
    principals.c.disabled,
)
_BY_ID = sa.select(*_VIEW).select_from(_with_principal).where(sessions.c.id == sa.bindparam("session_id"))
_BY_IDS = (
    sa.select(sessions.c.id, *_VIEW)
    .select_from(_with_principal)
    .where(sessions.c.id.in_(sa.bindparam("session_ids", expanding=True)))
)


def by_id(conn: sa.Connection, session_id: str) -> SessionView | None:
    """The session with this id and its principal (revoked or expired too), or None."""
    row = conn.execute(_BY_ID, {"session_id": session_id}).first()
    return None if row is None else _view(row)


def by_ids(conn: sa.Connection, session_ids: Sequence[str]) -> dict[str, SessionView]:
    """``by_id`` for several sessions in one statement: those found, by id."""
    found: dict[str, SessionView] = {}
    unique = list(dict.fromkeys(session_ids))
    for start in range(0, len(unique), _ID_BATCH):
        chunk = unique[start : start + _ID_BATCH]
        for row in conn.execute(_BY_IDS, {"session_ids": chunk}):
            found[row.id] = _view(row)
    return found


def _view(row: Any) -> SessionView:
    return SessionView(
        principal_id=row.principal_id,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        name=row.name,
        kind=row.kind,
        groups=tuple(row.groups or ()),
        disabled=bool(row.disabled),
        mfa_at=row.mfa_at,
    )
