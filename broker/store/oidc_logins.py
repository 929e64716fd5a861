"""Upstream OIDC sign-ins under way (the ``oidc_logins`` table): one row per "Sign in with ...".

``take`` is a conditional update that reports whether it spent the row, so a callback replayed
(or raced on two replicas) succeeds once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from access.broker.store.tables import oidc_logins

__all__ = ["OidcLogin", "by_state_hash", "delete_expired", "insert", "take"]


@dataclass(frozen=True)
class OidcLogin:
    id: str
    provider: str
    browser_hash: str
    nonce: str
    code_verifier: bytes
    purpose: str  # device | inbox
    device_id: str | None
    expires_at: datetime
    used_at: datetime | None

    @classmethod
    def from_row(cls, row: sa.Row[*tuple[Any, ...]]) -> OidcLogin:
        m = row._mapping
        return cls(
            id=m["id"],
            provider=m["provider"],
            browser_hash=m["browser_hash"],
            nonce=m["nonce"],
            code_verifier=bytes(m["code_verifier"]),
            purpose=m["purpose"],
            device_id=m["device_id"],
            expires_at=m["expires_at"],
            used_at=m["used_at"],
        )


def insert(
    conn: sa.Connection,
    *,
    login_id: str,
    provider: str,
    state_hash: str,
    browser_hash: str,
    nonce: str,
    code_verifier: bytes,
    purpose: str,
    device_id: str | None,
    created_at: datetime,
    expires_at: datetime,
) -> None:
    """Remember a sign-in sent to the provider."""
    conn.execute(
        oidc_logins.insert().values(
            id=login_id,
            provider=provider,
            state_hash=state_hash,
            browser_hash=browser_hash,
            nonce=nonce,
            code_verifier=code_verifier,
            purpose=purpose,
            device_id=device_id,
            created_at=created_at,
            expires_at=expires_at,
        )
    )


def by_state_hash(conn: sa.Connection, state_hash: str) -> OidcLogin | None:
    """The sign-in with this ``state`` (hash), used or not, expired or not; or None."""
    row = conn.execute(sa.select(oidc_logins).where(oidc_logins.c.state_hash == state_hash)).first()
    return None if row is None else OidcLogin.from_row(row)


def take(conn: sa.Connection, login_id: str, now: datetime) -> bool:
    """Spend an unused, unexpired sign-in. True if this call did (single use)."""
    result = conn.execute(
        oidc_logins.update()
        .where(oidc_logins.c.id == login_id, oidc_logins.c.used_at.is_(None), oidc_logins.c.expires_at > now)
        .values(used_at=now)
    )
    return result.rowcount > 0


def delete_expired(conn: sa.Connection, before: datetime) -> None:
    """Drop sign-ins that expired at or before ``before`` (housekeeping)."""
    conn.execute(oidc_logins.delete().where(oidc_logins.c.expires_at <= before))
