"""The verified-token cache: only valid tokens enter, what can change is still checked on every use."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from access.broker.auth import tokens
from access.broker.auth.identity import disable_principal
from access.broker.auth.sessions import revoke_session
from access.broker.auth.tokencache import AccessClaims, VerifiedToken, VerifiedTokens
from access.broker.clock import FakeClock
from access.broker.errors import Unauthenticated
from access.broker.runtime import Broker
from tests.broker.conftest import add_user, login

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def entry(key: Ed25519PrivateKey, expires_at: datetime, issuer: str = "https://broker.test") -> VerifiedToken:
    claims = AccessClaims("p-1", "s-1", "j-1", "access-cli", T0, expires_at)
    return VerifiedToken(key=key, issuer=issuer, claims=claims, not_before=None)


def test_a_valid_token_is_kept_once_and_still_authenticates(broker: Broker) -> None:
    issued = login(broker, add_user(broker))
    first = tokens.authenticate(broker, issued.access_token)
    second = tokens.authenticate(broker, issued.access_token)
    assert first == second and first.name == "alice"
    assert len(broker.verified_tokens) == 1
    kept = broker.verified_tokens.get(
        digest(issued.access_token), key=broker.token_key, issuer=broker.base_url
    )
    assert kept is not None and kept.claims.session_id == issued.session_id


def test_a_forged_token_is_refused_every_time_and_never_kept(broker: Broker) -> None:
    issued = login(broker, add_user(broker))
    claims = jwt.decode(issued.access_token, options={"verify_signature": False})
    forged = jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"typ": "at+jwt"})
    for _ in range(2):
        with pytest.raises(Unauthenticated, match="invalid or forged"):
            tokens.authenticate(broker, forged)
    assert len(broker.verified_tokens) == 0


def test_a_kept_token_still_expires_by_the_broker_clock(broker: Broker, fake_clock: FakeClock) -> None:
    issued = login(broker, add_user(broker))
    tokens.authenticate(broker, issued.access_token)
    fake_clock.advance(broker.settings.access_token_ttl)
    with pytest.raises(Unauthenticated, match="expired"):
        tokens.authenticate(broker, issued.access_token)


def test_a_kept_token_is_refused_once_its_session_is_revoked(broker: Broker) -> None:
    issued = login(broker, add_user(broker))
    tokens.authenticate(broker, issued.access_token)
    with broker.transaction() as conn:
        revoke_session(conn, broker.clock, issued.session_id, "logout")
    with pytest.raises(Unauthenticated, match="signed out or revoked"):
        tokens.authenticate(broker, issued.access_token)


def test_a_kept_token_is_refused_once_its_principal_is_disabled(broker: Broker) -> None:
    user = add_user(broker)
    issued = login(broker, user)
    tokens.authenticate(broker, issued.access_token)
    disable_principal(broker, "alice", actor="admin:test")
    with pytest.raises(Unauthenticated, match=r"revoked|disabled"):  # disabling revokes its sessions too
        tokens.authenticate(broker, issued.access_token)


def test_a_kept_token_does_not_count_under_another_key_or_issuer(broker: Broker) -> None:
    issued = login(broker, add_user(broker))
    tokens.authenticate(broker, issued.access_token)
    key = digest(issued.access_token)
    assert broker.verified_tokens.get(key, key=Ed25519PrivateKey.generate(), issuer=broker.base_url) is None
    assert broker.verified_tokens.get(key, key=broker.token_key, issuer="https://other.test") is None
    # The broker's key rotated: the token is checked again, against the new key, and refused.
    broker.token_key = Ed25519PrivateKey.generate()
    with pytest.raises(Unauthenticated, match="invalid or forged"):
        tokens.authenticate(broker, issued.access_token)


def test_the_cache_is_bounded_dropping_the_expired_first_then_the_oldest() -> None:
    key = Ed25519PrivateKey.generate()
    cache = VerifiedTokens(max_entries=3)
    cache.put(b"old-live", entry(key, T0 + timedelta(hours=1)), T0)
    cache.put(b"expired", entry(key, T0 + timedelta(seconds=1)), T0)
    cache.put(b"newer", entry(key, T0 + timedelta(hours=1)), T0)
    later = T0 + timedelta(minutes=1)
    cache.put(b"fourth", entry(key, T0 + timedelta(hours=1)), later)
    assert len(cache) == 3
    assert cache.get(b"expired", key=key, issuer="https://broker.test") is None
    assert cache.get(b"old-live", key=key, issuer="https://broker.test") is not None

    cache.put(b"fifth", entry(key, T0 + timedelta(hours=1)), later)  # none expired: the oldest goes
    assert len(cache) == 3
    assert cache.get(b"old-live", key=key, issuer="https://broker.test") is None
    assert cache.get(b"fifth", key=key, issuer="https://broker.test") is not None
