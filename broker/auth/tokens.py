"""Access tokens: short-lived JWTs (RFC 9068) signed with the broker's Ed25519 key.

Verification pins the algorithm to EdDSA, so neither ``alg: none`` nor an HMAC token keyed
with our public key can pass. Time checks (``exp``, ``iat``, ``nbf``) use ``broker.clock``, not
the host's clock inside PyJWT: the broker's time is authoritative and tests inject a FakeClock.
A valid signature is not enough: ``authenticate`` also checks in the database that the
session behind the token is live and the principal is not disabled, so logout, refresh-token
reuse and disabling a user stop access tokens that have not yet expired.

``OAuthError`` lives here too: it is how token issuance says no, in RFC 6749's words.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from access.broker.auth.principal import AuthContext
from access.broker.auth.tokencache import AccessClaims, VerifiedToken
from access.broker.errors import BrokerError, Unauthenticated
from access.broker.keys import key_id
from access.broker.runtime import Broker
from access.broker.store import sessions
from access.broker.store.sessions import SessionView
from access.shared.errors import ErrorCode

__all__ = [
    "AUDIENCE",
    "TOKEN_TYPE",
    "AccessClaims",
    "OAuthError",
    "authenticate",
    "check_session",
    "issue_access_token",
    "live_session",
    "session_context",
    "verify_access_token",
]

AUDIENCE = "access-broker"
TOKEN_TYPE = "at+jwt"  # noqa: S105 - a media type, not a secret
ALGORITHM = "EdDSA"
# Tolerated skew for ``iat`` and ``nbf``; ``exp`` is exact because the broker is the only clock.
_IAT_SKEW = timedelta(seconds=60)
_MAX_TOKEN_LENGTH = 4096
_REQUIRED = ["iss", "aud", "exp", "iat", "jti", "sub", "sid"]


class OAuthError(BrokerError):
    """An RFC 6749 error (``invalid_grant``, ``authorization_pending``...) from an OAuth endpoint.

    Rendered as ``{"error": ..., "error_description": ...}`` with status 400, or 401 for
    ``invalid_client`` (or the ``status`` given, e.g. 429 when rate-limited).
    """

    code = ErrorCode.INVALID_REQUEST

    def __init__(self, error: str, description: str, *, status: int | None = None) -> None:
        super().__init__(description)
        self.error = error
        self._status = status

    @property
    def status(self) -> int:
        if self._status is not None:
            return self._status
        return 401 if self.error == "invalid_client" else 400

    def body(self) -> dict[str, object]:
        return {"error": self.error, "error_description": self.message}


def issue_access_token(
    broker: Broker, *, principal_id: str, session_id: str, client_id: str, ttl: int | None = None
) -> tuple[str, int]:
    """Sign a new access token for a session. Returns ``(token, expires_in_seconds)``.

    ``ttl``: its lifetime in seconds, at most (and by default) ``access_token_ttl``.
    """
    now = broker.clock.now()
    ttl = broker.settings.access_token_ttl if ttl is None else min(ttl, broker.settings.access_token_ttl)
    claims: dict[str, Any] = {
        "iss": broker.base_url,
        "aud": AUDIENCE,
        "sub": principal_id,
        "sid": session_id,
        "client_id": client_id,
        "jti": secrets.token_urlsafe(16),
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(seconds=ttl)).timestamp()),
    }
    headers = {"typ": TOKEN_TYPE, "kid": key_id(broker.token_key)}
    token = jwt.encode(claims, broker.token_key, algorithm=ALGORITHM, headers=headers)
    return token, ttl


def _verifying_key(broker: Broker, kid: object) -> Ed25519PublicKey:
    """The public key of the ring's key named ``kid`` (a rotation keeps older tokens valid until
    they expire). A token naming no key of ours is checked against the current one, and fails."""
    found = broker.token_verifiers.get(kid) if isinstance(kid, str) else None
    return found if found is not None else broker.token_key.public_key()


def verify_access_token(broker: Broker, raw_token: str) -> AccessClaims:
    """Check an access token's signature, type, issuer, audience and times (no database).

    The outcome of the signature, type, issuer and audience checks of a valid token is kept by
    its SHA-256 (``broker.verified_tokens``, ``auth.tokencache``): they cannot change. The times
    are checked on every call.

    Raises:
        Unauthenticated: the token is malformed, forged, of the wrong type, for another
            issuer or audience, expired, or issued (or valid only from) in the future.
    """
    if not raw_token or len(raw_token) > _MAX_TOKEN_LENGTH:
        raise Unauthenticated("the access token is malformed")
    digest = hashlib.sha256(raw_token.encode()).digest()
    verified = broker.verified_tokens.get(digest, key=broker.token_key, issuer=broker.base_url)
    now = broker.clock.now()
    if verified is None:
        verified = _verify_signed(broker, raw_token)
        _check_times(verified, now)
        broker.verified_tokens.put(digest, verified, now)
    else:
        _check_times(verified, now)
    return verified.claims


def _verify_signed(broker: Broker, raw_token: str) -> VerifiedToken:
    """What the token's signature, type, issuer and audience say (not its times).

    Raises:
        Unauthenticated: malformed, forged, of the wrong type, for another issuer or audience.
    """
    key = broker.token_key  # what the cache ties the entry to: this broker's keys (its ring)
    try:
        header = jwt.get_unverified_header(raw_token)
        claims = jwt.decode(
            raw_token,
            _verifying_key(broker, header.get("kid")),  # the ring's key the token names
            algorithms=[ALGORITHM],  # pinned: never taken from the token
            audience=AUDIENCE,
            issuer=broker.base_url,
            options={
                "require": _REQUIRED,
                # Checked below against broker.clock: PyJWT would read the host clock.
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.InvalidAudienceError as exc:
        raise Unauthenticated("the access token is for another audience") from exc
    except jwt.InvalidIssuerError as exc:
        raise Unauthenticated("the access token was issued by another broker") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise Unauthenticated(f"the access token lacks the {exc.claim!r} claim") from exc
    except jwt.PyJWTError as exc:
        raise Unauthenticated("the access token is invalid or forged") from exc
    # RFC 9068: the type is in the header, so an ID token or other JWT can't pass as one of ours.
    if str(header.get("typ", "")).lower() not in (TOKEN_TYPE, "application/" + TOKEN_TYPE):
        raise Unauthenticated("the token is not an access token")
    try:
        expires_at = datetime.fromtimestamp(int(claims["exp"]), tz=UTC)
        issued_at = datetime.fromtimestamp(int(claims["iat"]), tz=UTC)
        # We never set ``nbf``, but a token that carries one is held to it (RFC 7519 4.1.5).
        not_before = None if "nbf" not in claims else datetime.fromtimestamp(int(claims["nbf"]), tz=UTC)
        subject, session_id, token_id = str(claims["sub"]), str(claims["sid"]), str(claims["jti"])
    except (TypeError, ValueError, OverflowError, OSError) as exc:
        raise Unauthenticated("the access token is malformed") from exc
    access = AccessClaims(
        subject=subject,
        session_id=session_id,
        token_id=token_id,
        client_id=str(claims.get("client_id", "")),
        issued_at=issued_at,
        expires_at=expires_at,
    )
    return VerifiedToken(key=key, issuer=broker.base_url, claims=access, not_before=not_before)


def _check_times(verified: VerifiedToken, now: datetime) -> None:
    """Raises: Unauthenticated: expired, issued in the future, or not valid yet at ``now``."""
    if verified.claims.expires_at <= now:
        raise Unauthenticated("the access token has expired", hint="run `access login` if refreshing fails")
    if verified.claims.issued_at > now + _IAT_SKEW:
        raise Unauthenticated("the access token was issued in the future")
    if verified.not_before is not None and verified.not_before > now + _IAT_SKEW:
        raise Unauthenticated("the access token is not valid yet")


def authenticate(broker: Broker, raw_token: str) -> AuthContext:
    """Verify an access token and the live session and principal behind it.

    Raises:
        Unauthenticated: the token is invalid (see ``verify_access_token``), its session was
            revoked or has expired, or its principal is unknown or disabled.
        Unavailable: the database could not be reached.
    """
    return session_context(broker, verify_access_token(broker, raw_token))


def session_context(broker: Broker, claims: AccessClaims, conn: sa.Connection | None = None) -> AuthContext:
    """The caller of a verified token (``verify_access_token``): its live session and principal.

    ``conn``: look inside the caller's transaction rather than one of its own (a route whose
    service runs one transaction anyway saves a checkout, a BEGIN and a COMMIT).

    Raises:
        Unauthenticated: its session was revoked or has expired, or its principal is unknown or
            disabled.
        Unavailable: the database could not be reached.
    """
    return _context(claims, live_session(broker, claims.session_id, claims.subject, conn))


def _context(claims: AccessClaims, row: SessionView) -> AuthContext:
    return AuthContext(
        principal_id=claims.subject,
        name=row.name,
        kind=row.kind,
        groups=row.groups,
        session_id=claims.session_id,
        token_id=claims.token_id,
        expires_at=claims.expires_at,
        session_expires_at=row.expires_at,
        mfa_at=row.mfa_at,
    )


def check_session(broker: Broker, ctx: AuthContext, conn: sa.Connection | None = None) -> None:
    """Check that the sign-in session behind ``ctx`` is still live (not its token's expiry).

    A tunnel authenticates once, with a token, and then opens channels for as long as its grant
    lasts: each channel asks again whether the person is still signed in and enabled.
    ``conn``: check inside the caller's transaction rather than one of its own.

    Raises:
        Unauthenticated: the session was revoked or has expired, or the principal is disabled.
        Unavailable: the database could not be reached.
    """
    live_session(broker, ctx.session_id, ctx.principal_id, conn)


def live_session(
    broker: Broker, session_id: str, principal_id: str | None, conn: sa.Connection | None = None
) -> SessionView:
    """The session ``session_id`` and its principal, if it is live (not revoked, not expired,
    principal enabled). ``principal_id``: the principal it must belong to (None: any).
    ``conn``: look inside the caller's transaction rather than one of its own.

    Raises:
        Unauthenticated: no such session (or another principal's), revoked, expired, or disabled.
        Unavailable: the database could not be reached.
    """
    if conn is None:
        with broker.transaction() as own:
            row = sessions.by_id(own, session_id)
    else:
        row = sessions.by_id(conn, session_id)
    return _live(broker, row, principal_id)


def contexts_of(
    broker: Broker, claims: list[AccessClaims], conn: sa.Connection
) -> list[AuthContext | Unauthenticated]:
    """``session_context`` for several verified tokens, their sessions read in one statement
    in the caller's transaction: for each, its caller or why it is refused.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database failed; the caller's transaction must fail.
    """
    found = sessions.by_ids(conn, [one.session_id for one in claims])
    answers: list[AuthContext | Unauthenticated] = []
    for one in claims:
        try:
            answers.append(_context(one, _live(broker, found.get(one.session_id), one.subject)))
        except Unauthenticated as exc:
            answers.append(exc)
    return answers


def _live(broker: Broker, row: SessionView | None, principal_id: str | None) -> SessionView:
    """``row`` if it is a live session of ``principal_id`` (None: any); see ``live_session``."""
    now = broker.clock.now()
    if row is None or (principal_id is not None and row.principal_id != principal_id):
        raise Unauthenticated("the session behind this token does not exist")
    if row.revoked_at is not None:
        raise Unauthenticated("this session was signed out or revoked")
    if row.expires_at <= now:
        raise Unauthenticated("this session has expired")
    if row.disabled:
        raise Unauthenticated("this account is disabled", hint="ask an administrator")
    return row
