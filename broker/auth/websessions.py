"""Browser sign-ins for the approvals inbox: a password, a cookie, and signing out.

Signing in checks the embedded directory's password as the device page does (same allowances
against guessing, ``auth.password``) and opens an ordinary ``sessions`` row (client
``access-inbox``, lifetime ``inbox_session_ttl``). The browser gets a 256-bit random token as a
cookie; the database keeps only its SHA-256 (``web_sessions``), so every replica knows the
sign-in, a leaked table signs nobody in, and revoking the session (signing out, ``users
disable``, ``token.revoke``) ends it everywhere at the next page. Each page checks the session
again (``tokens.live_session``): a disabled user's cookie stops working at once.

The token is good for nothing but the inbox: it is not a refresh token (``/oauth/token`` never
sees it) nor an access token (the API wants a signed JWT).
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from access.broker.auth.identity.totp import second_factor
from access.broker.auth.password import WRONG_SIGN_IN, PasswordAttempt
from access.broker.auth.principal import AuthContext
from access.broker.auth.sessions import hash_token, logout
from access.broker.auth.tokens import live_session
from access.broker.errors import Unauthenticated
from access.broker.runtime import Broker
from access.broker.store import sessions, web_sessions
from access.broker.store.principals import PrincipalRecord

__all__ = ["CLIENT_ID", "WebSignIn", "authenticate", "open_web_session", "sign_in", "sign_out"]

CLIENT_ID = "access-inbox"  # the sessions row's client: what the ledger and `sessions` show
_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32)


@dataclass(frozen=True)
class WebSignIn:
    """A new browser sign-in: ``token`` goes in the cookie, and nowhere else."""

    token: str
    name: str
    session_id: str
    expires_at: datetime


def sign_in(broker: Broker, username: str, password: str, client_ip: str, otp: str = "") -> WebSignIn:
    """Check a person's password and open an inbox session for them.

    Audited ``login.success`` (method ``inbox``, with the session id) or ``login.failure``. A
    user with TOTP in force needs a current one-time code ``otp`` too; the session then records
    ``mfa_at`` (approving where the policy asks for a second factor needs it).

    Raises:
        RateLimited: too many failed logins from this IP, or for this name from this IP.
        Unauthenticated: wrong username, password or one-time code, or a disabled user (one
            message for all).
        Unavailable: the database could not be reached.
    """
    attempt = PasswordAttempt(broker, username, client_ip, "inbox")
    with broker.transaction() as conn:
        attempt.check_limits(conn)
    # The slow argon2 check runs outside any transaction, so it holds no database lock.
    user, reason = attempt.verify(password)
    with broker.transaction() as conn:
        user, reason, mfa_at = second_factor(conn, broker, user, reason, otp)
        if user is None:
            attempt.record_failure(conn, reason)
            signed = None
        else:
            signed = open_web_session(conn, broker, user, mfa_at=mfa_at)
            attempt.record_success(conn, user, session_id=signed.session_id, mfa=mfa_at is not None)
    if signed is None:
        raise Unauthenticated(WRONG_SIGN_IN, hint=None)
    return signed


def open_web_session(
    conn: sa.Connection,
    broker: Broker,
    principal: PrincipalRecord,
    *,
    ends_by: datetime | None = None,
    upstream_provider: str | None = None,
    mfa_at: datetime | None = None,
) -> WebSignIn:
    """Inside the caller's transaction: ``principal`` has signed in (by password, or at an
    upstream provider, ``upstream_provider``); open their inbox session, lasting
    ``inbox_session_ttl`` or until ``ends_by`` if sooner (``mfa_at``: when the sign-in presented a
    second factor, if it did). The caller audits the sign-in."""
    token = secrets.token_urlsafe(32)
    session_id = str(uuid.uuid4())
    now = broker.clock.now()
    expires_at = now + timedelta(seconds=broker.settings.inbox_session_ttl)
    if ends_by is not None:
        expires_at = min(expires_at, ends_by)
    sessions.insert(
        conn,
        session_id=session_id,
        principal_id=principal.id,
        client_id=CLIENT_ID,
        created_at=now,
        expires_at=expires_at,
        upstream_provider=upstream_provider,
        mfa_at=mfa_at,
    )
    web_sessions.insert(conn, token_hash=hash_token(token), session_id=session_id, created_at=now)
    return WebSignIn(token=token, name=principal.name, session_id=session_id, expires_at=expires_at)


def authenticate(broker: Broker, token: str) -> AuthContext:
    """Who the inbox cookie ``token`` signs in, if its session is still live.

    Raises:
        Unauthenticated: a malformed or unknown token, or its session was signed out, revoked
            or has expired, or its user is disabled.
        Unavailable: the database could not be reached.
    """
    if not _TOKEN_SHAPE.match(token):
        raise Unauthenticated("not signed in", hint=None)
    with broker.transaction() as conn:
        session_id = web_sessions.session_of(conn, hash_token(token))
        if session_id is None:
            raise Unauthenticated("not signed in", hint=None)
        row = live_session(broker, session_id, None, conn)
    return AuthContext(
        principal_id=row.principal_id,
        name=row.name,
        kind=row.kind,
        groups=row.groups,
        session_id=session_id,
        token_id="",  # no access token: the cookie stands for the session itself
        expires_at=row.expires_at,
        session_expires_at=row.expires_at,
        mfa_at=row.mfa_at,  # approving where the policy asks for a second factor reads it
    )


def sign_out(broker: Broker, token: str) -> str | None:
    """End the inbox session of ``token`` (audited ``logout``); the name signed out, or None
    when the token signed nobody in any more (nothing to do).

    Raises:
        Unavailable: the database could not be reached.
    """
    try:
        ctx = authenticate(broker, token)
    except Unauthenticated:
        return None
    logout(broker, ctx)
    return ctx.name
