"""Users and service accounts (the ``principals`` table).

Every function takes the caller's connection, so what commits together is the caller's choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from access.broker.store import signals
from access.broker.store.tables import principals
from access.shared.durations import format_instant

__all__ = [
    "SERVICE_ACCOUNT",
    "USER",
    "PrincipalRecord",
    "TotpState",
    "all_by_name",
    "by_id",
    "by_name",
    "by_upstream",
    "disable",
    "enable",
    "insert",
    "name_taken",
    "service_account_credentials",
    "set_groups",
    "set_password_hash",
    "set_upstream",
    "totp_accept_step",
    "totp_clear",
    "totp_confirm",
    "totp_set_pending",
    "totp_state",
    "totp_users",
    "user_credentials",
]

# The values of ``principals.kind``.
USER = "user"
SERVICE_ACCOUNT = "service_account"


@dataclass(frozen=True)
class PrincipalRecord:
    """A user or service account, without its password or secret hash."""

    id: str
    name: str
    kind: str  # "user" | "service_account"
    groups: tuple[str, ...]
    disabled: bool
    created_at: datetime
    client_id: str | None = None
    owner: str | None = None  # a service account's owning user (name)
    source: str = "embedded"  # or "oidc:<provider>"
    issuer: str | None = None  # upstream users: their provider's issuer and their subject there
    subject: str | None = None

    @classmethod
    def from_row(cls, row: sa.Row[*tuple[Any, ...]]) -> PrincipalRecord:
        m = row._mapping
        return cls(
            id=str(m["id"]),
            name=str(m["name"]),
            kind=str(m["kind"]),
            groups=tuple(m["groups"] or ()),
            disabled=bool(m["disabled"]),
            created_at=m["created_at"],
            client_id=m["client_id"],
            owner=m["owner"],
            source=str(m["source"]),
            issuer=m["issuer"],
            subject=m["subject"],
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "groups": list(self.groups),
            "disabled": self.disabled,
            "created_at": format_instant(self.created_at),
            "client_id": self.client_id,
            "owner": self.owner,
            "source": self.source,
            "subject": self.subject,
        }


_COLUMNS = (
    principals.c.id,
    principals.c.name,
    principals.c.kind,
    principals.c.groups,
    principals.c.disabled,
    principals.c.created_at,
    principals.c.client_id,
    principals.c.owner,
    principals.c.source,
    principals.c.issuer,
    principals.c.subject,
)


def _one(conn: sa.Connection, where: sa.ColumnElement[bool]) -> PrincipalRecord | None:
    row = conn.execute(sa.select(*_COLUMNS).where(where)).first()
    return None if row is None else PrincipalRecord.from_row(row)


def by_id(conn: sa.Connection, principal_id: str) -> PrincipalRecord | None:
    """The principal with this id, or None."""
    return _one(conn, principals.c.id == principal_id)


def by_name(conn: sa.Connection, name: str) -> PrincipalRecord | None:
    """The principal with this name (users and service accounts share one namespace), or None."""
    return _one(conn, principals.c.name == name)


def by_upstream(conn: sa.Connection, issuer: str, subject: str) -> PrincipalRecord | None:
    """The user an upstream provider's ``issuer`` knows as ``subject``, or None."""
    return _one(conn, sa.and_(principals.c.issuer == issuer, principals.c.subject == subject))


def name_taken(conn: sa.Connection, name: str) -> bool:
    """True when a user or service account already has this name."""
    return conn.execute(sa.select(principals.c.id).where(principals.c.name == name)).first() is not None


def all_by_name(conn: sa.Connection) -> list[PrincipalRecord]:
    """Every principal, ordered by name."""
    rows = conn.execute(sa.select(*_COLUMNS).order_by(principals.c.name)).all()
    return [PrincipalRecord.from_row(row) for row in rows]


def insert(
    conn: sa.Connection,
    *,
    principal_id: str,
    name: str,
    kind: str,
    groups: Sequence[str],
    created_at: datetime,
    password_hash: str | None = None,
    client_id: str | None = None,
    secret_hash: str | None = None,
    owner: str | None = None,
    source: str = "embedded",
    issuer: str | None = None,
    subject: str | None = None,
) -> None:
    """Add a principal: ``source`` ``embedded`` (the default), or an upstream user's
    ``oidc:<provider>`` with its ``issuer`` and ``subject``.

    Raises:
        sqlalchemy.exc.IntegrityError: the name, client id or (issuer, subject) is taken.
    """
    conn.execute(
        principals.insert().values(
            id=principal_id,
            name=name,
            kind=kind,
            groups=list(groups),
            created_at=created_at,
            password_hash=password_hash,
            client_id=client_id,
            secret_hash=secret_hash,
            owner=owner,
            source=source,
            issuer=issuer,
            subject=subject,
        )
    )


def set_groups(conn: sa.Connection, principal_id: str, groups: Sequence[str]) -> None:
    """Replace a principal's groups (an upstream user's, as their provider says at each sign-in)."""
    conn.execute(principals.update().where(principals.c.id == principal_id).values(groups=list(groups)))


def set_upstream(conn: sa.Connection, principal_id: str, issuer: str, subject: str) -> None:
    """Link a user to an upstream provider's ``subject`` (``users link``).

    Raises:
        sqlalchemy.exc.IntegrityError: another user has this (issuer, subject).
    """
    conn.execute(
        principals.update().where(principals.c.id == principal_id).values(issuer=issuer, subject=subject)
    )


def user_credentials(conn: sa.Connection, name: str) -> tuple[PrincipalRecord, str | None] | None:
    """The user named ``name`` and its password hash, or None (also for a service account)."""
    row = conn.execute(
        sa.select(*_COLUMNS, principals.c.password_hash).where(
            principals.c.name == name, principals.c.kind == USER
        )
    ).first()
    return None if row is None else (PrincipalRecord.from_row(row), row.password_hash)


def service_account_credentials(
    conn: sa.Connection, client_id: str
) -> tuple[PrincipalRecord, str | None] | None:
    """The service account with this client id and its secret hash, or None."""
    row = conn.execute(
        sa.select(*_COLUMNS, principals.c.secret_hash).where(
            principals.c.client_id == client_id, principals.c.kind == SERVICE_ACCOUNT
        )
    ).first()
    return None if row is None else (PrincipalRecord.from_row(row), row.secret_hash)


def set_password_hash(conn: sa.Connection, principal_id: str, password_hash: str) -> None:
    """Replace a user's password hash (a reset, or argon2 parameters changed: rehash on login)."""
    conn.execute(
        principals.update().where(principals.c.id == principal_id).values(password_hash=password_hash)
    )


def disable(conn: sa.Connection, principal_id: str, now: datetime) -> None:
    """Mark a principal disabled as of ``now``; every replica is told at commit (``signals``)."""
    conn.execute(
        principals.update().where(principals.c.id == principal_id).values(disabled=True, disabled_at=now)
    )
    signals.send(conn, signals.Signal(signals.PRINCIPAL_LOCKED, principal_id))


def enable(conn: sa.Connection, principal_id: str) -> bool:
    """Clear a principal's disabled mark. True if it was disabled (so this call enabled it)."""
    result = conn.execute(
        principals.update()
        .where(principals.c.id == principal_id, principals.c.disabled.is_(True))
        .values(disabled=False, disabled_at=None)
    )
    return result.rowcount > 0


@dataclass(frozen=True)
class TotpState:
    """A user's TOTP enrolment: the sealed secret, when it was confirmed (None: not yet, so
    sign-in ignores it), and the last time step a code was accepted for."""

    sealed_secret: bytes
    confirmed_at: datetime | None
    last_step: int | None


def totp_state(conn: sa.Connection, principal_id: str) -> TotpState | None:
    """The principal's TOTP enrolment, or None when it has none."""
    row = conn.execute(
        sa.select(
            principals.c.totp_secret, principals.c.totp_confirmed_at, principals.c.totp_last_step
        ).where(principals.c.id == principal_id)
    ).first()
    if row is None or row.totp_secret is None:
        return None
    return TotpState(bytes(row.totp_secret), row.totp_confirmed_at, row.totp_last_step)


def totp_users(conn: sa.Connection) -> set[str]:
    """The ids of the principals whose TOTP enrolment is confirmed (in force)."""
    rows = conn.execute(sa.select(principals.c.id).where(principals.c.totp_confirmed_at.is_not(None)))
    return {str(row.id) for row in rows}


def totp_sealed(conn: sa.Connection) -> list[tuple[str, bytes]]:
    """Every stored TOTP secret, sealed, with its principal's id (``keys reseal``)."""
    rows = conn.execute(
        sa.select(principals.c.id, principals.c.totp_secret).where(principals.c.totp_secret.is_not(None))
    )
    return [(str(row.id), bytes(row.totp_secret)) for row in rows]


def totp_reseal(conn: sa.Connection, principal_id: str, old: bytes, new: bytes) -> bool:
    """Replace the sealed secret ``old`` by ``new`` (the same secret under the current key);
    False when it changed meanwhile (a new enrolment or a reset: then it stays as it is)."""
    result = conn.execute(
        principals.update()
        .where(principals.c.id == principal_id, principals.c.totp_secret == old)
        .values(totp_secret=new)
    )
    return result.rowcount == 1


def totp_set_pending(conn: sa.Connection, principal_id: str, sealed_secret: bytes) -> None:
    """Store a new, unconfirmed TOTP secret (replacing an unconfirmed one)."""
    conn.execute(
        principals.update()
        .where(principals.c.id == principal_id)
        .values(totp_secret=sealed_secret, totp_confirmed_at=None, totp_last_step=None)
    )


def totp_accept_step(conn: sa.Connection, principal_id: str, step: int) -> bool:
    """Record that a code for time ``step`` was accepted, if no code for this step or a later
    one was (conditional, so two concurrent sign-ins with one code cannot both win). True if
    this call recorded it."""
    result = conn.execute(
        principals.update()
        .where(
            principals.c.id == principal_id,
            sa.or_(principals.c.totp_last_step.is_(None), principals.c.totp_last_step < step),
        )
        .values(totp_last_step=step)
    )
    return result.rowcount > 0


def totp_confirm(conn: sa.Connection, principal_id: str, now: datetime) -> None:
    """Put the stored TOTP secret in force (its first correct code was accepted)."""
    conn.execute(principals.update().where(principals.c.id == principal_id).values(totp_confirmed_at=now))


def totp_clear(conn: sa.Connection, principal_id: str) -> bool:
    """Remove the principal's TOTP secret. True if there was one."""
    result = conn.execute(
        principals.update()
        .where(principals.c.id == principal_id, principals.c.totp_secret.is_not(None))
        .values(totp_secret=None, totp_confirmed_at=None, totp_last_step=None)
    )
    return result.rowcount > 0
