"""The embedded identity directory: users (passwords) and service accounts (client secrets).

Passwords and client secrets are stored as argon2id hashes. Verifying against an unknown
name still runs one argon2 verification (against a dummy hash), so response time does not tell
whether a name exists. The directory is one identity source among several to come (upstream
OIDC, CI tokens: ROADMAP 3); ``principals.source`` says where a principal comes from.
"""

from __future__ import annotations

import functools
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.errors import Conflict, InvalidRequest, NotFound
from access.broker.events.bus import GrantEnded, PrincipalLocked
from access.broker.runtime import Broker
from access.broker.store.tables import principals
from access.shared.names import NAME_RULE, is_principal_name

__all__ = [
    "SERVICE_ACCOUNT",
    "USER",
    "PrincipalRecord",
    "check_client_secret",
    "check_password",
    "create_service_account",
    "create_user",
    "disable_principal",
    "get_principal",
    "list_principals",
]

USER = "user"
SERVICE_ACCOUNT = "service_account"
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
MAX_GROUPS = 64
_SECRET_MAX_LENGTH = 256

_hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory parameters


@functools.cache
def _dummy_hash() -> str:
    return _hasher.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class PrincipalRecord:
    id: str
    name: str
    kind: str
    groups: tuple[str, ...]
    disabled: bool
    created_at: datetime
    client_id: str | None = None

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
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "groups": list(self.groups),
            "disabled": self.disabled,
            "created_at": self.created_at.isoformat(),
            "client_id": self.client_id,
        }


_COLUMNS = (
    principals.c.id,
    principals.c.name,
    principals.c.kind,
    principals.c.groups,
    principals.c.disabled,
    principals.c.created_at,
    principals.c.client_id,
)


def _check_name(name: str, what: str) -> None:
    if not is_principal_name(name):
        raise InvalidRequest(
            f"invalid {what} name {name[:80]!r}", hint=f"use {NAME_RULE} ('.' and '_' allowed)"
        )


def _clean_groups(groups: Iterable[str]) -> list[str]:
    cleaned = sorted(set(groups))
    for group in cleaned:
        _check_name(group, "group")
    if len(cleaned) > MAX_GROUPS:
        raise InvalidRequest(f"at most {MAX_GROUPS} groups per principal")
    return cleaned


def _insert(broker: Broker, values: dict[str, object], *, actor: str, action: Action) -> None:
    name = str(values["name"])
    with broker.transaction() as conn:
        exists = conn.execute(sa.select(principals.c.id).where(principals.c.name == name)).first()
        if exists is not None:
            raise Conflict(f"a user or service account named {name!r} already exists")
        conn.execute(principals.insert().values(**values))
        details = {"kind": values["kind"], "groups": values["groups"]}
        if values.get("client_id"):
            details["client_id"] = values["client_id"]
        ledger.append(
            conn, broker.clock, actor=actor, action=action, target=f"principal:{name}", details=details
        )


def create_user(
    broker: Broker, name: str, groups: Iterable[str], password: str, *, actor: str = "admin"
) -> str:
    """Add a user with an argon2id-hashed password. Returns the new principal id.

    Raises:
        InvalidRequest: bad name or group, or a password shorter than 8 characters.
        Conflict: the name is taken.
        Unavailable: the database could not be reached.
    """
    _check_name(name, "user")
    cleaned = _clean_groups(groups)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidRequest(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidRequest(f"the password must have at most {MAX_PASSWORD_LENGTH} characters")
    principal_id = str(uuid.uuid4())
    values: dict[str, object] = {
        "id": principal_id,
        "name": name,
        "kind": USER,
        "groups": cleaned,
        "password_hash": _hasher.hash(password),
        "created_at": broker.clock.now(),
    }
    _insert(broker, values, actor=actor, action=Action.USER_CREATE)
    return principal_id


def create_service_account(
    broker: Broker, name: str, groups: Iterable[str], *, actor: str = "admin"
) -> tuple[str, str]:
    """Add a service account. Returns ``(client_id, client_secret)``; the secret is not stored.

    Raises:
        InvalidRequest: bad name or group.
        Conflict: the name is taken.
        Unavailable: the database could not be reached.
    """
    _check_name(name, "service account")
    cleaned = _clean_groups(groups)
    # The client id must fit 64 characters: "sa-" + up to 48 of the name + "-" + 12 random.
    client_id = f"sa-{name[:48]}-{secrets.token_hex(6)}"
    secret = secrets.token_urlsafe(32)
    values: dict[str, object] = {
        "id": str(uuid.uuid4()),
        "name": name,
        "kind": SERVICE_ACCOUNT,
        "groups": cleaned,
        "client_id": client_id,
        "secret_hash": _hasher.hash(secret),
        "created_at": broker.clock.now(),
    }
    _insert(broker, values, actor=actor, action=Action.SERVICE_ACCOUNT_CREATE)
    return client_id, secret


def list_principals(broker: Broker) -> list[PrincipalRecord]:
    """All users and service accounts, by name.

    Raises:
        Unavailable: the database could not be reached.
    """
    with broker.transaction() as conn:
        rows = conn.execute(sa.select(*_COLUMNS).order_by(principals.c.name)).all()
    return [PrincipalRecord.from_row(row) for row in rows]


def get_principal(conn: sa.Connection, principal_id: str) -> PrincipalRecord | None:
    """The principal with this id, or None."""
    row = conn.execute(sa.select(*_COLUMNS).where(principals.c.id == principal_id)).first()
    return None if row is None else PrincipalRecord.from_row(row)


def _verify(stored_hash: str | None, secret: str) -> bool:
    try:
        return _hasher.verify(stored_hash or _dummy_hash(), secret) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def check_password(broker: Broker, name: str, password: str) -> tuple[PrincipalRecord | None, str]:
    """Check a user's password. Returns ``(user, "ok")`` or ``(None, reason)``.

    ``reason`` is one of ``unknown_user``, ``wrong_credentials``, ``disabled`` (for the audit
    entry; people are told only "wrong username or password"). One argon2 verification runs
    whatever the outcome, so timing does not reveal whether the user exists. The caller writes
    the audit entry and the rate-limit event.

    Raises:
        Unavailable: the database could not be reached.
    """
    row = None
    if is_principal_name(name) and len(password) <= MAX_PASSWORD_LENGTH:
        with broker.transaction() as conn:
            row = conn.execute(
                sa.select(*_COLUMNS, principals.c.password_hash).where(
                    principals.c.name == name, principals.c.kind == USER
                )
            ).first()
    stored = None if row is None else row.password_hash
    ok = _verify(stored, password[:MAX_PASSWORD_LENGTH])
    if row is None:
        return None, "unknown_user"
    if not ok:
        return None, "wrong_credentials"
    user = PrincipalRecord.from_row(row)
    if user.disabled:
        return None, "disabled"
    if stored is not None and _hasher.check_needs_rehash(stored):
        with broker.transaction() as conn:
            conn.execute(
                principals.update()
                .where(principals.c.id == user.id)
                .values(password_hash=_hasher.hash(password))
            )
    return user, "ok"


def check_client_secret(broker: Broker, client_id: str, secret: str) -> tuple[PrincipalRecord | None, str]:
    """Check a service account's client secret. Returns ``(account, "ok")`` or ``(None, reason)``.

    ``reason`` is ``unknown_client``, ``wrong_credentials`` or ``disabled``. Constant-time as for
    ``check_password``.

    Raises:
        Unavailable: the database could not be reached.
    """
    row = None
    if 0 < len(client_id) <= 64 and len(secret) <= _SECRET_MAX_LENGTH:
        with broker.transaction() as conn:
            row = conn.execute(
                sa.select(*_COLUMNS, principals.c.secret_hash).where(
                    principals.c.client_id == client_id, principals.c.kind == SERVICE_ACCOUNT
                )
            ).first()
    ok = _verify(None if row is None else row.secret_hash, secret[:_SECRET_MAX_LENGTH])
    if row is None:
        return None, "unknown_client"
    if not ok:
        return None, "wrong_credentials"
    account = PrincipalRecord.from_row(row)
    if account.disabled:
        return None, "disabled"
    return account, "ok"


def disable_principal(broker: Broker, name: str, actor: str) -> list[str]:
    """Disable a user or service account: revoke its sessions and end its active grants.

    Everything happens in one transaction with its audit entries; after commit the broker
    publishes ``PrincipalLocked`` and one ``GrantEnded(grant_id, "locked")`` per ended grant,
    so live tunnels close. Returns the ids of the ended grants.

    Raises:
        NotFound: no principal has this name.
        Conflict: it is already disabled.
        Unavailable: the database could not be reached; nothing changed.
    """
    # Imported here: grants imports the identity layer's neighbours, and is written separately.
    from access.broker.auth.sessions import revoke_principal_sessions
    from access.broker.grants import end_grants_for_principal

    with broker.transaction() as conn:
        row = conn.execute(sa.select(*_COLUMNS).where(principals.c.name == name)).first()
        if row is None:
            raise NotFound(
                f"no user or service account named {name[:80]!r}", hint="see `access-broker users list`"
            )
        principal = PrincipalRecord.from_row(row)
        if principal.disabled:
            raise Conflict(f"{name!r} is already disabled")
        now = broker.clock.now()
        conn.execute(
            principals.update().where(principals.c.id == principal.id).values(disabled=True, disabled_at=now)
        )
        revoked = revoke_principal_sessions(conn, broker.clock, principal.id, "principal_disabled")
        ended = end_grants_for_principal(conn, broker, principal.id, "locked", actor)
        action = Action.USER_DISABLE if principal.kind == USER else Action.SERVICE_ACCOUNT_DISABLE
        ledger.append(
            conn,
            broker.clock,
            actor=actor,
            action=action,
            target=f"principal:{principal.name}",
            details={"sessions_revoked": revoked, "grants_ended": list(ended)},
        )
    broker.events.publish(PrincipalLocked(principal.id))
    for grant_id in ended:
        broker.events.publish(GrantEnded(grant_id, "locked"))
    return list(ended)
