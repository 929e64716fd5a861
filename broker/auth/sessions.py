"""Login sessions and refresh tokens.

A session is one refresh-token family: every use of a refresh token marks it used and issues
its successor. Presenting a refresh token that was already used means two parties hold the
family (one of them stole it), so the whole session is revoked (``refresh_reuse``) and its
access tokens stop working at once (``tokens.authenticate`` checks the session).

Refresh tokens are 256-bit random strings stored as SHA-256: the table alone grants nothing.
Service accounts (client credentials) get a session with refresh tokens too, lasting
``service_account_session_ttl``: a pipeline longer than one access token refreshes as a
person's CLI does, and its open tunnels (tied to the session, not the access token) live on.
RFC 6749 section 4.4.3 advises against a refresh token here and section 6 would have the client
authenticate again to use it; we follow Boundary and Teleport instead (a renewable session the
broker bounds), so the client secret is needed only at login and never has to be kept around.

A session opened by an upstream OIDC sign-in keeps the provider's refresh token (sealed): every
refresh first asks the provider again (``auth.upstream.refresh``, outside any transaction) and
replaces the person's groups with what it says, so a group removed there stops counting at the
next refresh. A provider that refuses ends the session; one that does not answer makes the
refresh fail (``temporarily_unavailable``) without ending it.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.auth import ratelimit, tags
from access.broker.auth.identity import check_client_secret
from access.broker.auth.principal import AuthContext
from access.broker.auth.tokens import OAuthError, issue_access_token, verify_access_token
from access.broker.auth.upstream.refresh import Reread, UpstreamEnded, UpstreamUnavailable, reread
from access.broker.clock import Clock
from access.broker.errors import RateLimited, Unauthenticated
from access.broker.events.bus import SessionEnded
from access.broker.runtime import Broker
from access.broker.store import principals, sessions
from access.broker.store.principals import PrincipalRecord
from access.broker.store.sessions import RefreshToken

__all__ = [
    "TokenSet",
    "UpstreamLink",
    "client_credentials",
    "ended_sessions",
    "hash_token",
    "logout",
    "refresh",
    "revoke_session",
    "revoke_token",
    "start_session",
]

_MAX_REFRESH_LENGTH = 256


@dataclass(frozen=True)
class TokenSet:
    """What the token endpoint returns (``refresh_token`` None: the response carries none)."""

    access_token: str
    expires_in: int
    refresh_token: str | None
    session_id: str

    def to_response(self) -> dict[str, object]:
        body: dict[str, object] = {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        }
        if self.refresh_token is not None:
            body["refresh_token"] = self.refresh_token
        return body


@dataclass(frozen=True)
class UpstreamLink:
    """What a session opened by an upstream sign-in keeps: the provider's name, its refresh token
    sealed (None: it gave none), and the latest the session may end (None: ``session_ttl``)."""

    provider: str
    sealed_refresh: bytes | None
    expires_at: datetime | None


def hash_token(token: str) -> str:
    """SHA-256 hex of a random token (refresh tokens, device codes, consent tokens)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _new_refresh_token(conn: sa.Connection, clock: Clock, session_id: str, expires_at: datetime) -> str:
    token = secrets.token_urlsafe(32)
    sessions.insert_refresh_token(
        conn,
        token_hash=hash_token(token),
        session_id=session_id,
        created_at=clock.now(),
        expires_at=expires_at,
    )
    return token


def start_session(
    conn: sa.Connection,
    broker: Broker,
    principal: PrincipalRecord,
    client_id: str,
    *,
    lifetime: int | None = None,
    refreshable: bool = True,
    upstream: UpstreamLink | None = None,
    mfa_at: datetime | None = None,
) -> TokenSet:
    """Open a session for ``principal`` inside the caller's transaction and issue its tokens.

    ``lifetime``: the session's, in seconds (default ``session_ttl``). ``refreshable`` False:
    no refresh token, and one access token that lasts as long as the session (at most
    ``access_token_ttl``), as for an exchanged CI token. ``upstream``: the session of an
    upstream sign-in (it ends by ``upstream.expires_at`` if that is sooner). ``mfa_at``:
    when that login presented a second factor, if it did. The caller writes the audit entry for
    the login that led here.
    """
    now = broker.clock.now()
    lifetime = broker.settings.session_ttl if lifetime is None else lifetime
    expires_at = now + timedelta(seconds=lifetime)
    if upstream is not None and upstream.expires_at is not None:
        expires_at = min(expires_at, upstream.expires_at)
    session_id = str(uuid.uuid4())
    sessions.insert(
        conn,
        session_id=session_id,
        principal_id=principal.id,
        client_id=client_id,
        created_at=now,
        expires_at=expires_at,
        upstream_provider=None if upstream is None else upstream.provider,
        upstream_refresh=None if upstream is None else upstream.sealed_refresh,
        mfa_at=mfa_at,
    )
    refresh_token = _new_refresh_token(conn, broker.clock, session_id, expires_at) if refreshable else None
    access, expires_in = issue_access_token(
        broker,
        principal_id=principal.id,
        session_id=session_id,
        client_id=client_id,
        ttl=None if refreshable else lifetime,
    )
    return TokenSet(access, expires_in, refresh_token, session_id)


def revoke_session(conn: sa.Connection, clock: Clock, session_id: str, reason: str) -> bool:
    """Revoke one session (no-op if already revoked). True if this call revoked it."""
    return sessions.revoke(conn, session_id, clock.now(), reason)


_invalid_refresh = "the refresh token is invalid, expired or revoked: run `access login`"


def refresh(broker: Broker, raw_token: str, client_id: str | None) -> TokenSet:
    """Rotate a refresh token: mark it used, issue its successor and a new access token.

    For a session of an upstream sign-in the provider is asked first (``_reread_upstream``) and
    the person's groups replaced with what it says now.

    Raises:
        OAuthError: ``invalid_grant`` when the token is unknown, expired, of a revoked session or
            disabled principal, issued to another client, or already used (in which case the
            whole session has been revoked and ``token.refresh_reuse`` audited), or the upstream
            provider refused its refresh token (the session is revoked);
            ``temporarily_unavailable`` (503) when the provider cannot be asked now.
        Unavailable: the database could not be reached.
    """
    if not raw_token or len(raw_token) > _MAX_REFRESH_LENGTH:
        raise OAuthError("invalid_grant", _invalid_refresh)
    upstream = _reread_upstream(broker, hash_token(raw_token), client_id)
    reused = False
    with broker.transaction() as conn:
        row = sessions.refresh_token(conn, hash_token(raw_token))
        now = broker.clock.now()
        if row is None or row.revoked_at is not None or row.disabled:
            raise OAuthError("invalid_grant", _invalid_refresh)
        if client_id is not None and client_id != row.client_id:
            raise OAuthError("invalid_grant", "the refresh token was issued to another client")
        # Mark used only if nobody did yet: two concurrent uses cannot both succeed.
        marked = sessions.mark_refresh_token_used(conn, row.token_hash, now)
        if row.used_at is not None or not marked:
            reused = True
            revoke_session(conn, broker.clock, row.session_id, "refresh_reuse")
            ledger.append(
                conn,
                broker.clock,
                actor=row.name,
                action=Action.TOKEN_REFRESH_REUSE,
                target=f"session:{row.session_id}",
                details={"session_id": row.session_id, "outcome": "session revoked"},
            )
        elif row.expires_at <= now or row.session_expires_at <= now:
            raise OAuthError("invalid_grant", "the session has expired: run `access login`")
        else:
            details: dict[str, object] = {"session_id": row.session_id}
            if upstream is not None and upstream.session_id == row.session_id:
                principals.set_groups(conn, row.principal_id, upstream.groups)
                sessions.set_upstream_refresh(conn, row.session_id, upstream.sealed_refresh)
                details.update(upstream=row.upstream_provider, groups=list(upstream.groups))
            successor = _new_refresh_token(conn, broker.clock, row.session_id, row.session_expires_at)
            access, expires_in = issue_access_token(
                broker, principal_id=row.principal_id, session_id=row.session_id, client_id=row.client_id
            )
            ledger.append(
                conn,
                broker.clock,
                actor=row.name,
                action=Action.TOKEN_REFRESH,
                target=f"session:{row.session_id}",
                details=details,
            )
    if reused:
        # Raised after commit: the revocation and its audit entry must stick.
        broker.events.publish(SessionEnded(row.session_id, "refresh_reuse"))
        raise OAuthError("invalid_grant", "this refresh token was already used; the session is revoked")
    return TokenSet(access, expires_in, successor, row.session_id)


def _reread_upstream(broker: Broker, token_hash: str, client_id: str | None) -> Reread | None:
    """For a live session of an upstream sign-in, what its provider says of the person now; None
    for any other session (or a token ``refresh`` refuses anyway: it says why).

    The provider is asked outside any transaction (its answer may take seconds). A refusal ends
    the session (``token.upstream_refuse``, audited) before the refresh is refused.

    Raises:
        OAuthError: ``invalid_grant`` when the provider refused; ``temporarily_unavailable``
            (503) when it did not answer.
        Unavailable: the database could not be reached.
    """
    with broker.transaction() as conn:
        row = sessions.refresh_token(conn, token_hash)
    now = broker.clock.now()
    if row is None or row.upstream_provider is None or not _refreshable(row, client_id, now):
        return None
    try:
        return reread(broker, row)
    except UpstreamUnavailable as exc:
        raise OAuthError(
            "temporarily_unavailable",
            f"{exc}: your session is kept, try again in a minute",
            status=503,
        ) from None
    except UpstreamEnded as exc:
        with broker.transaction() as conn:
            revoked = revoke_session(conn, broker.clock, row.session_id, "upstream_ended")
            if revoked:
                ledger.append(
                    conn,
                    broker.clock,
                    actor=row.name,
                    action=Action.TOKEN_UPSTREAM_REFUSE,
                    target=f"session:{row.session_id}",
                    details={
                        "session_id": row.session_id,
                        "provider": row.upstream_provider,
                        "reason": exc.reason,
                    },
                )
        if revoked:
            broker.events.publish(SessionEnded(row.session_id, "upstream_ended"))
        raise OAuthError(
            "invalid_grant", f"your sign-in with {exc.display_name} ended: run `access login`"
        ) from None


def _refreshable(row: RefreshToken, client_id: str | None, now: datetime) -> bool:
    return (
        row.revoked_at is None
        and not row.disabled
        and row.used_at is None
        and (client_id is None or client_id == row.client_id)
        and row.expires_at > now
        and row.session_expires_at > now
    )


def client_credentials(broker: Broker, client_id: str, secret: str, client_ip: str) -> TokenSet:
    """Authenticate a service account (OAuth client credentials) and open a refreshable session.

    Raises:
        OAuthError: ``invalid_client`` for an unknown, disabled or wrongly authenticated
            client (audited as ``login.failure``); ``temporarily_unavailable`` (429) after too
            many failures for this client id from this IP, or from this IP at all.
        Unavailable: the database could not be reached.
    """
    client_key = ratelimit.CLIENT_SECRET_FAILURES.key(broker, client_id, client_ip)
    per_address = ratelimit.login_failures_per_address(broker)
    address_key = per_address.key(broker, client_ip)
    with broker.transaction() as conn:
        try:
            ratelimit.check(conn, broker.clock, per_address, address_key)
            ratelimit.check(conn, broker.clock, ratelimit.CLIENT_SECRET_FAILURES, client_key)
        except RateLimited as exc:
            raise OAuthError("temporarily_unavailable", f"{exc.message}: {exc.hint}", status=429) from exc
    account, reason = check_client_secret(broker, client_id, secret)
    with broker.transaction() as conn:
        if account is None:
            ratelimit.hit(conn, broker.clock, ratelimit.CLIENT_SECRET_FAILURES, client_key)
            ratelimit.hit(conn, broker.clock, per_address, address_key)
            # An unknown client id may be a pasted secret: the ledger keeps its keyed tag only.
            known = reason != "unknown_client"
            ledger.append(
                conn,
                broker.clock,
                actor="anonymous",
                action=Action.LOGIN_FAILURE,
                target=f"client:{client_id if known else tags.unknown_name(broker, client_id)}",
                details={"method": "client_credentials", "reason": reason, "ip": client_ip},
            )
            tokens = None
        else:
            tokens = start_session(
                conn, broker, account, client_id, lifetime=broker.settings.service_account_session_ttl
            )
            ledger.append(
                conn,
                broker.clock,
                actor=account.name,
                action=Action.LOGIN_SUCCESS,
                target=f"principal:{account.name}",
                details={"method": "client_credentials", "session_id": tokens.session_id, "ip": client_ip},
            )
    if tokens is None:
        raise OAuthError("invalid_client", "unknown client or wrong client secret")
    return tokens


def logout(broker: Broker, ctx: AuthContext) -> None:
    """Revoke the caller's session, so its refresh and access tokens stop working.

    Raises:
        Unavailable: the database could not be reached.
    """
    with broker.transaction() as conn:
        revoke_session(conn, broker.clock, ctx.session_id, "logout")
        ledger.append(
            conn,
            broker.clock,
            actor=ctx.name,
            action=Action.LOGOUT,
            target=f"session:{ctx.session_id}",
            details={"session_id": ctx.session_id},
        )
    broker.events.publish(SessionEnded(ctx.session_id, "logout"))


def revoke_token(broker: Broker, token: str) -> bool:
    """RFC 7009: revoke the session behind a refresh or access token. True if one was revoked.

    Unknown, malformed or already-revoked tokens are not an error (the RFC says to answer 200).

    Raises:
        Unavailable: the database could not be reached.
    """
    session_id: str | None = None
    if 0 < len(token) <= _MAX_REFRESH_LENGTH:
        with broker.transaction() as conn:
            session_id = sessions.session_of_refresh_token(conn, hash_token(token))
    if session_id is None and token.count(".") == 2:
        try:
            session_id = verify_access_token(broker, token).session_id
        except Unauthenticated:  # an invalid token is simply not revocable
            session_id = None
    if session_id is None:
        return False
    with broker.transaction() as conn:
        name = sessions.principal_name(conn, session_id)
        if name is None or not revoke_session(conn, broker.clock, session_id, "revoked"):
            return False
        ledger.append(
            conn,
            broker.clock,
            actor=name,
            action=Action.TOKEN_REVOKE,
            target=f"session:{session_id}",
            details={"session_id": session_id},
        )
    broker.events.publish(SessionEnded(session_id, "revoked"))
    return True


def ended_sessions(broker: Broker, session_ids: list[str]) -> dict[str, str]:
    """Which of ``session_ids`` were revoked, with the reason (``logout``, ``refresh_reuse``,
    ``revoked``, ``principal_disabled``): one query for all of them. For the tunnel watcher.

    Raises:
        Unavailable: the database could not be reached.
    """
    with broker.transaction() as conn:
        return sessions.revoked_reasons(conn, session_ids)
