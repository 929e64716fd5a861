"""The embedded identity source: users (passwords) and service accounts (client secrets).

Passwords and client secrets are stored as argon2id hashes. Verifying against an unknown
name still runs one argon2 verification (against a dummy hash), so response time does not tell
whether a name exists.
"""

from __future__ import annotations

import functools
import secrets
import uuid
from collections.abc import Iterable

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.auth.identity.directory import EndedSignIns, end_sign_ins, find_principal
from access.broker.errors import Conflict, InvalidRequest
from access.broker.runtime import Broker
from access.broker.store import principals
from access.broker.store.principals import SERVICE_ACCOUNT, USER, PrincipalRecord
from access.shared.names import NAME_RULE, is_principal_name

__all__ = [
    "MAX_GROUPS",
    "MAX_PASSWORD_LENGTH",
    "MIN_PASSWORD_LENGTH",
    "check_client_secret",
    "check_password",
    "create_service_account",
    "create_user",
    "set_password",
]

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
MAX_GROUPS = 64
_SECRET_MAX_LENGTH = 256


@functools.cache
def _hasher_with(memory_kib: int, time_cost: int, parallelism: int) -> PasswordHasher:
    return PasswordHasher(memory_cost=memory_kib, time_cost=time_cost, parallelism=parallelism)


def _hasher(broker: Broker) -> PasswordHasher:
    """argon2id with the settings' parameters (RFC 9106's by default)."""
    s = broker.settings
    return _hasher_with(s.password_hash_memory_kib, s.password_hash_time_cost, s.password_hash_parallelism)


@functools.cache
def _dummy_hash(hasher: PasswordHasher) -> str:
    """A hash of nothing anyone knows, made with the same parameters as real ones: verifying an
    unknown name costs what verifying a known one does."""
    return hasher.hash(secrets.token_urlsafe(16))


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


def _insert(
    broker: Broker,
    *,
    kind: str,
    name: str,
    groups: list[str],
    actor: str,
    action: Action,
    password_hash: str | None = None,
    client_id: str | None = None,
    secret_hash: str | None = None,
    owner: str | None = None,
) -> str:
    principal_id = str(uuid.uuid4())
    with broker.transaction() as conn:
        if principals.name_taken(conn, name):
            raise Conflict(f"a user or service account named {name!r} already exists")
        if owner is not None:
            _check_owner(conn, owner)
        principals.insert(
            conn,
            principal_id=principal_id,
            name=name,
            kind=kind,
            groups=groups,
            created_at=broker.clock.now(),
            password_hash=password_hash,
            client_id=client_id,
            secret_hash=secret_hash,
            owner=owner,
        )
        details: dict[str, object] = {"kind": kind, "groups": groups}
        if client_id:
            details["client_id"] = client_id
        if owner is not None:
            details["owner"] = owner
        ledger.append(
            conn, broker.clock, actor=actor, action=action, target=f"principal:{name}", details=details
        )
    return principal_id


def _check_password_length(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidRequest(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidRequest(f"the password must have at most {MAX_PASSWORD_LENGTH} characters")


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
    _check_password_length(password)
    return _insert(
        broker,
        kind=USER,
        name=name,
        groups=cleaned,
        actor=actor,
        action=Action.USER_CREATE,
        password_hash=_hasher(broker).hash(password),
    )


def set_password(
    broker: Broker, name: str, password: str, *, actor: str = "admin", keep_sessions: bool = False
) -> EndedSignIns | None:
    """Replace a user's password (argon2id), audited ``user.set_password`` (no secret in it).

    Unless ``keep_sessions``, the user's sign-in sessions end in the same transaction (reason
    ``password_changed``; their live tunnels are cut, device logins not yet exchanged denied):
    a reset after a compromise must sign the attacker out. Grants stay: the user uses them after
    signing in again (``revoke_sessions`` ends them too). Returns what ended (None when kept).
    A disabled user's password may be set: they still cannot sign in until enabled.

    Raises:
        InvalidRequest: a password shorter than 8 characters (or too long), or ``name`` is a
            service account (it has a client secret, not a password).
        NotFound: no user has this name.
        Unavailable: the database could not be reached; nothing changed.
    """
    _check_password_length(password)
    password_hash = _hasher(broker).hash(password)  # slow: before the transaction, holding no lock
    with broker.transaction() as conn:
        try:
            user = find_principal(conn, name, USER)
        except InvalidRequest as exc:
            raise InvalidRequest(
                f"{name!r} is a service account: it has a client secret, not a password",
                hint="there is no secret rotation yet: add a new service account and disable this one",
            ) from exc
        principals.set_password_hash(conn, user.id, password_hash)
        ended = None if keep_sessions else end_sign_ins(conn, broker, user.id, "password_changed")
        details: dict[str, object] = {"sessions_kept": keep_sessions}
        if ended is not None:
            details.update(ended.details())
        ledger.append(
            conn,
            broker.clock,
            actor=actor,
            action=Action.USER_SET_PASSWORD,
            target=f"principal:{user.name}",
            details=details,
        )
    for event in [] if ended is None else ended.events("password_changed"):
        broker.events.publish(event)
    return ended


def _check_owner(conn: sa.Connection, owner: str) -> None:
    found = principals.by_name(conn, owner) if is_principal_name(owner) else None
    if found is None or found.kind != USER:
        raise InvalidRequest(
            f"no user named {owner[:80]!r} to own the service account",
            hint="name an existing user (`access-broker users list`)",
        )


def create_service_account(
    broker: Broker, name: str, groups: Iterable[str], *, actor: str = "admin", owner: str | None = None
) -> tuple[str, str]:
    """Add a service account. Returns ``(client_id, client_secret)``; the secret is not stored.

    ``owner``: the user responsible for it, who may then not approve its requests.

    Raises:
        InvalidRequest: bad name or group, or ``owner`` is not an existing user.
        Conflict: the name is taken.
        Unavailable: the database could not be reached.
    """
    _check_name(name, "service account")
    cleaned = _clean_groups(groups)
    # The client id must fit 64 characters: "sa-" + up to 48 of the name + "-" + 12 random.
    client_id = f"sa-{name[:48]}-{secrets.token_hex(6)}"
    secret = secrets.token_urlsafe(32)
    _insert(
        broker,
        kind=SERVICE_ACCOUNT,
        name=name,
        groups=cleaned,
        actor=actor,
        action=Action.SERVICE_ACCOUNT_CREATE,
        client_id=client_id,
        secret_hash=_hasher(broker).hash(secret),
        owner=owner,
    )
    return client_id, secret


def _verify(broker: Broker, stored_hash: str | None, secret: str) -> bool:
    hasher = _hasher(broker)
    try:
        return hasher.verify(stored_hash or _dummy_hash(hasher), secret) and stored_hash is not None
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
    found = None
    if is_principal_name(name) and len(password) <= MAX_PASSWORD_LENGTH:
        with broker.transaction() as conn:
            found = principals.user_credentials(conn, name)
    stored = None if found is None else found[1]
    ok = _verify(broker, stored, password[:MAX_PASSWORD_LENGTH])
    if found is None:
        return None, "unknown_user"
    if not ok:
        return None, "wrong_credentials"
    user = found[0]
    if user.disabled:
        return None, "disabled"
    if stored is not None and _hasher(broker).check_needs_rehash(stored):
        with broker.transaction() as conn:
            principals.set_password_hash(conn, user.id, _hasher(broker).hash(password))
    return user, "ok"


def check_client_secret(broker: Broker, client_id: str, secret: str) -> tuple[PrincipalRecord | None, str]:
    """Check a service account's client secret. Returns ``(account, "ok")`` or ``(None, reason)``.

    ``reason`` is ``unknown_client``, ``wrong_credentials`` or ``disabled``. Constant-time as for
    ``check_password``.

    Raises:
        Unavailable: the database could not be reached.
    """
    found = None
    if 0 < len(client_id) <= 64 and len(secret) <= _SECRET_MAX_LENGTH:
        with broker.transaction() as conn:
            found = principals.service_account_credentials(conn, client_id)
    ok = _verify(broker, None if found is None else found[1], secret[:_SECRET_MAX_LENGTH])
    if found is None:
        return None, "unknown_client"
    if not ok:
        return None, "wrong_credentials"
    account = found[0]
    if account.disabled:
        return None, "disabled"
    return account, "ok"
