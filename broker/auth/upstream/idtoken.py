"""Validating an upstream ID token (OpenID Connect Core 1.0, section 3.1.3.7).

The signature is checked with the provider's published key (``auth.jwks``: cached, refetched
once for an unknown ``kid`` when the provider rotates), the algorithm being one the discovery
document announces *and* asymmetric: never ``none``, never HMAC (which would take the public
key as its secret). Then: ``iss`` exactly the provider's, ``aud`` containing our client id,
``azp`` our client id when present or when ``aud`` names others too, ``exp`` not passed and
``iat`` not in the future (60 seconds of skew, by the broker's clock), ``sub`` present, and
``nonce`` equal to the one sent (constant-time) at sign-in. An ID token from a refresh is held
to the same, and to the ``sub`` the session was opened for, but carries no nonce to compare.

The result says whether the sign-in used a second factor (an ``amr`` value of ``mfa_amr``, or
the ``acr`` among ``mfa_acr``) and when the person authenticated (``auth_time``), for the MFA
policy to use.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from access.broker.auth.jwks import KeyCache, UnknownKey
from access.broker.auth.upstream.config import OidcProvider
from access.broker.clock import Clock

__all__ = ["IdToken", "InvalidIdToken", "validate_id_token"]

_SKEW = timedelta(seconds=60)
_REQUIRED = ["iss", "aud", "exp", "iat", "sub"]
_MAX_TOKEN = 16 * 1024


class InvalidIdToken(Exception):
    """The ID token is refused: ``reason`` for the ledger (the message says what was wrong)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class IdToken:
    subject: str
    claims: dict[str, Any]
    expires_at: datetime
    mfa: bool  # amr or acr says a second factor was used
    auth_time: datetime | None


def _instant(claims: Mapping[str, Any], name: str) -> datetime | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidIdToken("malformed", f"the ID token's {name} is not a time")
    try:
        return datetime.fromtimestamp(int(value), tz=UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidIdToken("malformed", f"the ID token's {name} is not a time") from None


def second_factor(provider: OidcProvider, claims: Mapping[str, Any]) -> bool:
    """Whether ``claims`` say the person used a second factor (``amr`` or ``acr``)."""
    amr = claims.get("amr")
    methods = {m for m in amr if isinstance(m, str)} if isinstance(amr, list) else set()
    acr = claims.get("acr")
    return bool(methods & set(provider.mfa_amr)) or (isinstance(acr, str) and acr in provider.mfa_acr)


def validate_id_token(
    keys: KeyCache,
    provider: OidcProvider,
    raw: object,
    clock: Clock,
    *,
    nonce: str | None,
    subject: str | None = None,
) -> IdToken:
    """The validated claims of ``raw`` from ``provider``.

    ``nonce``: the one sent with the authorization request (None: a token from a refresh, where
    ``subject`` is the one it must be for).

    Raises:
        InvalidIdToken: anything wrong with the token.
        KeyUnavailable: the provider's keys cannot be fetched (fail closed).
    """
    if not isinstance(raw, str) or not raw or len(raw) > _MAX_TOKEN:
        raise InvalidIdToken("malformed", f"{provider.display_name} sent no usable ID token")
    try:
        header = jwt.get_unverified_header(raw)
    except jwt.PyJWTError:
        raise InvalidIdToken("malformed", "the ID token is not a JWT") from None
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or not (kid is None or isinstance(kid, str)):
        raise InvalidIdToken("malformed", "the ID token's header is malformed")
    try:
        key = keys.signing_key(provider, kid, alg, clock)
    except UnknownKey as exc:
        raise InvalidIdToken("bad_signature", str(exc)) from None
    try:
        claims: dict[str, Any] = jwt.decode(
            raw,
            key,
            algorithms=[alg],  # checked against what discovery announces, asymmetric only, above
            audience=provider.client_id,
            issuer=provider.issuer,
            options={
                "require": _REQUIRED,
                # Checked below against broker.clock, not the host's.
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.InvalidAudienceError:
        raise InvalidIdToken("wrong_audience", "the ID token is for another client") from None
    except jwt.InvalidIssuerError:
        raise InvalidIdToken("wrong_issuer", "the ID token is from another issuer") from None
    except jwt.MissingRequiredClaimError as exc:
        raise InvalidIdToken("malformed", f"the ID token lacks the {exc.claim!r} claim") from None
    except jwt.PyJWTError:
        raise InvalidIdToken("bad_signature", "the ID token's signature is invalid") from None
    _check_claims(provider, claims, clock, nonce, subject)
    expires_at = _instant(claims, "exp")
    assert expires_at is not None  # required above
    return IdToken(
        subject=str(claims["sub"]),
        claims=claims,
        expires_at=expires_at,
        mfa=second_factor(provider, claims),
        auth_time=_instant(claims, "auth_time"),
    )


def _check_claims(
    provider: OidcProvider, claims: Mapping[str, Any], clock: Clock, nonce: str | None, subject: str | None
) -> None:
    aud = claims["aud"]
    azp = claims.get("azp")
    # Core 3.1.3.7 (4, 5): several audiences need azp, and an azp must be us.
    if (azp is not None or (isinstance(aud, list) and len(aud) > 1)) and azp != provider.client_id:
        raise InvalidIdToken("wrong_azp", "the ID token was issued to another client (azp)")
    sub = claims["sub"]
    if not isinstance(sub, str) or not sub or len(sub) > 255:
        raise InvalidIdToken("malformed", "the ID token's sub is not a subject identifier")
    if subject is not None and sub != subject:
        raise InvalidIdToken("wrong_subject", "the ID token is for another person than the session's")
    now = clock.now()
    expires_at, issued_at = _instant(claims, "exp"), _instant(claims, "iat")
    assert expires_at is not None and issued_at is not None
    if expires_at + _SKEW <= now:
        raise InvalidIdToken("expired", "the ID token has expired")
    if issued_at > now + _SKEW:
        raise InvalidIdToken("not_yet_valid", "the ID token was issued in the future (check the clocks)")
    if nonce is not None:
        sent = claims.get("nonce")
        if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), nonce.encode()):
            raise InvalidIdToken("bad_nonce", "the ID token's nonce is not the one this sign-in sent")
