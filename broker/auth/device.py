"""OAuth 2.0 device authorization grant (RFC 8628): codes, polling, sign-in and consent.

Life of a device authorization (the states and their transitions: ``device_flow``)::

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

import sqlalchemy as sa

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.auth import ratelimit
from access.broker.auth.device_flow import Event, Poll, next_step, transition
from access.broker.auth.identity.totp import second_factor
from access.broker.auth.password import (
    MFA_UNAVAILABLE,
    MFA_UNAVAILABLE_HINT,
    WRONG_SIGN_IN,
    PasswordAttempt,
)
from access.broker.auth.sessions import TokenSet, UpstreamLink, hash_token, start_session
from access.broker.auth.tokens import OAuthError
from access.broker.errors import Forbidden, InvalidRequest, RateLimited, Unauthenticated
from access.broker.runtime import Broker
from access.broker.store import device_codes, principals
from access.broker.store.device_codes import DeviceCode
from access.broker.store.principals import PrincipalRecord
from access.shared.oauth import DEVICE_GRANT_TYPE

__all__ = [
    "BAD_CODE",
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
    "open_request",
    "sign_in",
    "signed_in_as",
    "start",
]

USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
USER_CODE_LENGTH = 8
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
    def from_code(cls, code: DeviceCode) -> DeviceRequest:
        return cls(
            id=code.id,
            user_code=format_user_code(code.user_code),
            client_name=CLIENTS.get(code.client_id, code.client_id),
            client_host=code.client_host,
            client_ip=code.client_ip,
            created_at=code.created_at,
            expires_at=code.expires_at,
        )


@dataclass(frozen=True)
class SignIn:
    request: DeviceRequest
    user_name: str
    consent_token: str


def start(
    broker: Broker, client_id: str, client_host: str | None, client_ip: str, mfa_required: bool = False
) -> DeviceAuthorization:
    """Begin a device authorization for a CLI on ``client_host`` (as it says) at ``client_ip``;
    ``mfa_required`` (``access login --mfa``): the sign-in on the page must present a second factor.

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
    start_key = ratelimit.DEVICE_STARTS.key(broker, client_ip)
    with broker.transaction() as conn:
        try:
            ratelimit.check(conn, broker.clock, ratelimit.DEVICE_STARTS, start_key)
        except RateLimited as exc:
            raise OAuthError("temporarily_unavailable", f"{exc.message}: {exc.hint}", status=429) from exc
        ratelimit.hit(conn, broker.clock, ratelimit.DEVICE_STARTS, start_key)
        ratelimit.prune(conn, broker.clock)
        device_codes.delete_expired(conn, now - _KEEP_EXPIRED)
        user_code = _unused_user_code(conn)
        device_id = str(uuid.uuid4())
        device_codes.insert_pending(
            conn,
            device_id=device_id,
            device_code_hash=hash_token(device_code),
            user_code=user_code,
            client_id=client_id,
            client_host=client_host,
            client_ip=client_ip[:64],
            created_at=now,
            expires_at=now + timedelta(seconds=settings.device_code_ttl),
            interval=settings.device_poll_interval,
            mfa_required=mfa_required,
        )
        ledger.append(
            conn,
            broker.clock,
            actor="anonymous",
            action=Action.DEVICE_REQUEST,
            target=f"device:{device_id}",
            details={
                "client_id": client_id,
                "client_host": client_host,
                "ip": client_ip[:64],
                "mfa_required": mfa_required,
            },
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
        if not device_codes.user_code_taken(conn, code):
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
        code = device_codes.by_device_code_hash(conn, hash_token(device_code))
        now = broker.clock.now()
        if code is None or code.client_id != client_id:
            raise OAuthError("invalid_grant", "unknown device code")
        step = next_step(code.status, now, code.expires_at, code.last_poll_at, code.interval)
        if step.outcome is Poll.USED:
            raise OAuthError(Poll.USED.value, _ALREADY_USED)
        if step.outcome is Poll.EXPIRED:
            raise OAuthError(Poll.EXPIRED.value, "the device code expired before it was approved")
        if step.outcome is Poll.DENIED:
            raise OAuthError(Poll.DENIED.value, "the sign-in request was denied in the browser")
        if step.outcome is Poll.SLOW_DOWN:
            device_codes.record_poll(conn, code.id, now, step.interval)
            error = OAuthError(
                Poll.SLOW_DOWN.value, f"polling too fast: wait {step.interval} seconds between polls"
            )
        elif step.outcome is Poll.PENDING:
            device_codes.record_poll(conn, code.id, now)
            error = OAuthError(Poll.PENDING.value, "waiting for approval in the browser")
        else:
            tokens = _consume(conn, broker, code, now)
    # Polling state commits before we answer "pending" or "slow_down".
    if error is not None:
        raise error
    assert tokens is not None
    return tokens


_ALREADY_USED = "this device code was already used: run `access login` again"


def _consume(conn: sa.Connection, broker: Broker, code: DeviceCode, now: datetime) -> TokenSet:
    """Exchange an approved code for a session, exactly once even against a concurrent poll."""
    transition(code.status, Event.EXCHANGE)  # approved -> consumed; mark_consumed does it if it still is
    consumed = device_codes.mark_consumed(conn, code.id, now)
    principal = principals.by_id(conn, code.principal_id) if code.principal_id else None
    if not consumed or principal is None:
        raise OAuthError(Poll.USED.value, _ALREADY_USED)
    if principal.disabled:
        raise OAuthError(Poll.DENIED.value, "the account that approved this request is disabled")
    upstream = None
    if code.upstream_provider is not None:
        upstream = UpstreamLink(code.upstream_provider, code.upstream_refresh, code.session_expires_at)
    tokens = start_session(conn, broker, principal, code.client_id, upstream=upstream, mfa_at=code.mfa_at)
    ledger.append(
        conn,
        broker.clock,
        actor=principal.name,
        action=Action.TOKEN_ISSUE,
        target=f"session:{tokens.session_id}",
        details={
            "method": "device_code",
            "device_id": code.id,
            "session_id": tokens.session_id,
            "client_id": code.client_id,
            "client_host": code.client_host,
            "mfa": code.mfa_at is not None,
        },
    )
    return tokens


BAD_CODE = (
    "That code is not valid or has expired. Check the code in your terminal, or run `access login` again."
)


def sign_in(
    broker: Broker, user_code: str, username: str, password: str, client_ip: str, otp: str = ""
) -> SignIn:
    """Check a user code and a person's password on the verification page.

    On success the device request gets a one-time consent token (returned; stored hashed) and
    ``login.success`` is audited; nothing is approved yet. A wrong code counts against the
    client IP, a wrong password against (username, IP) and against the IP (any name, a higher
    allowance), and is audited as ``login.failure``
    (a username that matches no account as its ``tags.unknown_name``, never as typed).

    A user with TOTP in force needs a current one-time code ``otp`` too (a wrong or missing one
    fails as a wrong password does, reason ``totp``); then the device login records ``mfa_at``,
    which its session keeps. A request made with ``access login --mfa`` (``mfa_required``)
    accepts no sign-in without that second factor.

    Raises:
        RateLimited: too many wrong codes or failed logins from this IP, or wrong passwords for
            this name from this IP.
        InvalidRequest: the user code is malformed, unknown, expired or already decided.
        Unauthenticated: wrong username, password or one-time code, or a disabled user.
        Forbidden: the request asks for a second factor and the user has no TOTP set up.
        Unavailable: the database could not be reached.
    """
    attempt = PasswordAttempt(broker, username, client_ip, "device_page")
    code = normalise_user_code(user_code)
    code_key = ratelimit.USER_CODE_GUESSES.key(broker, client_ip)
    with broker.transaction() as conn:
        ratelimit.check(conn, broker.clock, ratelimit.USER_CODE_GUESSES, code_key)
        attempt.check_limits(conn)
        row = None if code is None else device_codes.open_by_user_code(conn, code, broker.clock.now())
        if row is None:
            ratelimit.hit(conn, broker.clock, ratelimit.USER_CODE_GUESSES, code_key)
    if row is None:
        raise InvalidRequest(BAD_CODE)
    # The slow argon2 check runs outside any transaction, so it holds no database lock.
    user, reason = attempt.verify(password)
    signed: SignIn | None = None
    no_factor = False
    with broker.transaction() as conn:
        user, reason, mfa_at = second_factor(conn, broker, user, reason, otp)
        no_factor = user is not None and row.mfa_required and mfa_at is None
        if user is None:
            attempt.record_failure(conn, reason, device_id=row.id)
        elif no_factor:
            attempt.record_failure(conn, "mfa_unavailable", counted=False, device_id=row.id)
        else:
            signed = signed_in_as(conn, broker, row, user, mfa_at=mfa_at)
            if signed is not None:
                attempt.record_success(conn, user, device_id=row.id, mfa=mfa_at is not None)
    if user is None:
        raise Unauthenticated(WRONG_SIGN_IN, hint=None)
    if no_factor:
        raise Forbidden(MFA_UNAVAILABLE, hint=MFA_UNAVAILABLE_HINT)
    if signed is None:
        raise InvalidRequest(BAD_CODE)
    return signed


def open_request(conn: sa.Connection, broker: Broker, device_id: str) -> DeviceCode:
    """The device request ``device_id`` if it still waits for a sign-in (an upstream sign-in
    comes back to it from the provider).

    Raises:
        InvalidRequest: it expired or was decided meanwhile.
    """
    row = device_codes.open_by_id(conn, device_id, broker.clock.now())
    if row is None:
        raise InvalidRequest(BAD_CODE)
    return row


def signed_in_as(
    conn: sa.Connection,
    broker: Broker,
    row: DeviceCode,
    principal: PrincipalRecord,
    upstream: UpstreamLink | None = None,
    mfa_at: datetime | None = None,
) -> SignIn | None:
    """Inside the caller's transaction: ``principal`` has signed in (by password, or at an
    upstream provider: ``upstream`` is what its session will keep) for the request ``row``,
    which gets a fresh one-time consent token for the Approve/Deny step (``mfa_at``: when that
    sign-in presented a second factor, if it did). None when the request was decided or expired
    meanwhile. The caller audits the sign-in."""
    transition(row.status, Event.SIGN_IN)  # pending stays pending, now with a consent token
    consent = secrets.token_urlsafe(32)
    # Conditional: the code may have been decided or have expired during the password check.
    attached = device_codes.attach_consent(
        conn,
        row.id,
        principal.id,
        hash_token(consent),
        broker.clock.now(),
        mfa_at,
        upstream_provider=None if upstream is None else upstream.provider,
        upstream_refresh=None if upstream is None else upstream.sealed_refresh,
        session_expires_at=None if upstream is None else upstream.expires_at,
    )
    return SignIn(DeviceRequest.from_code(row), principal.name, consent) if attached else None


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
    key = ratelimit.USER_CODE_GUESSES.key(broker, client_ip)
    with broker.transaction() as conn:
        ratelimit.check(conn, broker.clock, ratelimit.USER_CODE_GUESSES, key)
        now = broker.clock.now()
        row = None
        name, disabled = "", False
        if 0 < len(consent_token) <= _MAX_DEVICE_CODE_LENGTH:
            row = device_codes.open_by_consent_hash(conn, hash_token(consent_token), now)
        if row is None:
            ratelimit.hit(conn, broker.clock, ratelimit.USER_CODE_GUESSES, key)
        else:
            # A consent hash is only ever stored with the principal who signed in (attach_consent).
            principal = principals.by_id(conn, row.principal_id) if row.principal_id else None
            if principal is None:
                raise RuntimeError(f"device authorization {row.id} has a consent token but no principal")
            name, disabled = principal.name, principal.disabled
            if not disabled:
                decided = transition(row.status, Event.APPROVE if approve else Event.DENY)
                device_codes.record_decision(conn, row.id, decided, now)
                ledger.append(
                    conn,
                    broker.clock,
                    actor=name,
                    action=Action.DEVICE_APPROVE if approve else Action.DEVICE_DENY,
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
    return Decision(DeviceRequest.from_code(row), name, approve)
