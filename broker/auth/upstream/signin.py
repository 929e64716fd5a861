"""Signing in with an upstream OIDC provider, for a device login or for the approvals inbox.

``start`` remembers the sign-in in ``oidc_logins`` (``state`` and the browser's cookie hashed,
the PKCE verifier sealed, a nonce; ten minutes, single use) and gives the URL to send the
browser to. ``complete`` takes the provider's callback: the state must be one we issued, to
this browser (its cookie), unused and unexpired; then the code is redeemed (with the verifier),
the ID token validated (``idtoken``), the claims mapped (``mapping``), and the person found by
(issuer, subject), or provisioned at their first sign-in (``user.provision``). Their groups
become what the provider says now. Then, as for a password: the device request gets its
consent token (``auth.device.signed_in_as``) or the inbox session opens
(``auth.websessions.open_web_session``).

Refused: a name that an existing user (a password user, or another provider's) already has
(never merged silently: an administrator links them, ``access-broker users link``), a disabled
user, anything wrong with the state, the code or the token. Each refusal is audited
``login.failure`` (method ``oidc``, the provider, the reason, the subject when known; never a
token) and counts against the address; a provider that cannot be reached is a 503 page,
audited too but not counted.
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.auth import device, ratelimit, websessions
from access.broker.auth.device import SignIn
from access.broker.auth.jwks import KeyUnavailable
from access.broker.auth.sessions import UpstreamLink, hash_token
from access.broker.auth.upstream import protocol
from access.broker.auth.upstream.config import OidcProvider
from access.broker.auth.upstream.idtoken import IdToken, InvalidIdToken, validate_id_token
from access.broker.auth.upstream.mapping import Mapped, MappingRefused, map_claims
from access.broker.auth.upstream.refresh import seal_refresh
from access.broker.auth.websessions import WebSignIn
from access.broker.errors import (
    BrokerError,
    Forbidden,
    InvalidRequest,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from access.broker.identities.sealing import Sealer
from access.broker.runtime import Broker
from access.broker.store import device_codes, oidc_logins, principals
from access.broker.store.principals import USER, PrincipalRecord

__all__ = ["DEVICE", "INBOX", "LOGIN_TTL", "Callback", "Completed", "Started", "complete", "start"]

DEVICE = "device"
INBOX = "inbox"
LOGIN_TTL = timedelta(minutes=10)
_VERIFIER_INFO = b"access upstream: pkce verifiers v1"
_KEEP_EXPIRED = timedelta(days=1)
_MAX_PARAM = 2048


@dataclass(frozen=True)
class Started:
    """Where to send the browser, and the cookie that binds the callback to it."""

    url: str
    browser_token: str
    provider: OidcProvider


@dataclass(frozen=True)
class Callback:
    """What the provider's redirect carried (RFC 6749 4.1.2), as the query said it."""

    state: str
    code: str = ""
    error: str = ""
    error_description: str = ""


@dataclass(frozen=True)
class Completed:
    """A finished upstream sign-in: a device request to confirm, or an inbox session.

    ``mfa`` and ``auth_time`` are what the ID token said of the authentication (a second factor
    among ``mfa_amr``/``mfa_acr``; when it happened), for an MFA policy to use.
    """

    provider: OidcProvider
    name: str
    groups: tuple[str, ...]
    purpose: str
    device: SignIn | None
    web: WebSignIn | None
    mfa: bool
    auth_time: datetime | None


class _Refused(Exception):
    def __init__(self, reason: str, error: BrokerError, subject: str | None = None) -> None:
        super().__init__(error.message)
        self.reason = reason
        self.error = error
        self.subject = subject


def _provider(broker: Broker, name: str) -> OidcProvider:
    provider = broker.settings.oidc_provider(name[:64])
    if provider is None:
        raise NotFound(
            f"no sign-in provider named {name[:40]!r}", hint="go back and choose one of the buttons"
        )
    return provider


def _unavailable(provider: OidcProvider) -> Unavailable:
    return Unavailable(
        f"Signing in with {provider.display_name} is unavailable: the provider cannot be reached",
        hint="try again in a few minutes, or sign in with your password if you have one",
    )


def start(broker: Broker, provider_name: str, purpose: str, user_code: str, client_ip: str) -> Started:
    """Begin signing in with ``provider_name`` for a device request (``user_code``) or the inbox.

    Raises:
        NotFound: no such provider.
        InvalidRequest: an unknown purpose, or a user code that is malformed, unknown or expired.
        RateLimited: too many sign-ins started, or wrong codes, from this address.
        Unavailable: the provider's discovery document cannot be fetched (audited), or the
            database could not be reached.
    """
    provider = _provider(broker, provider_name)
    if purpose not in (DEVICE, INBOX):
        raise InvalidRequest("unknown sign-in purpose")
    ip = client_ip[:64]
    start_key = ratelimit.OIDC_STARTS.key(broker, ip)
    code_key = ratelimit.USER_CODE_GUESSES.key(broker, ip)
    device_id = None
    step_up = False
    with broker.transaction() as conn:
        ratelimit.check(conn, broker.clock, ratelimit.OIDC_STARTS, start_key)
        if purpose == DEVICE:
            ratelimit.check(conn, broker.clock, ratelimit.USER_CODE_GUESSES, code_key)
            code = device.normalise_user_code(user_code)
            row = None if code is None else device_codes.open_by_user_code(conn, code, broker.clock.now())
            if row is None:
                ratelimit.hit(conn, broker.clock, ratelimit.USER_CODE_GUESSES, code_key)
            else:
                device_id, step_up = row.id, row.mfa_required
    if purpose == DEVICE and device_id is None:
        raise InvalidRequest(device.BAD_CODE)
    try:
        found = protocol.endpoints(broker.oidc_keys, provider, broker.clock)
    except KeyUnavailable as exc:
        _record_unavailable(broker, provider, str(exc), ip)
        raise _unavailable(provider) from None
    state, nonce, browser = (secrets.token_urlsafe(32) for _ in range(3))
    verifier = protocol.new_code_verifier()
    login_id = str(uuid.uuid4())
    now = broker.clock.now()
    with broker.transaction() as conn:
        ratelimit.hit(conn, broker.clock, ratelimit.OIDC_STARTS, start_key)
        oidc_logins.delete_expired(conn, now - _KEEP_EXPIRED)
        oidc_logins.insert(
            conn,
            login_id=login_id,
            provider=provider.name,
            state_hash=hash_token(state),
            browser_hash=hash_token(browser),
            nonce=nonce,
            code_verifier=Sealer(broker.token_ring, _VERIFIER_INFO).seal_bytes(login_id, verifier.encode()),
            purpose=purpose,
            device_id=device_id,
            created_at=now,
            expires_at=now + LOGIN_TTL,
        )
    url = protocol.authorization_url(
        found, provider, redirect_uri(broker, provider), state, nonce, verifier, step_up=step_up
    )
    return Started(url=url, browser_token=browser, provider=provider)


def redirect_uri(broker: Broker, provider: OidcProvider) -> str:
    """The callback URL to register at the provider."""
    return f"{broker.base_url}/oidc/{provider.name}/callback"


def complete(
    broker: Broker, provider_name: str, callback: Callback, browser_token: str, client_ip: str
) -> Completed:
    """Finish an upstream sign-in from the provider's redirect to our callback.

    Raises:
        NotFound: no such provider.
        RateLimited: too many failed callbacks or logins from this address.
        InvalidRequest: the state is unknown, of another browser, used or expired; the
            provider sent an error; the device request expired meanwhile (audited).
        Unauthenticated: the code or the ID token was refused, the claims name nobody we can
            sign in, the name is taken by another user, or the user is disabled (audited).
        Unavailable: the provider cannot be reached (audited), or the database could not be.
    """
    provider = _provider(broker, provider_name)
    ip = client_ip[:64]
    per_address = ratelimit.login_failures_per_address(broker)
    with broker.transaction() as conn:
        ratelimit.check(conn, broker.clock, per_address, per_address.key(broker, ip))
        ratelimit.check(
            conn,
            broker.clock,
            ratelimit.OIDC_CALLBACK_FAILURES,
            ratelimit.OIDC_CALLBACK_FAILURES.key(broker, ip),
        )
    try:
        return _complete(broker, provider, callback, browser_token, ip)
    except _Refused as refused:
        _record_failure(broker, provider, refused, ip)
        raise refused.error from None


def _again(message: str) -> InvalidRequest:
    return InvalidRequest(message, hint="start again: run `access login` or reload the sign-in page")


def _take_login(
    broker: Broker, provider: OidcProvider, state: str, browser_token: str
) -> oidc_logins.OidcLogin:
    if not state or len(state) > _MAX_PARAM:
        raise _Refused("no_state", _again("This sign-in link is incomplete"))
    with broker.transaction() as conn:
        login = oidc_logins.by_state_hash(conn, hash_token(state))
        if login is None or login.provider != provider.name:
            raise _Refused("unknown_state", _again("This sign-in is not one this broker started"))
        # The callback must come back to the browser that started it (login CSRF, a leaked URL).
        if not hmac.compare_digest(login.browser_hash, hash_token(browser_token[:_MAX_PARAM])):
            raise _Refused("other_browser", _again("This sign-in was started in another browser"))
        if login.used_at is not None:
            raise _Refused("state_reused", _again("This sign-in was already completed"))
        if not oidc_logins.take(conn, login.id, broker.clock.now()):
            raise _Refused("state_expired", _again("This sign-in took too long and expired"))
    return login


def _complete(
    broker: Broker, provider: OidcProvider, callback: Callback, browser_token: str, ip: str
) -> Completed:
    login = _take_login(broker, provider, callback.state, browser_token)
    if callback.error:
        said = callback.error[:64] + (
            f": {callback.error_description[:200]}" if callback.error_description else ""
        )
        raise _Refused(
            "provider_error",
            InvalidRequest(f"{provider.display_name} did not sign you in ({said})", hint="try again"),
        )
    if not callback.code or len(callback.code) > _MAX_PARAM:
        raise _Refused("no_code", _again(f"{provider.display_name} sent no authorization code"))
    verifier = Sealer(broker.token_ring, _VERIFIER_INFO).open_bytes(login.id, login.code_verifier)
    if verifier is None:  # the signing key changed since the start
        raise _Refused("verifier_unreadable", _again("This sign-in can no longer be completed"))
    try:
        found = protocol.endpoints(broker.oidc_keys, provider, broker.clock)
        answer = protocol.redeem_code(
            broker.oidc_keys,
            found,
            provider,
            callback.code,
            redirect_uri(broker, provider),
            verifier.decode(),
        )
        token = validate_id_token(
            broker.oidc_keys, provider, answer.get("id_token"), broker.clock, nonce=login.nonce
        )
        claims = protocol.with_userinfo(broker.oidc_keys, found, provider, token.claims, answer)
    except KeyUnavailable as exc:
        _record_unavailable(broker, provider, str(exc), ip)
        raise _unavailable(provider) from None
    except protocol.TokenRefused as exc:
        raise _Refused(
            "code_refused",
            Unauthenticated(f"{provider.display_name} refused the sign-in ({exc.error})", hint="try again"),
        ) from None
    except ValueError as exc:  # userinfo about someone else
        raise _Refused("wrong_subject", Unauthenticated(str(exc), hint=None)) from None
    except InvalidIdToken as exc:
        raise _Refused(
            exc.reason,
            Unauthenticated(
                f"{provider.display_name} sent an ID token we cannot accept: {exc.message}", hint=None
            ),
        ) from None
    try:
        mapped = map_claims(provider, claims)
    except MappingRefused as exc:
        raise _Refused(exc.reason, Unauthenticated(exc.message, hint=None), token.subject) from None
    return _sign_in(broker, provider, login, token, mapped, answer.get("refresh_token"), ip)


def _sign_in(
    broker: Broker,
    provider: OidcProvider,
    login: oidc_logins.OidcLogin,
    token: IdToken,
    mapped: Mapped,
    refresh_token: object,
    ip: str,
) -> Completed:
    signed: SignIn | None = None
    web: WebSignIn | None = None
    # The provider's word on the second factor dates from when the person authenticated there.
    mfa_at = (token.auth_time or broker.clock.now()) if token.mfa else None
    with broker.transaction() as conn:
        principal = _principal(conn, broker, provider, token, mapped)
        sealed = seal_refresh(broker, provider.name, principal.id, refresh_token)
        details: dict[str, object] = {
            "method": "oidc",
            "provider": provider.name,
            "subject": token.subject,
            "groups": list(mapped.groups),
            "mfa": token.mfa,
            "ip": ip,
        }
        if login.purpose == DEVICE:
            assert login.device_id is not None
            row = device_codes.open_by_id(conn, login.device_id, broker.clock.now())
            # Without an upstream refresh token the groups cannot be read again: the session
            # then ends when the ID token does.
            link = UpstreamLink(provider.name, sealed, None if sealed else token.expires_at)
            if row is not None and row.mfa_required and mfa_at is None:
                # ``access login --mfa``: the provider must say a second factor was used.
                raise _Refused(
                    "mfa_unavailable",
                    Forbidden(
                        f"This sign-in asks for a second factor, and {provider.display_name} says"
                        " none was used.",
                        hint=f"sign in at {provider.display_name} with your second factor, or ask"
                        " an administrator which amr/acr values count (mfa_amr, mfa_acr)",
                    ),
                    token.subject,
                )
            signed = None if row is None else device.signed_in_as(conn, broker, row, principal, link, mfa_at)
            if signed is None:
                problem: _Refused | None = _Refused(
                    "device_request_gone", InvalidRequest(device.BAD_CODE), token.subject
                )
            else:
                problem = None
                details["device_id"] = login.device_id
        else:
            web = websessions.open_web_session(
                conn,
                broker,
                principal,
                ends_by=token.expires_at,
                upstream_provider=provider.name,
                mfa_at=mfa_at,
            )
            problem = None
            details["session_id"] = web.session_id
        if problem is None:
            ledger.append(
                conn,
                broker.clock,
                actor=principal.name,
                action=Action.LOGIN_SUCCESS,
                target=f"principal:{principal.name}",
                details=details,
            )
    if problem is not None:
        raise problem
    return Completed(
        provider=provider,
        name=principal.name,
        groups=mapped.groups,
        purpose=login.purpose,
        device=signed,
        web=web,
        mfa=token.mfa,
        auth_time=token.auth_time,
    )


def _principal(
    conn: sa.Connection, broker: Broker, provider: OidcProvider, token: IdToken, mapped: Mapped
) -> PrincipalRecord:
    """The user ``token`` is for (provisioned now if new), with the groups ``mapped`` gives.

    Raises:
        _Refused: the name is taken by another user, or the user is disabled.
    """
    found = principals.by_upstream(conn, provider.issuer, token.subject)
    if found is None:
        if principals.name_taken(conn, mapped.name):
            raise _Refused(
                "name_taken",
                Unauthenticated(
                    f"A user named {mapped.name!r} already exists here, not yet linked to your "
                    f"{provider.display_name} account, so you cannot sign in with it",
                    hint=f"ask an administrator to run `access-broker users link {mapped.name} "
                    f"--provider {provider.name} --subject {token.subject}` if that user is you",
                ),
                token.subject,
            )
        principal_id = str(uuid.uuid4())
        principals.insert(
            conn,
            principal_id=principal_id,
            name=mapped.name,
            kind=USER,
            groups=mapped.groups,
            created_at=broker.clock.now(),
            source=provider.source,
            issuer=provider.issuer,
            subject=token.subject,
        )
        ledger.append(
            conn,
            broker.clock,
            actor=mapped.name,
            action=Action.USER_PROVISION,
            target=f"principal:{mapped.name}",
            details={"provider": provider.name, "subject": token.subject, "groups": list(mapped.groups)},
        )
        created = principals.by_id(conn, principal_id)
        assert created is not None
        return created
    if found.disabled:
        raise _Refused(
            "disabled",
            Unauthenticated("This account is disabled.", hint="ask an administrator"),
            token.subject,
        )
    if found.groups != mapped.groups:
        principals.set_groups(conn, found.id, mapped.groups)
    return found


def _record_failure(broker: Broker, provider: OidcProvider, refused: _Refused, ip: str) -> None:
    per_address = ratelimit.login_failures_per_address(broker)
    with broker.transaction() as conn:
        ratelimit.hit(conn, broker.clock, per_address, per_address.key(broker, ip))
        ratelimit.hit(
            conn,
            broker.clock,
            ratelimit.OIDC_CALLBACK_FAILURES,
            ratelimit.OIDC_CALLBACK_FAILURES.key(broker, ip),
        )
        details: dict[str, object] = {
            "method": "oidc",
            "provider": provider.name,
            "reason": refused.reason,
            "ip": ip,
        }
        if refused.subject is not None:
            details["subject"] = refused.subject
        ledger.append(
            conn,
            broker.clock,
            actor="anonymous",
            action=Action.LOGIN_FAILURE,
            target=f"oidc:{provider.name}",
            details=details,
        )


def _record_unavailable(broker: Broker, provider: OidcProvider, why: str, ip: str) -> None:
    with broker.transaction() as conn:
        ledger.append(
            conn,
            broker.clock,
            actor="anonymous",
            action=Action.LOGIN_FAILURE,
            target=f"oidc:{provider.name}",
            details={
                "method": "oidc",
                "provider": provider.name,
                "reason": "provider_unavailable",
                "error": why[:300],
                "ip": ip,
            },
        )
