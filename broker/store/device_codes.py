"""Device authorizations of RFC 8628 (the ``device_codes`` table).

``DeviceState`` is the vocabulary of the ``status`` column; which state may follow which is
decided in ``access.broker.auth.device_flow``. Updates that move a state forward are
conditional where two pollers (or replicas) could race, and report whether they won.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from access.broker.store.tables import device_codes

__all__ = [
    "DeviceCode",
    "DeviceState",
    "attach_consent",
    "by_device_code_hash",
    "delete_expired",
    "deny_open_for_principal",
    "insert_pending",
    "mark_consumed",
    "open_by_consent_hash",
    "open_by_id",
    "open_by_user_code",
    "record_decision",
    "record_poll",
    "user_code_taken",
]


class DeviceState(StrEnum):
    """What ``device_codes.status`` holds."""

    PENDING = "pending"  # waiting for a person to sign in and decide
    APPROVED = "approved"  # approved; the CLI has not exchanged the code yet
    DENIED = "denied"
    CONSUMED = "consumed"  # exchanged for tokens (single use)


@dataclass(frozen=True)
class DeviceCode:
    """One device authorization (without its device-code and consent hashes)."""

    id: str
    user_code: str
    client_id: str
    client_host: str | None
    client_ip: str | None
    created_at: datetime
    expires_at: datetime
    interval: int
    last_poll_at: datetime | None
    status: DeviceState
    principal_id: str | None
    mfa_at: datetime | None = None  # when the person who signed in presented a second factor
    mfa_required: bool = False  # ``access login --mfa``: a sign-in without one is refused
    # Signed in with an upstream provider: which, its refresh token (sealed) and the latest the
    # session may end (set when the provider gave no refresh token), for the session to come.
    upstream_provider: str | None = None
    upstream_refresh: bytes | None = None
    session_expires_at: datetime | None = None

    @classmethod
    def from_row(cls, row: sa.Row[*tuple[Any, ...]]) -> DeviceCode:
        m = row._mapping
        return cls(
            id=str(m["id"]),
            user_code=str(m["user_code"]),
            client_id=str(m["client_id"]),
            client_host=m["client_host"],
            client_ip=m["client_ip"],
            created_at=m["created_at"],
            expires_at=m["expires_at"],
            interval=int(m["interval"]),
            last_poll_at=m["last_poll_at"],
            status=DeviceState(m["status"]),
            principal_id=m["principal_id"],
            mfa_at=m["mfa_at"],
            mfa_required=bool(m["mfa_required"]),
            upstream_provider=m["upstream_provider"],
            upstream_refresh=None if m["upstream_refresh"] is None else bytes(m["upstream_refresh"]),
            session_expires_at=m["session_expires_at"],
        )


def _first(conn: sa.Connection, query: sa.Select[Any]) -> DeviceCode | None:
    row = conn.execute(query).first()
    return None if row is None else DeviceCode.from_row(row)


def delete_expired(conn: sa.Connection, before: datetime) -> None:
    """Drop device authorizations that expired at or before ``before`` (housekeeping)."""
    conn.execute(device_codes.delete().where(device_codes.c.expires_at <= before))


def user_code_taken(conn: sa.Connection, user_code: str) -> bool:
    """True when a stored device authorization has this user code."""
    query = sa.select(device_codes.c.id).where(device_codes.c.user_code == user_code)
    return conn.execute(query).first() is not None


def insert_pending(
    conn: sa.Connection,
    *,
    device_id: str,
    device_code_hash: str,
    user_code: str,
    client_id: str,
    client_host: str | None,
    client_ip: str,
    created_at: datetime,
    expires_at: datetime,
    interval: int,
    mfa_required: bool = False,
) -> None:
    """Store a new device authorization in state ``pending`` (``mfa_required``: the person must
    sign in with a second factor).

    Raises:
        sqlalchemy.exc.IntegrityError: the device code or user code is taken.
    """
    conn.execute(
        device_codes.insert().values(
            id=device_id,
            device_code_hash=device_code_hash,
            user_code=user_code,
            client_id=client_id,
            client_host=client_host,
            client_ip=client_ip,
            created_at=created_at,
            expires_at=expires_at,
            interval=interval,
            status=DeviceState.PENDING.value,
            mfa_required=mfa_required,
        )
    )


def by_device_code_hash(conn: sa.Connection, device_code_hash: str) -> DeviceCode | None:
    """The device authorization with this device code (hash), in any state, or None."""
    return _first(conn, sa.select(device_codes).where(device_codes.c.device_code_hash == device_code_hash))


def _open(now: datetime) -> sa.Select[Any]:
    return sa.select(device_codes).where(
        device_codes.c.status == DeviceState.PENDING.value, device_codes.c.expires_at > now
    )


def open_by_user_code(conn: sa.Connection, user_code: str, now: datetime) -> DeviceCode | None:
    """The pending, unexpired device authorization with this user code, or None."""
    return _first(conn, _open(now).where(device_codes.c.user_code == user_code))


def open_by_id(conn: sa.Connection, device_id: str, now: datetime) -> DeviceCode | None:
    """The pending, unexpired device authorization with this id, or None."""
    return _first(conn, _open(now).where(device_codes.c.id == device_id))


def open_by_consent_hash(conn: sa.Connection, consent_hash: str, now: datetime) -> DeviceCode | None:
    """The pending, unexpired device authorization with this consent token (hash), or None."""
    return _first(conn, _open(now).where(device_codes.c.consent_hash == consent_hash))


def record_poll(conn: sa.Connection, device_id: str, now: datetime, interval: int | None = None) -> None:
    """Remember when the CLI last polled, and the polling interval when it changed (slow_down)."""
    values: dict[str, object] = {"last_poll_at": now}
    if interval is not None:
        values["interval"] = interval
    conn.execute(device_codes.update().where(device_codes.c.id == device_id).values(**values))


def attach_consent(
    conn: sa.Connection,
    device_id: str,
    principal_id: str,
    consent_hash: str,
    now: datetime,
    mfa_at: datetime | None = None,
    *,
    upstream_provider: str | None = None,
    upstream_refresh: bytes | None = None,
    session_expires_at: datetime | None = None,
) -> bool:
    """Tie a pending, unexpired authorization to the person who signed in and their consent token
    (``mfa_at``: when that sign-in presented a second factor, None if it did not; and, for an
    upstream sign-in, what its session will need; a later sign-in replaces it all).

    True if it was still pending and unexpired (so this call attached them).
    """
    result = conn.execute(
        device_codes.update()
        .where(
            device_codes.c.id == device_id,
            device_codes.c.status == DeviceState.PENDING.value,
            device_codes.c.expires_at > now,
        )
        .values(
            principal_id=principal_id,
            consent_hash=consent_hash,
            mfa_at=mfa_at,
            upstream_provider=upstream_provider,
            upstream_refresh=upstream_refresh,
            session_expires_at=session_expires_at,
        )
    )
    return result.rowcount > 0


def record_decision(conn: sa.Connection, device_id: str, status: DeviceState, now: datetime) -> None:
    """Store the person's decision (``approved`` or ``denied``) and spend the consent token."""
    conn.execute(
        device_codes.update()
        .where(device_codes.c.id == device_id)
        .values(status=status.value, decided_at=now, consent_hash=None)
    )


def mark_consumed(conn: sa.Connection, device_id: str, now: datetime) -> bool:
    """Move an approved authorization to ``consumed``. True if this call did (single use)."""
    result = conn.execute(
        device_codes.update()
        .where(device_codes.c.id == device_id, device_codes.c.status == DeviceState.APPROVED.value)
        .values(status=DeviceState.CONSUMED.value, last_poll_at=now)
    )
    return result.rowcount > 0


def deny_open_for_principal(conn: sa.Connection, principal_id: str, now: datetime) -> int:
    """Deny every device authorization a principal signed in to and that is not exchanged yet
    (pending with their consent attached, or approved): none may turn into a session after
    their sessions were ended. Returns how many."""
    result = conn.execute(
        device_codes.update()
        .where(
            device_codes.c.principal_id == principal_id,
            device_codes.c.status.in_([DeviceState.PENDING.value, DeviceState.APPROVED.value]),
        )
        .values(status=DeviceState.DENIED.value, decided_at=now, consent_hash=None)
    )
    return int(result.rowcount)
