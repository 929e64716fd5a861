"""Access tokens: what a valid one carries, and every way a forged or stale one is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from access.broker.auth import identity, tokens
from access.broker.auth.sessions import logout, revoke_session
from access.broker.clock import FakeClock
from access.broker.errors import Unauthenticated
from access.broker.keys import key_id, public_pem
from access.broker.runtime import Broker
from tests.broker.conftest import BASE_URL, add_user, login


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes] | None) -> str:
    """A JWT built by hand, so tests can make the tokens PyJWT itself refuses to produce."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = _b64(sign(signing_input.encode())) if sign else ""
    return f"{signing_input}.{signature}"


@pytest.fixture
def session_claims(broker: Broker) -> dict[str, Any]:
    """The claims of a genuine token for a live session (to re-sign in forged variants)."""
    user = add_user(broker)
    issued = login(broker, user)
    return dict(jwt.decode(issued.access_token, options={"verify_signature": False}))


def test_a_valid_token_authenticates_to_its_principal_and_session(broker: Broker) -> None:
    user = add_user(broker, "alice", ("sre", "oncall"))
    issued = login(broker, user)

    ctx = tokens.authenticate(broker, issued.access_token)

    assert (ctx.principal_id, ctx.name, ctx.kind) == (user.id, "alice", "user")
    assert ctx.groups == ("oncall", "sre")
    assert ctx.session_id == issued.session_id
    assert ctx.expires_at == broker.clock.now() + timedelta(seconds=broker.settings.access_token_ttl)


def test_token_carries_rfc9068_header_and_claims(broker: Broker) -> None:
    issued = login(broker, add_user(broker))
    header = jwt.get_unverified_header(issued.access_token)
    claims = jwt.decode(issued.access_token, options={"verify_signature": False})

    assert header == {"alg": "EdDSA", "typ": "at+jwt", "kid": key_id(broker.token_key)}
    assert {"iss", "aud", "sub", "sid", "jti", "iat", "exp", "client_id"} <= claims.keys()
    assert claims["iss"] == BASE_URL and claims["aud"] == "access-broker"
    assert claims["exp"] - claims["iat"] == broker.settings.access_token_ttl <= 900
    assert issued.expires_in == broker.settings.access_token_ttl


def test_each_token_has_a_fresh_jti(broker: Broker) -> None:
    user = add_user(broker)
    first, second = login(broker, user), login(broker, user)
    jti = [jwt.decode(t.access_token, options={"verify_signature": False})["jti"] for t in (first, second)]
    assert jti[0] != jti[1]


def _refused(broker: Broker, token: str, match: str) -> None:
    with pytest.raises(Unauthenticated, match=match):
        tokens.authenticate(broker, token)


def test_alg_none_is_refused(broker: Broker, session_claims: dict[str, Any]) -> None:
    token = forge({"alg": "none", "typ": "at+jwt"}, session_claims, None)
    _refused(broker, token, "invalid or forged")


def test_hs256_keyed_with_the_public_key_is_refused(broker: Broker, session_claims: dict[str, Any]) -> None:
    # The classic algorithm-confusion attack: HMAC with the (public) verification key as secret.
    secret = public_pem(broker.token_key).encode()
    token = forge(
        {"alg": "HS256", "typ": "at+jwt"},
        session_claims,
        lambda data: hmac.new(secret, data, hashlib.sha256).digest(),
    )
    _refused(broker, token, "invalid or forged")


def test_a_token_signed_with_another_key_is_refused(broker: Broker, session_claims: dict[str, Any]) -> None:
    other = Ed25519PrivateKey.generate()
    token = jwt.encode(session_claims, other, algorithm="EdDSA", headers={"typ": "at+jwt"})
    _refused(broker, token, "invalid or forged")


def test_a_tampered_payload_is_refused(broker: Broker, session_claims: dict[str, Any]) -> None:
    genuine = jwt.encode(session_claims, broker.token_key, algorithm="EdDSA", headers={"typ": "at+jwt"})
    header, _payload, signature = genuine.split(".")
    evil = dict(session_claims, sub="someone-else")
    _refused(broker, f"{header}.{_b64(json.dumps(evil).encode())}.{signature}", "invalid or forged")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"aud": "another-service"}, "another audience"),
        ({"iss": "https://evil.test"}, "another broker"),
        ({"sid": None}, "'sid' claim"),
        ({"jti": None}, "'jti' claim"),
        ({"exp": None}, "'exp' claim"),
    ],
)
def test_wrong_or_missing_claims_are_refused(
    broker: Broker, session_claims: dict[str, Any], change: dict[str, Any], match: str
) -> None:
    claims = {k: v for k, v in {**session_claims, **change}.items() if v is not None}
    token = jwt.encode(claims, broker.token_key, algorithm="EdDSA", headers={"typ": "at+jwt"})
    _refused(broker, token, match)


def test_a_jwt_of_another_type_is_refused(broker: Broker, session_claims: dict[str, Any]) -> None:
    token = jwt.encode(session_claims, broker.token_key, algorithm="EdDSA", headers={"typ": "JWT"})
    _refused(broker, token, "not an access token")


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "x" * 5000])
def test_garbage_is_refused(broker: Broker, garbage: str) -> None:
    with pytest.raises(Unauthenticated):
        tokens.authenticate(broker, garbage)


def test_expiry_follows_the_broker_clock(broker: Broker, fake_clock: FakeClock) -> None:
    issued = login(broker, add_user(broker))
    fake_clock.advance(broker.settings.access_token_ttl - 1)
    assert tokens.authenticate(broker, issued.access_token).name == "alice"

    fake_clock.advance(1)
    _refused(broker, issued.access_token, "expired")


def test_the_host_clock_does_not_decide_expiry(make_broker: Callable[..., Broker]) -> None:
    # A broker whose clock says 2001: by the host's clock the token expired long ago, but the
    # broker's clock is authoritative, so it is still valid.
    past = make_broker(clock=FakeClock(datetime(2001, 1, 1, tzinfo=UTC)))
    issued = login(past, add_user(past))
    assert tokens.authenticate(past, issued.access_token).name == "alice"


def test_a_token_issued_in_the_future_is_refused(broker: Broker, session_claims: dict[str, Any]) -> None:
    later = int(broker.clock.now().timestamp()) + 3600
    claims = dict(session_claims, iat=later, exp=later + 600)
    token = jwt.encode(claims, broker.token_key, algorithm="EdDSA", headers={"typ": "at+jwt"})
    _refused(broker, token, "in the future")


def test_a_token_not_valid_yet_is_refused_until_its_nbf(
    broker: Broker, session_claims: dict[str, Any], fake_clock: FakeClock
) -> None:
    now = int(broker.clock.now().timestamp())
    # Signed with the broker's own key and issued now: only ``nbf`` says "not yet".
    claims = dict(session_claims, iat=now, nbf=now + 3600, exp=now + 7200)
    token = jwt.encode(claims, broker.token_key, algorithm="EdDSA", headers={"typ": "at+jwt"})
    _refused(broker, token, "not valid yet")
    fake_clock.advance(timedelta(seconds=3600 - 60))  # within the leeway: accepted
    assert tokens.authenticate(broker, token).name == "alice"


def test_an_nbf_within_the_leeway_is_accepted(broker: Broker, session_claims: dict[str, Any]) -> None:
    now = int(broker.clock.now().timestamp())
    claims = dict(session_claims, iat=now, nbf=now + 30)
    token = jwt.encode(claims, broker.token_key, algorithm="EdDSA", headers={"typ": "at+jwt"})
    assert tokens.authenticate(broker, token).name == "alice"


def test_a_revoked_session_stops_its_access_tokens(broker: Broker) -> None:
    issued = login(broker, add_user(broker))
    with broker.transaction() as conn:
        revoke_session(conn, broker.clock, issued.session_id, "logout")
    _refused(broker, issued.access_token, "signed out or revoked")


def test_logout_stops_the_token_at_once(broker: Broker) -> None:
    issued = login(broker, add_user(broker))
    logout(broker, tokens.authenticate(broker, issued.access_token))
    _refused(broker, issued.access_token, "signed out or revoked")


def test_an_expired_session_stops_its_access_tokens(broker: Broker, fake_clock: FakeClock) -> None:
    user = add_user(broker)
    issued = login(broker, user)
    fake_clock.advance(broker.settings.session_ttl + 1)
    later = tokens.issue_access_token(
        broker, principal_id=user.id, session_id=issued.session_id, client_id="x"
    )
    _refused(broker, later[0], "session has expired")


def test_a_disabled_principal_is_refused(broker: Broker) -> None:
    issued = login(broker, add_user(broker))
    identity.disable_principal(broker, "alice", "admin:test")
    _refused(broker, issued.access_token, "signed out or revoked")


def test_a_token_for_another_principal_in_the_same_session_is_refused(broker: Broker) -> None:
    alice, bob = add_user(broker, "alice"), add_user(broker, "bob")
    issued = login(broker, alice)
    token, _ = tokens.issue_access_token(
        broker, principal_id=bob.id, session_id=issued.session_id, client_id="x"
    )
    _refused(broker, token, "does not exist")
