"""Re-reading an upstream user's groups when their session refreshes.

The provider's refresh token is kept sealed (AES-256-GCM under a key derived from the broker's
token signing key for this purpose alone, ``identities.sealing``), bound to the provider and
the principal: moved to another person's row, it does not open. At a refresh the broker
redeems it at the provider's token endpoint, validates the ID token that comes back (or reads
userinfo when none does), and keeps the rotated refresh token, if the provider rotates.

A provider that refuses (``invalid_grant``: the person was disabled or removed there, or signed
out) ends the session: ``UpstreamEnded``. A provider that does not answer: ``UpstreamUnavailable``,
and the session is kept for a later try (fail closed, but not fatal).
"""

from __future__ import annotations

from dataclasses import dataclass

from access.broker.auth.jwks import KeyUnavailable
from access.broker.auth.upstream import protocol
from access.broker.auth.upstream.config import OidcProvider
from access.broker.auth.upstream.idtoken import InvalidIdToken, validate_id_token
from access.broker.auth.upstream.mapping import map_groups
from access.broker.identities.sealing import Sealer
from access.broker.runtime import Broker
from access.broker.store.sessions import RefreshToken

__all__ = ["Reread", "UpstreamEnded", "UpstreamUnavailable", "open_refresh", "reread", "seal_refresh"]

_SEAL_INFO = b"access upstream: refresh tokens v1"
_MAX_REFRESH = 8192


class UpstreamEnded(Exception):
    """The provider will not vouch for the person any more: end the session."""

    def __init__(self, display_name: str, reason: str) -> None:
        super().__init__(f"{display_name}: {reason}")
        self.display_name = display_name
        self.reason = reason


class UpstreamUnavailable(Exception):
    """The provider cannot be asked now (down, slow, garbage): refuse this refresh only."""


@dataclass(frozen=True)
class Reread:
    session_id: str
    groups: tuple[str, ...]
    sealed_refresh: bytes | None


def _associated(provider: str, principal_id: str) -> str:
    return f"upstream refresh:{provider}:{principal_id}"


def seal_refresh(broker: Broker, provider: str, principal_id: str, token: object) -> bytes | None:
    """``token`` (a token response's ``refresh_token``) sealed for this provider and principal;
    None when the provider sent none (or something that cannot be one)."""
    if not isinstance(token, str) or not token or len(token) > _MAX_REFRESH:
        return None
    return Sealer(broker.token_ring, _SEAL_INFO).seal_bytes(
        _associated(provider, principal_id), token.encode()
    )


def open_refresh(broker: Broker, provider: str, principal_id: str, sealed: bytes) -> str | None:
    """What ``seal_refresh`` sealed, or None (another key, another principal, tampered)."""
    opened = Sealer(broker.token_ring, _SEAL_INFO).open_bytes(_associated(provider, principal_id), sealed)
    return None if opened is None else opened.decode(errors="replace")


def reread(broker: Broker, row: RefreshToken) -> Reread | None:
    """Ask the provider of ``row``'s session about the person again; their groups now. None when
    the provider gave the session no refresh token: then its groups stay those of the sign-in,
    and the session ends with the ID token it was opened with (``signin``).

    Call it outside any transaction: it makes HTTP requests (each bounded, ``auth.jwks``).

    Raises:
        UpstreamEnded: the provider refused the refresh token, its ID token is not valid for
            the person, the provider is no longer configured, or the sealed token does not
            open (the signing key changed).
        UpstreamUnavailable: the provider did not answer usefully.
    """
    assert row.upstream_provider is not None
    provider = broker.settings.oidc_provider(row.upstream_provider)
    if provider is None:
        raise UpstreamEnded(row.upstream_provider, "provider_removed")
    if row.upstream_refresh is None:
        return None
    token = open_refresh(broker, provider.name, row.principal_id, row.upstream_refresh)
    if token is None:
        raise UpstreamEnded(provider.display_name, "sealed_token_unreadable")
    try:
        found = protocol.endpoints(broker.oidc_keys, provider, broker.clock)
        answer = protocol.redeem_refresh_token(broker.oidc_keys, found, provider, token)
        claims = _claims(broker, provider, found, answer, row.subject)
    except protocol.TokenRefused as exc:
        raise UpstreamEnded(provider.display_name, exc.error) from None
    except InvalidIdToken as exc:
        raise UpstreamEnded(provider.display_name, exc.reason) from None
    except KeyUnavailable as exc:
        raise UpstreamUnavailable(f"{provider.display_name} cannot be reached ({exc})") from None
    groups, _ = map_groups(provider, claims)
    rotated = answer.get("refresh_token", token)
    sealed = seal_refresh(broker, provider.name, row.principal_id, rotated)
    return Reread(session_id=row.session_id, groups=groups, sealed_refresh=sealed)


def _claims(
    broker: Broker,
    provider: OidcProvider,
    found: protocol.Endpoints,
    answer: dict[str, object],
    subject: str | None,
) -> dict[str, object]:
    if "id_token" in answer:
        claims = validate_id_token(
            broker.oidc_keys, provider, answer["id_token"], broker.clock, nonce=None, subject=subject
        ).claims
        try:
            return protocol.with_userinfo(broker.oidc_keys, found, provider, claims, answer)
        except ValueError as exc:
            raise InvalidIdToken("wrong_subject", str(exc)) from None
    access = answer.get("access_token")
    if not isinstance(access, str):
        raise InvalidIdToken("malformed", "the refresh answer has neither an ID token nor an access token")
    claims = protocol.fetch_userinfo(broker.oidc_keys, found, access)
    # OpenID Connect Core 5.3.2: the userinfo sub must be checked against the ID token's.
    if claims.get("sub") != subject:
        raise InvalidIdToken("wrong_subject", "userinfo is for another person than the session's")
    return claims
