"""OAuth 2.0 device authorization grant (RFC 8628): codes, polling, sign-in and consent.

Life of a device authorization::

    pending --(person signs in and approves)--> approved --(CLI exchanges the code)--> consumed
       \\--(person denies)--> denied                      (a second exchange: invalid_grant)

The device code (the CLI's secret) is 256 random bits stored as SHA-256. The user code is
8 letters from a 20-letter alphabet without vowels (no words, no 0/O or 1/I confusion),
about 2^34.6 possibilities, and guessing is rate-limited per client IP. Signing in on the page
yields a one-time consent token (stored hashed) that the Approve/Deny buttons carry, so
the decision is tied to the person who signed in.
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from access.broker.audit import ledger
from access.broker.auth import ratelimit
from access.broker.auth.identity import check_password, get_principal
from access.broker.auth.sessions import TokenSet, hash_token, start_session
from access.broker.auth.tokens import OAuthError
from access.broker.errors import InvalidRequest, RateLimited, Unauthenticated
from access.broker.runtime import Broker
from access.broker.store.db import device_codes, principals
from access.shared.names import is_principal_name
from access.shared.oauth import DEVICE_GRANT_TYPE

__all__ = [
    "CLIENTS",
    "DEVICE_GRANT_TYPE",
    "USER_CODE_ALPHABET",
    "Decision",
    "DeviceAuthorization",
    "DeviceRequest",
    "SignIn",
    "decide",
    "exchange",
    "format_user_code",
    "normalise_user_code",
    "rate_limited",
    "sign_in",
    "start",
]

USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
USER_CODE_LENGTH = 8
SLOW_DOWN_STEP = 5  # seconds added to the interval on slow_down (RFC 8628 section 3.5)
# Public clients allowed to start a device authorization, with the name shown to people.
CLIENTS = {"access-cli": "access CLI"}

_CLIENT_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$")
_CODE_NOISE = re.compile(r"[\s-]+")
_MAX_DEVICE_CODE_LENGTH = 256
_KEEP_EXPIRED = timedelta(days=1)


def normalise_user_code(text: str) -> str | None:
    """``"bcdf-ghjk"`` -> ``"BCDFGHJK"``; None when it cannot be a user code."""
    code = _CODE_NOISE.sub("", text[:64]).upper()
    if len(code) != USER_CODE_LENGTH or any(ch not in USER_CODE_ALPHABET for ch in code):
        return None
    return code


def format_user_code(code: str) -> str:
    """``"BCDFGHJK"`` -> ``"BCDF-GHJK"``, as shown to people."""
    half = len(code) // 2
    return f"{code[:half]}-{code[half:]}"


@dataclass(frozen=True)
class DeviceAuthorization:
    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    expires_in: int
    interval: int

    def to_response(self) -> dict[str, object]:
        return {
            "device_code": self.device_code,
            "user_code": self.user_code,
            "verification_uri": self.verification_uri,
            "verification_uri_complete": self.verification_uri_complete,
            "expires_in": self.expires_in,
            "interval": self.interval,
        }


@dataclass(frozen=True)
class DeviceRequest:
    """What a person is asked to authorize, as shown on the confirmation page."""

    id: str
    user_code: str
    client_name: str
    client_host: str | None
    client_ip: str | None
    created_at: datetime
    expires_at: datetime

    @classmethod
    def from_row(cls, row: sa.Row[*tuple[Any, ...]]) -> DeviceRequest:
        m = row._mapping
        return cls(
            id=str(m["id"]),
            user_code=format_user_code(str(m["user_code"])),
            client_name=CLIENTS.get(str(m["client_id"]), str(m["client_id"])),
            client_host=m["client_host"],
            client_ip=m["client_ip"],
            created_at=m["created_at"],
            expires_at=m["expires_at"],
        )


@dataclass(frozen=True)
class SignIn:
    request: DeviceRequest
    user_name: str
    consent_token: str


def start(broker: Broker, client_id: str, client_host: str | None, client_ip: str) -> DeviceAuthorization:
    """Begin a device authorization for a CLI on ``client_host`` (as it says) at ``client_ip``.

    Raises:
        OAuthError: ``invalid_client`` for an unknown client id; ``invalid_request`` for a
            malformed ``client_host``; ``temporarily_unavailable`` (429) when this IP started
            too many device logins lately.
        Unavailable: the database could not be reached.
    """
    if client_id not in CLIENTS:
        raise OAuthError("invalid_client", f"unknown client {client_id[:64]!r}")
    if client_host is not None and not _CLIENT_HOST.match(client_host):
        raise OAuthError("invalid_request", "client_host must be a host name of at most 255 characters")
    device_code = secrets.token_urlsafe(32)
    settings = broker.settings
    now = broker.clock.now()
    start_key = ratelimit.DEVICE_STARTS.key(client_ip)
    with broker.transaction() as conn:
        try:
            ratelimit.check(conn, broker.clock, ratelimit.DEVICE_STARTS, start_key)
        except RateLimited as exc:
            raise OAuthError("temporarily_unavailable", f"{exc.message}: {exc.hint}", status=429) from exc
        ratelimit.hit(conn, broker.clock, ratelimit.DEVICE_STARTS, start_key)
        ratelimit.prune(conn, broker.clock)
        conn.execute(device_codes.delete().where(device_codes.c.expires_at <= now - _KEEP_EXPIRED))
        user_code = _unused_user_code(conn)
        device_id = str(uuid.uuid4())
        conn.execute(
            device_codes.insert().values(
                id=device_id,
                device_code_hash=hash_token(device_code),
                user_code=user_code,
                client_id=client_id,
                client_host=client_host,
                client_ip=client_ip[:64],
                created_at=now,
                expires_at=now + timedelta(seconds=settings.device_code_ttl),
                interval=settings.device_poll_interval,
                status="pending",
            )
        )
        ledger.append(
            conn,
            broker.clock,
            actor="anonymous",
            action="device.request",
            target=f"device:{device_id}",
            details={"client_id": client_id, "client_host": client_host, "ip": client_ip[:64]},
        )
    shown = format_user_code(user_code)
    uri = f"{broker.base_url}/device"
    return DeviceAuthorization(
        device_code=device_code,
        user_code=shown,
        verification_uri=uri,
        verification_uri_complete=f"{uri}?user_code={shown}",
        expires_in=settings.device_code_ttl,
        interval=settings.device_poll_interval,
    )


def _unused_user_code(conn: sa.Connection) -> str:
    for _ in range(10):
        code = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))
        taken = conn.execute(sa.select(device_codes.c.id).where(device_codes.c.user_code == code)).first()
        if taken is None:
            return code
    raise RuntimeError("could not find an unused user code")  # 20^8 codes: practically unreachable


def exchange(broker: Broker, device_code: str, client_id: str) -> TokenSet:
    """Poll with a device code (RFC 8628 section 3.4); on approval, open a session once.

    Raises:
        OAuthError: ``authorization_pending``, ``slow_down`` (the interval grows by 5 seconds),
            ``access_denied``, ``expired_token``, or ``invalid_grant`` for an unknown code,
            another client's code, or a code already exchanged (single use).
        Unavailable: the database could not be reached.
    """
    if not device_code or len(device_code) > _MAX_DEVICE_CODE_LENGTH:
        raise OAuthError("invalid_grant", "unknown device code")
    error: OAuthError | None = None
    tokens: TokenSet | None = None
    with broker.transaction() as conn:
        row = conn.execute(
            sa.select(device_codes).where(device_codes.c.device_code_hash == hash_token(device_code))
        ).first()
        now = broker.clock.now()
        if row is None or row.client_id != client_id:
            raise OAuthError("invalid_grant", "unknown device code")
        if row.status == "consumed":
            raise OAuthError("invalid_grant", "this device code was already used: run `access login` again")
        if row.expires_at <= now:
            raise OAuthError("expired_token", "the device code expired before it was approved")
        this_row = device_codes.c.id == row.id
        if row.status == "denied":
            raise OAuthError("access_denied", "the sign-in request was denied in the browser")
        if row.status == "pending":
            if row.last_poll_at is not None and now - row.last_poll_at < timedelta(seconds=row.interval):
                interval = row.interval + SLOW_DOWN_STEP
                conn.execute(
                    device_codes.update().where(this_row).values(interval=interval, last_poll_at=now)
                )
                error = OAuthError("slow_down", f"polling too fast: wait {interval} seconds between polls")
            else:
                conn.execute(device_codes.update().where(this_row).values(last_poll_at=now))
                error = OAuthError("authorization_pending", "waiting for approval in the browser")
        else:  # approved: consume it exactly once, even against a concurrent poll
            consumed = conn.execute(
                device_codes.update()
                .where(this_row, device_codes.c.status == "approved")
                .values(status="consumed", last_poll_at=now)
            ).rowcount
            principal = get_principal(conn, row.principal_id) if row.principal_id else None
            if consumed == 0 or principal is None:
                raise OAuthError(
                    "invalid_grant", "this device code was already used: run `access login` again"
                )
            if principal.disabled:
                raise OAuthError("access_denied", "the account that approved this request is disabled")
            tokens = start_session(conn, broker, principal, client_id)
            ledger.append(
                conn,
                broker.clock,
                actor=principal.name,
                action="token.issue",
                target=f"session:{tokens.session_id}",
                details={
                    "method": "device_code",
                    "device_id": row.id,
                    "session_id": tokens.session_id,
                    "client_id": client_id,
                    "client_host": row.client_host,
                },
            )
    # Polling state commits before we answer "pending" or "slow_down".
    if error is not None:
        raise error
    assert tokens is not None
    return tokens


def _pending_row(conn: sa.Connection, now: datetime, **where: str) -> sa.Row[*tuple[Any, ...]] | None:
    query = sa.select(device_codes).where(device_codes.c.status == "pending", device_codes.c.expires_at > now)
    for column, value in where.items():
        query = query.where(device_codes.c[column] == value)
    return conn.execute(query).first()


_BAD_CODE = (
    "That code is not valid or has expired. Check the code in your terminal, or run `access login` again."
)


def sign_in(broker: Broker, user_code: str, username: str, password: str, client_ip: str) -> SignIn:
    """Check a user code and a person's password on the verification page.

    On success the device request gets a one-time consent token (returned; stored hashed) and
    ``login.success`` is audited; nothing is approved yet. A wrong code counts against the
    client IP, a wrong password against (username, IP), and is audited as ``login.failure``.

    Raises:
        RateLimited: too many wrong codes from this IP, or wrong passwords for this name here.
        InvalidRequest: the user code is malformed, unknown, expired or already decided.
        Unauthenticated: wrong username or password, or a disabled user.
        Unavailable: the database could not be reached.
    """
    username = username.strip()
    code = normalise_user_code(user_code)
    code_key = ratelimit.USER_CODE_GUESSES.key(client_ip)
    password_key = ratelimit.PASSWORD_FAILURES.key(username.lower(), client_ip)
    with broker.transaction() as conn:
        ratelimit.check(conn, broker.clock, ratelimit.USER_CODE_GUESSES, code_key)
        ratelimit.check(conn, broker.clock, ratelimit.PASSWORD_FAILURES, password_key)
        row = None if code is None else _pending_row(conn, broker.clock.now(), user_code=code)
        if row is None:
            ratelimit.hit(conn, broker.clock, ratelimit.USER_CODE_GUESSES, code_key)
    if row is None:
        raise InvalidRequest(_BAD_CODE)
    # The slow argon2 check runs outside any transaction, so it holds no database lock.
    user, reason = check_password(broker, username, password)
    consent = secrets.token_urlsafe(32)
    with broker.transaction() as conn:
        if user is None:
            ratelimit.hit(conn, broker.clock, ratelimit.PASSWORD_FAILURES, password_key)
            valid_name = is_principal_name(username)
            ledger.append(
                conn,
                broker.clock,
                actor=username if valid_name else "anonymous",
                action="login.failure",
                target=f"user:{username if valid_name else '(invalid name)'}",
                details={
                    "method": "device_page",
                    "reason": reason,
                    "ip": client_ip[:64],
                    "device_id": row.id,
                },
            )
        else:
            updated = conn.execute(
                device_codes.update()
                .where(
                    device_codes.c.id == row.id,
                    device_codes.c.status == "pending",
                    device_codes.c.expires_at > broker.clock.now(),
                )
                .values(principal_id=user.id, consent_hash=hash_token(consent))
            ).rowcount
            if updated:
                ledger.append(
                    conn,
                    broker.clock,
                    actor=user.name,
                    action="login.success",
                    target=f"principal:{user.name}",
                    details={"method": "device_page", "ip": client_ip[:64], "device_id": row.id},
                )
    if user is None:
        raise Unauthenticated("Wrong username or password.", hint=None)
    if not updated:
        raise InvalidRequest(_BAD_CODE)
    return SignIn(DeviceRequest.from_row(row), user.name, consent)


@dataclass(frozen=True)
class Decision:
    request: DeviceRequest
    user_name: str
    approved: bool


def decide(broker: Broker, consent_token: str, approve: bool, client_ip: str) -> Decision:
    """Approve or deny the device request that ``consent_token`` was issued for (once).

    Raises:
        InvalidRequest: the consent token is unknown or used, or the request has expired or
            was already decided.
        Unauthenticated: the person who signed in has since been disabled.
        RateLimited: too many bad attempts from this IP.
        Unavailable: the database could not be reached.
    """
    key = ratelimit.USER_CODE_GUESSES.key(client_ip)
    with broker.transaction() as conn:
        ratelimit.check(conn, broker.clock, ratelimit.USER_CODE_GUESSES, key)
        now = broker.clock.now()
        row = None
        name, disabled = "", False
        if 0 < len(consent_token) <= _MAX_DEVICE_CODE_LENGTH:
            row = _pending_row(conn, now, consent_hash=hash_token(consent_token))
        if row is None:
            ratelimit.hit(conn, broker.clock, ratelimit.USER_CODE_GUESSES, key)
        else:
            name, disabled = conn.execute(
                sa.select(principals.c.name, principals.c.disabled).where(principals.c.id == row.principal_id)
            ).one()
            if not disabled:
                conn.execute(
                    device_codes.update()
                    .where(device_codes.c.id == row.id)
                    .values(status="approved" if approve else "denied", decided_at=now, consent_hash=None)
                )
                ledger.append(
                    conn,
                    broker.clock,
                    actor=name,
                    action="device.approve" if approve else "device.deny",
                    target=f"device:{row.id}",
                    details={
                        "client_id": row.client_id,
                        "client_host": row.client_host,
                        "ip": client_ip[:64],
                    },
                )
    if row is None:
        raise InvalidRequest(
            "This confirmation is no longer valid: the request expired or was already answered.",
            hint="run `access login` again in your terminal",
        )
    if disabled:
        raise Unauthenticated("This account is disabled.", hint=None)
    return Decision(DeviceRequest.from_row(row), str(name), approve)


def rate_limited(broker: Broker, client_ip: str) -> bool:
    """True when this IP has used up its user-code guesses (the page then refuses early)."""
    key = ratelimit.USER_CODE_GUESSES.key(client_ip)
    with broker.transaction() as conn:
        try:
            ratelimit.check(conn, broker.clock, ratelimit.USER_CODE_GUESSES, key)
        except RateLimited:
            return True
    return False
