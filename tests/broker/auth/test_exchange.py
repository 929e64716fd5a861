"""RFC 8693 token exchange of CI identity tokens, over HTTP in process against a real issuer on
loopback (tests/fakes/ciissuer.py): the trust rules, every way a token is refused, key rotation,
an issuer that is down."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from access.broker.auth import identity
from access.broker.auth.jwks import REFETCH_AFTER
from access.broker.clock import FakeClock
from access.broker.errors import Unauthenticated
from access.broker.runtime import Broker
from access.shared.oauth import ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT_TYPE
from tests.broker.conftest import BASE_URL, audit_rows, ledger_text
from tests.fakes.ciissuer import AUDIENCE, Issuer, SigningKey, ci_issuer, github_claims

pytestmark = pytest.mark.anyio

RULES = [
    {
        "service_account": "deploy-bot",
        "claims": {"repository": "acme/payments", "ref": "refs/heads/main", "environment": "production"},
    },
    {"service_account": "release-bot", "claims": {"repository": "acme/payments", "ref": "refs/tags/v*"}},
    {"service_account": "ghost-bot", "claims": {"repository": "acme/ghost"}},
]


@pytest.fixture
def issuer(fake_clock: FakeClock) -> Iterator[Issuer]:
    with ci_issuer(lambda: fake_clock.now().timestamp()) as running:
        yield running


@pytest.fixture
def broker(make_broker: Callable[..., Broker], issuer: Issuer) -> Broker:
    made = make_broker(ci_issuers=[{"issuer": issuer.url, "audience": AUDIENCE, "rules": RULES}])
    identity.create_service_account(made, "deploy-bot", ["ci"], actor="admin:test")
    return made


@pytest.fixture
async def client(broker: Broker) -> AsyncIterator[httpx.AsyncClient]:
    from access.broker.app import create_app

    transport = httpx.ASGITransport(app=create_app(broker, background=False), client=("192.0.2.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
        yield http


async def _exchange(client: httpx.AsyncClient, token: str, **extra: str) -> httpx.Response:
    form = {
        "grant_type": TOKEN_EXCHANGE_GRANT_TYPE,
        "subject_token": token,
        "subject_token_type": JWT_TOKEN_TYPE,
        **extra,
    }
    return await client.post("/oauth/token", data=form)


def _refused(response: httpx.Response, words: str) -> str:
    assert response.status_code == 400, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["error"] == "invalid_request", body
    assert words in body["error_description"], body
    return str(body["error_description"])


def _last_refusal(broker: Broker) -> dict[str, Any]:
    rows = audit_rows(broker, "token.exchange_refuse")
    assert rows, "the refusal was not audited"
    return rows[-1]["details"]


async def test_a_token_matching_a_rule_gets_a_short_token_for_its_service_account(
    client: httpx.AsyncClient, broker: Broker, issuer: Issuer
) -> None:
    token = issuer.mint(lifetime=600)
    response = await _exchange(client, token)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert body["token_type"] == "Bearer"
    assert "refresh_token" not in body  # a pipeline logs in again with a fresh CI token
    assert body["expires_in"] == 900  # ci_session_ttl, whatever the CI token has left
    me = await client.get("/v1/whoami", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200, me.text
    assert (me.json()["name"], me.json()["kind"]) == ("deploy-bot", "service_account")
    [row] = audit_rows(broker, "token.exchange")
    assert row["actor"] == "deploy-bot"
    details = row["details"]
    assert details["issuer"] == issuer.url and details["rule"] == 1
    assert details["subject"] == "repo:acme/payments:environment:production"
    assert details["claims"] == RULES[0]["claims"]
    assert token not in ledger_text(broker) and token.split(".")[2] not in ledger_text(broker)


async def test_the_session_lasts_ci_session_ttl_and_its_token_at_most_access_token_ttl(
    make_broker: Callable[..., Broker], issuer: Issuer, fake_clock: FakeClock
) -> None:
    from access.broker.app import create_app
    from access.broker.auth.tokens import live_session

    made = make_broker(
        ci_issuers=[{"issuer": issuer.url, "audience": AUDIENCE, "rules": RULES}],
        ci_session_ttl=1800,
        access_token_ttl=600,
    )
    identity.create_service_account(made, "deploy-bot", ["ci"], actor="admin:test")
    transport = httpx.ASGITransport(app=create_app(made, background=False), client=("192.0.2.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
        body = (await _exchange(http, issuer.mint(lifetime=300))).json()
        assert body["expires_in"] == 600 and "refresh_token" not in body
        [row] = audit_rows(made, "token.exchange")
        session_id = row["details"]["session_id"]
        fake_clock.advance(timedelta(seconds=601))  # past the CI token and the access token
        me = await http.get("/v1/whoami", headers={"Authorization": f"Bearer {body['access_token']}"})
        assert me.status_code == 401
        live_session(made, session_id, None)  # the session (and a running exec's tunnel) lives on
        fake_clock.advance(timedelta(seconds=1200))
        with pytest.raises(Unauthenticated):
            live_session(made, session_id, None)


async def test_a_prefix_glob_matches_the_second_rule(
    client: httpx.AsyncClient, broker: Broker, issuer: Issuer
) -> None:
    identity.create_service_account(broker, "release-bot", ["ci"], actor="admin:test")
    token = issuer.mint(github_claims(ref="refs/tags/v1.4.0", environment="release"))
    response = await _exchange(client, token)
    assert response.status_code == 200, response.text
    assert audit_rows(broker, "token.exchange")[0]["details"]["service_account"] == "release-bot"


async def test_a_wrong_repository_is_refused_and_audited_with_the_claims_that_differed(
    client: httpx.AsyncClient, broker: Broker, issuer: Issuer
) -> None:
    token = issuer.mint(github_claims("evil/payments"))
    message = _refused(await _exchange(client, token), "no rule of")
    assert "repository='evil/payments'" in message
    details = _last_refusal(broker)
    assert details["reason"] == "no_rule_matched"
    assert details["subject"] == "repo:evil/payments:environment:production"
    assert details["mismatches"][0] == {
        "rule": 1,
        "service_account": "deploy-bot",
        "mismatched": {"repository": "evil/payments"},
    }
    assert details["mismatches"][1]["mismatched"] == {"repository": "evil/payments", "ref": "refs/heads/main"}
    assert token not in ledger_text(broker)
    assert audit_rows(broker, "token.exchange") == []


async def test_a_missing_claim_matches_nothing(
    client: httpx.AsyncClient, broker: Broker, issuer: Issuer
) -> None:
    claims = github_claims()
    del claims["environment"]
    _refused(await _exchange(client, issuer.mint(claims)), "no rule of")
    assert _last_refusal(broker)["mismatches"][0]["mismatched"] == {"environment": None}


@pytest.mark.parametrize(
    ("mint", "words", "reason"),
    [
        (lambda issuer: issuer.mint(audience="someone-else"), "not for this broker", "wrong_audience"),
        (lambda issuer: issuer.mint(audience=["x", "y"]), "not for this broker", "wrong_audience"),
        (lambda issuer: issuer.mint(lifetime=-60), "expired", "expired"),
        (lambda issuer: issuer.mint(key=SigningKey()), "does not publish", "bad_signature"),
    ],
    ids=["wrong-audience", "audience-list-without-ours", "expired", "unknown-key"],
)
async def test_bad_tokens_are_refused(
    client: httpx.AsyncClient,
    broker: Broker,
    issuer: Issuer,
    mint: Callable[[Issuer], str],
    words: str,
    reason: str,
) -> None:
    _refused(await _exchange(client, mint(issuer)), words)
    details = _last_refusal(broker)
    assert details["reason"] == reason
    assert details["issuer"] == issuer.url


async def test_an_audience_list_holding_ours_is_accepted(client: httpx.AsyncClient, issuer: Issuer) -> None:
    response = await _exchange(client, issuer.mint(audience=["other", AUDIENCE]))
    assert response.status_code == 200, response.text


async def test_a_forged_signature_under_a_known_kid_is_refused(
    client: httpx.AsyncClient, broker: Broker, issuer: Issuer
) -> None:
    forger = SigningKey()
    forger.kid = issuer.key.kid  # the published kid, another key's signature
    _refused(await _exchange(client, issuer.mint(key=forger)), "signature is invalid")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_alg_none_and_hmac_keyed_with_the_public_key_are_refused(
    client: httpx.AsyncClient, broker: Broker, issuer: Issuer, fake_clock: FakeClock
) -> None:
    now = int(fake_clock.now().timestamp())
    claims = {"iss": issuer.url, "aud": AUDIENCE, "iat": now, "exp": now + 300, **github_claims()}
    payload = _b64(json.dumps(claims).encode())
    unsigned = f"{_b64(json.dumps({'alg': 'none', 'kid': issuer.key.kid}).encode())}.{payload}."
    _refused(await _exchange(client, unsigned), "algorithm 'none' is not accepted")
    # The classic mix-up: HS256 with the issuer's public key (anyone can fetch it) as the secret.
    # Signed by hand: PyJWT itself refuses to make such a token.
    public_pem = issuer.key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{_b64(json.dumps({'alg': 'HS256', 'kid': issuer.key.kid}).encode())}.{payload}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    _refused(await _exchange(client, f"{signing_input}.{_b64(mac)}"), "algorithm 'HS256' is not accepted")
    assert audit_rows(broker, "token.exchange") == []


async def test_an_untrusted_issuer_is_refused(
    client: httpx.AsyncClient, broker: Broker, fake_clock: FakeClock
) -> None:
    with ci_issuer(lambda: fake_clock.now().timestamp()) as stranger:
        _refused(await _exchange(client, stranger.mint()), "issuer is not trusted")
    assert _last_refusal(broker)["reason"] == "untrusted_issuer"
    assert stranger.fetches == 0  # nothing of an untrusted issuer is fetched


async def test_a_rotated_key_is_accepted_after_one_refetch(
    client: httpx.AsyncClient, issuer: Issuer, fake_clock: FakeClock
) -> None:
    assert (await _exchange(client, issuer.mint())).status_code == 200
    assert issuer.fetches == 1
    assert (await _exchange(client, issuer.mint())).status_code == 200
    assert issuer.fetches == 1  # cached
    issuer.rotate()
    fake_clock.advance(REFETCH_AFTER)
    response = await _exchange(client, issuer.mint())
    assert response.status_code == 200, response.text
    assert issuer.fetches == 2


async def test_unknown_kids_refetch_at_most_once_per_interval(
    client: httpx.AsyncClient, issuer: Issuer, fake_clock: FakeClock
) -> None:
    assert (await _exchange(client, issuer.mint())).status_code == 200
    fake_clock.advance(REFETCH_AFTER)
    for _ in range(5):
        _refused(await _exchange(client, issuer.mint(key=SigningKey())), "does not publish")
    assert issuer.fetches == 2  # one refetch for the first unknown kid, none for the others


async def test_an_unreachable_issuer_fails_closed(
    client: httpx.AsyncClient, broker: Broker, issuer: Issuer, fake_clock: FakeClock
) -> None:
    issuer.failing = True
    response = await _exchange(client, issuer.mint())
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "temporarily_unavailable"
    assert "cannot be checked now" in response.json()["error_description"]
    # Keys fetched before are not used past a failed refetch, either.
    issuer.failing = False
    assert (await _exchange(client, issuer.mint())).status_code == 200
    issuer.rotate()
    issuer.failing = True
    fake_clock.advance(REFETCH_AFTER)
    assert (await _exchange(client, issuer.mint())).status_code == 503
    assert audit_rows(broker, "token.exchange") != [] and len(audit_rows(broker, "token.exchange")) == 1


async def test_a_rule_naming_a_missing_service_account_is_refused(
    client: httpx.AsyncClient, broker: Broker, issuer: Issuer
) -> None:
    message = _refused(await _exchange(client, issuer.mint(github_claims("acme/ghost"))), "'ghost-bot'")
    assert "service-accounts add" in message
    details = _last_refusal(broker)
    assert (details["reason"], details["rule"]) == ("unknown_service_account", 3)


async def test_a_disabled_service_account_is_refused(
    client: httpx.AsyncClient, broker: Broker, issuer: Issuer
) -> None:
    identity.disable_principal(broker, "deploy-bot", "admin:test")
    _refused(await _exchange(client, issuer.mint()), "disabled")


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ({"subject_token_type": "urn:ietf:params:oauth:token-type:saml2"}, "invalid_request"),
        ({"requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"}, "invalid_request"),
        ({"audience": "https://elsewhere.test"}, "invalid_target"),
        ({"scope": "admin"}, "invalid_scope"),
        ({"actor_token": "x", "actor_token_type": JWT_TOKEN_TYPE}, "invalid_request"),
    ],
)
async def test_what_the_exchange_does_not_support_is_refused(
    client: httpx.AsyncClient, issuer: Issuer, extra: dict[str, str], error: str
) -> None:
    response = await _exchange(client, issuer.mint(), **extra)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == error


async def test_the_broker_as_audience_is_accepted(client: httpx.AsyncClient, issuer: Issuer) -> None:
    response = await _exchange(client, issuer.mint(), audience=BASE_URL)
    assert response.status_code == 200, response.text


async def test_garbage_is_refused(client: httpx.AsyncClient, broker: Broker) -> None:
    _refused(await _exchange(client, "not-a-jwt"), "not a JWT")
    assert _last_refusal(broker)["reason"] == "malformed"
