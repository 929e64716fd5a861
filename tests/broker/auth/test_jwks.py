"""The issuer key cache's HTTP edges (httpx.MockTransport): what an issuer must not get away with."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from access.broker.auth.citrust import CiIssuer
from access.broker.auth.jwks import MAX_BYTES, KeyCache, KeyUnavailable, UnknownKey
from access.broker.clock import FakeClock
from tests.fakes.ciissuer import SigningKey

ISSUER = "https://ci.example.com"


def _issuer(**changes: Any) -> CiIssuer:
    rule = {"service_account": "deploy-bot", "claims": {"repository": "acme/payments"}}
    return CiIssuer.model_validate(
        {"issuer": ISSUER, "audience": "access-broker", "rules": [rule], **changes}
    )


def _cache(answer: Callable[[httpx.Request], httpx.Response]) -> KeyCache:
    return KeyCache(transport=httpx.MockTransport(answer))


def _discovery(**changes: Any) -> dict[str, Any]:
    return {
        "issuer": ISSUER,
        "jwks_uri": f"{ISSUER}/jwks",
        "id_token_signing_alg_values_supported": ["ES256", "HS256", "none"],
        **changes,
    }


def _serving(discovery: dict[str, Any], jwks: Any) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/openid-configuration":
            return httpx.Response(200, json=discovery)
        return httpx.Response(200, content=jwks if isinstance(jwks, bytes) else json.dumps(jwks).encode())

    return answer


KEY = SigningKey()


@pytest.mark.parametrize(
    ("discovery", "jwks", "words"),
    [
        (_discovery(issuer="https://evil.example.com"), {"keys": [KEY.jwk()]}, "names another issuer"),
        (_discovery(jwks_uri="http://ci.example.com/jwks"), {"keys": [KEY.jwk()]}, "must be https://"),
        (_discovery(id_token_signing_alg_values_supported=["HS256"]), {"keys": [KEY.jwk()]}, "no accepted"),
        (_discovery(), {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": KEY.kid}]}, "no usable signing key"),
        (_discovery(), {"keys": []}, "holds no keys"),
        (_discovery(), b"[" * (MAX_BYTES + 1), "larger than"),
        (_discovery(), b"<html>", "not JSON"),
    ],
)
def test_an_issuer_that_misbehaves_gives_no_key(discovery: dict[str, Any], jwks: Any, words: str) -> None:
    with pytest.raises(KeyUnavailable, match=words):
        _cache(_serving(discovery, jwks)).signing_key(_issuer(), KEY.kid, "ES256", FakeClock())


def test_redirects_are_not_followed() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": "https://evil.example.com/jwks"})

    with pytest.raises(KeyUnavailable, match="HTTP 302"):
        _cache(answer).signing_key(_issuer(), KEY.kid, "ES256", FakeClock())


def test_a_timeout_fails_closed() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("slow", request=request)

    with pytest.raises(KeyUnavailable, match="ConnectTimeout"):
        _cache(answer).signing_key(_issuer(), KEY.kid, "ES256", FakeClock())


def test_pinned_algorithms_and_jwks_uri_skip_discovery_and_bind_the_key() -> None:
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return httpx.Response(200, json={"keys": [KEY.jwk()]})

    cache = _cache(answer)
    issuer = _issuer(jwks_uri=f"{ISSUER}/keys", algorithms=["ES256"])
    assert cache.signing_key(issuer, KEY.kid, "ES256", FakeClock()).key_id == KEY.kid
    assert asked == ["/keys"]
    with pytest.raises(UnknownKey, match="'RS256' is not accepted"):
        cache.signing_key(issuer, KEY.kid, "RS256", FakeClock())
