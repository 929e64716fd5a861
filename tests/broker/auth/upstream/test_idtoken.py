"""ID token validation against the provider's published keys: what a forger must not get away with."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from access.broker.auth.jwks import KeyUnavailable
from access.broker.auth.upstream.idtoken import InvalidIdToken, validate_id_token
from access.broker.clock import FakeClock
from access.broker.runtime import Broker
from tests.fakes.ciissuer import SigningKey
from tests.fakes.oidcmock import CLIENT_ID, FakeProvider

NONCE = "n-0123456789"


def _validate(broker: Broker, raw: str, nonce: str | None = NONCE, **kw: Any) -> Any:
    (provider,) = broker.settings.oidc_providers
    return validate_id_token(broker.oidc_keys, provider, raw, broker.clock, nonce=nonce, **kw)


def test_a_good_token_gives_its_claims_and_whether_a_second_factor_was_used(
    broker: Broker, idp: FakeProvider
) -> None:
    token = _validate(broker, idp.id_token("alice", NONCE))
    assert token.subject == "sub-alice" and token.claims["groups"] == ["eng"]
    assert token.mfa is False and token.auth_time is not None
    assert _validate(broker, idp.id_token("alice", NONCE, amr=["pwd", "otp"])).mfa is True
    assert _validate(broker, idp.id_token("alice", NONCE, amr="otp")).mfa is False  # not a list


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"aud": "someone-else"}, "wrong_audience"),
        ({"aud": [CLIENT_ID, "other"]}, "wrong_azp"),  # several audiences need azp
        ({"aud": [CLIENT_ID, "other"], "azp": "other"}, "wrong_azp"),
        ({"azp": "other"}, "wrong_azp"),
        ({"iss": "https://evil.test"}, "wrong_issuer"),
        ({"nonce": "another"}, "bad_nonce"),
        ({"nonce": None}, "bad_nonce"),
        ({"sub": None}, "malformed"),
        ({"exp": None}, "malformed"),
        ({"iat": "yesterday"}, "malformed"),
    ],
)
def test_claims_that_do_not_hold_are_refused(
    broker: Broker, idp: FakeProvider, claims: dict[str, Any], reason: str
) -> None:
    idp.claims = claims
    with pytest.raises(InvalidIdToken) as caught:
        _validate(broker, idp.id_token("alice", NONCE))
    assert caught.value.reason == reason


def test_several_audiences_with_our_azp_pass(broker: Broker, idp: FakeProvider) -> None:
    idp.claims = {"aud": [CLIENT_ID, "other"], "azp": CLIENT_ID}
    assert _validate(broker, idp.id_token("alice", NONCE)).subject == "sub-alice"


def test_times_are_the_brokers_with_a_minute_of_skew(
    broker: Broker, idp: FakeProvider, fake_clock: FakeClock
) -> None:
    token = idp.id_token("alice", NONCE)
    fake_clock.advance(timedelta(seconds=3600 + 59))
    assert _validate(broker, token).subject == "sub-alice"
    fake_clock.advance(timedelta(seconds=2))
    with pytest.raises(InvalidIdToken, match="expired"):
        _validate(broker, token)
    idp.claims = {"iat": int(fake_clock.now().timestamp()) + 120}
    with pytest.raises(InvalidIdToken, match="future"):
        _validate(broker, idp.id_token("alice", NONCE))


@pytest.mark.parametrize("forgery", ["none", "hs256_with_public_key", "es256_unannounced_key"])
def test_forged_signatures_are_refused(broker: Broker, idp: FakeProvider, forgery: str) -> None:
    if forgery == "none":
        import jwt

        raw = jwt.encode(
            {"iss": "https://idp.test", "aud": CLIENT_ID, "sub": "x", "nonce": NONCE}, None, algorithm="none"
        )
    elif forgery == "hs256_with_public_key":
        idp.signer = str(idp.key.jwk())  # the published key as an HMAC secret
        raw = idp.id_token("alice", NONCE)
    else:
        idp.signer = SigningKey()
        raw = idp.id_token("alice", NONCE)
    with pytest.raises(InvalidIdToken) as caught:
        _validate(broker, raw)
    assert caught.value.reason == "bad_signature"


def test_an_algorithm_discovery_does_not_announce_is_refused(broker: Broker, idp: FakeProvider) -> None:
    idp.discovery["id_token_signing_alg_values_supported"] = ["HS256", "none"]
    with pytest.raises(KeyUnavailable, match="no accepted signing algorithm"):
        _validate(broker, idp.id_token("alice", NONCE))
    idp.discovery["id_token_signing_alg_values_supported"] = ["RS256", "ES384"]
    with pytest.raises(InvalidIdToken, match="algorithm 'ES256' is not accepted"):
        _validate(broker, idp.id_token("alice", NONCE))


def test_a_discovery_document_naming_another_issuer_gives_no_key(broker: Broker, idp: FakeProvider) -> None:
    idp.discovery["issuer"] = "https://evil.test"
    with pytest.raises(KeyUnavailable, match="names another issuer"):
        _validate(broker, idp.id_token("alice", NONCE))


def test_a_rotated_key_is_fetched_once_and_works(
    broker: Broker, idp: FakeProvider, fake_clock: FakeClock
) -> None:
    _validate(broker, idp.id_token("alice", NONCE))
    fetches = idp.requests.count("GET /jwks")
    fake_clock.advance(broker.oidc_keys.refetch_after)
    idp.rotate()
    assert _validate(broker, idp.id_token("alice", NONCE)).subject == "sub-alice"
    assert idp.requests.count("GET /jwks") == fetches + 1


def test_a_refreshed_token_must_be_for_the_sessions_subject(broker: Broker, idp: FakeProvider) -> None:
    raw = idp.id_token("alice")
    assert _validate(broker, raw, nonce=None, subject="sub-alice").subject == "sub-alice"
    with pytest.raises(InvalidIdToken, match="another person"):
        _validate(broker, raw, nonce=None, subject="sub-bob")


def test_an_unknown_kid_is_refetched_at_most_every_few_seconds(
    broker: Broker, idp: FakeProvider, fake_clock: FakeClock
) -> None:
    _validate(broker, idp.id_token("alice", NONCE))
    idp.rotate()
    fake_clock.advance(broker.oidc_keys.refetch_after - 1)
    with pytest.raises(InvalidIdToken, match="does not publish"):
        _validate(broker, idp.id_token("alice", NONCE))
    fetches = idp.requests.count("GET /jwks")
    with pytest.raises(InvalidIdToken, match="does not publish"):
        _validate(broker, idp.id_token("alice", NONCE))
    assert idp.requests.count("GET /jwks") == fetches  # made-up kids cannot make it hammer the provider
    fake_clock.advance(1)
    assert _validate(broker, idp.id_token("alice", NONCE)).subject == "sub-alice"


def test_a_provider_that_is_down_gives_no_key(broker: Broker, idp: FakeProvider) -> None:
    idp.down = True
    with pytest.raises(KeyUnavailable, match="ConnectError"):
        _validate(broker, idp.id_token("alice", NONCE))
