"""The real OpenID provider (tests/fakes/oidcprovider.py, panva's oidc-provider under Node.js)
driven as a relying party would: discovery, the code flow with PKCE, the ID token checked against
the JWKS, refresh, and what the test-admin API changes. No broker: the relying party is this test.

node and ``npm ci --prefix tests/oidcprovider`` are needed (``.ci/run`` does both); without them
these tests fail, they do not skip.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest

from tests.fakes.oidcprovider import OTP, PASSWORDS, OidcProvider, SignInRefused, subject

CALLBACK = "http://127.0.0.1:9/rp/callback"  # never fetched: sign_in stops at the redirect


class RelyingParty:
    """Just enough of a relying party: an authorization URL, the code redeemed, the ID token verified."""

    def __init__(self, idp: OidcProvider, http: httpx.Client) -> None:
        self.idp, self.http = idp, http
        idp.add_redirect_uri(CALLBACK)
        self.discovery: dict[str, Any] = http.get(f"{idp.issuer}/.well-known/openid-configuration").json()
        self.verifier = secrets.token_urlsafe(48)
        self.state, self.nonce = secrets.token_urlsafe(8), secrets.token_urlsafe(8)

    def authorize_url(self) -> str:
        challenge = base64.urlsafe_b64encode(hashlib.sha256(self.verifier.encode()).digest())
        query = {
            "client_id": self.idp.client_id,
            "response_type": "code",
            "scope": "openid email profile",
            "redirect_uri": CALLBACK,
            "state": self.state,
            "nonce": self.nonce,
            "code_challenge": challenge.rstrip(b"=").decode(),
            "code_challenge_method": "S256",
        }
        return f"{self.discovery['authorization_endpoint']}?{urlencode(query)}"

    def token(self, **form: str) -> httpx.Response:
        return self.http.post(
            self.discovery["token_endpoint"],
            data=form,
            auth=(self.idp.client_id, self.idp.client_secret),  # client_secret_basic
        )

    def sign_in(self, user: str, otp: str | None = None) -> dict[str, Any]:
        """The token response after ``user`` signed in; its ID token's claims under "claims"."""
        callback = self.idp.sign_in(self.authorize_url(), user, PASSWORDS[user], otp=otp)
        assert callback.startswith(f"{CALLBACK}?"), callback
        query = {k: v[0] for k, v in parse_qs(urlsplit(callback).query).items()}
        assert query["state"] == self.state, query
        answer = self.token(
            grant_type="authorization_code",
            code=query["code"],
            redirect_uri=CALLBACK,
            code_verifier=self.verifier,
        )
        assert answer.status_code == 200, answer.text
        tokens: dict[str, Any] = answer.json()
        tokens["claims"] = self.verify(tokens["id_token"])
        assert tokens["claims"]["nonce"] == self.nonce
        return tokens

    def refresh(self, refresh_token: str) -> httpx.Response:
        # client_secret_post this time: the provider takes both.
        return self.http.post(
            self.discovery["token_endpoint"],
            data={
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_id": self.idp.client_id,
                "client_secret": self.idp.client_secret,
            },
        )

    def jwks(self) -> jwt.PyJWKSet:
        return jwt.PyJWKSet.from_dict(self.http.get(self.discovery["jwks_uri"]).json())

    def verify(self, id_token: str) -> dict[str, Any]:
        kid = jwt.get_unverified_header(id_token)["kid"]
        key = next(k for k in self.jwks().keys if k.key_id == kid)
        claims: dict[str, Any] = jwt.decode(
            id_token, key, algorithms=["RS256"], audience=self.idp.client_id, issuer=self.idp.issuer
        )
        return claims


@pytest.fixture
def rp(oidc_provider: OidcProvider) -> Iterator[RelyingParty]:
    with httpx.Client(timeout=10) as http:
        yield RelyingParty(oidc_provider, http)


def test_discovery_says_what_a_relying_party_needs(rp: RelyingParty, oidc_provider: OidcProvider) -> None:
    found = rp.discovery
    assert found["issuer"] == oidc_provider.issuer
    assert oidc_provider.issuer.startswith("http://127.0.0.1:")
    assert found["jwks_uri"].startswith(oidc_provider.issuer)
    assert found["code_challenge_methods_supported"] == ["S256"]
    assert "RS256" in found["id_token_signing_alg_values_supported"]
    assert {"client_secret_basic", "client_secret_post"} <= set(
        found["token_endpoint_auth_methods_supported"]
    )


def test_code_flow_with_pkce_gives_a_signed_id_token_with_the_claims(rp: RelyingParty) -> None:
    tokens = rp.sign_in("alice")
    claims = tokens["claims"]
    assert claims["sub"] == subject("alice")
    assert claims["groups"] == ["eng"]
    assert (claims["amr"], claims["acr"]) == (["pwd"], "pwd")
    assert (claims["email"], claims["email_verified"]) == ("alice@example.com", True)
    assert claims["preferred_username"] == "alice" and claims["name"]
    assert {"auth_time", "sid"} <= set(claims)
    assert "refresh_token" in tokens  # without offline_access or prompt=consent
    info = rp.http.get(
        rp.discovery["userinfo_endpoint"], headers={"Authorization": f"Bearer {tokens['access_token']}"}
    ).json()
    assert (info["sub"], info["groups"], info["email"]) == (subject("alice"), ["eng"], "alice@example.com")
    # A code is good once.
    again = rp.token(
        grant_type="authorization_code", code="x", redirect_uri=CALLBACK, code_verifier=rp.verifier
    )
    assert again.json()["error"] == "invalid_grant"


def test_the_one_time_code_makes_it_a_second_factor_sign_in(rp: RelyingParty) -> None:
    claims = rp.sign_in("bob", otp=OTP)["claims"]
    assert (claims["amr"], claims["acr"], claims["groups"]) == (["pwd", "otp"], "mfa", ["leads"])
    assert claims["email"] == "bob@corp.example"


def test_a_refresh_says_the_groups_as_they_are_now(rp: RelyingParty, oidc_provider: OidcProvider) -> None:
    tokens = rp.sign_in("alice")
    oidc_provider.set_groups("alice", ["eng", "oncall"])
    answer = rp.refresh(tokens["refresh_token"])
    assert answer.status_code == 200, answer.text
    assert rp.verify(answer.json()["id_token"])["groups"] == ["eng", "oncall"]


def test_a_disabled_person_cannot_refresh_or_sign_in(rp: RelyingParty, oidc_provider: OidcProvider) -> None:
    tokens = rp.sign_in("carol")
    oidc_provider.disable("carol")
    answer = rp.refresh(tokens["refresh_token"])
    assert (answer.status_code, answer.json()["error"]) == (400, "invalid_grant")
    with pytest.raises(SignInRefused, match="sign-in form again"):
        oidc_provider.sign_in(rp.authorize_url(), "carol", PASSWORDS["carol"])


def test_rotating_keys_signs_with_a_new_kid_and_drops_the_old_one(
    rp: RelyingParty, oidc_provider: OidcProvider
) -> None:
    before = rp.sign_in("alice")
    old = jwt.get_unverified_header(before["id_token"])["kid"]
    new = oidc_provider.rotate_keys()
    assert new != old
    assert [key.key_id for key in rp.jwks().keys] == [new]
    after = rp.sign_in("alice")  # verify() finds its kid in the JWKS
    assert jwt.get_unverified_header(after["id_token"])["kid"] == new
    # Tokens issued before the rotation still refresh, now signed with the new key.
    refreshed = rp.refresh(before["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    assert jwt.get_unverified_header(refreshed.json()["id_token"])["kid"] == new


def test_a_wrong_password_shows_the_form_again(rp: RelyingParty, oidc_provider: OidcProvider) -> None:
    with pytest.raises(SignInRefused, match="sign-in form again") as refused:
        oidc_provider.sign_in(rp.authorize_url(), "alice", "not-the-password")
    assert "Wrong login or password." in refused.value.page
    with pytest.raises(SignInRefused, match="sign-in form again") as refused:
        oidc_provider.sign_in(rp.authorize_url(), "alice", PASSWORDS["alice"], otp="000000")
    assert "Wrong one-time code." in refused.value.page


def test_it_exits_by_itself_when_its_stdin_closes() -> None:
    """So a test run that dies leaves no node behind: stop() only closes stdin and waits."""
    idp = OidcProvider().start()
    process = idp._process
    assert process is not None and process.poll() is None
    idp.stop()
    assert process.returncode == 0, idp.stderr  # not killed (-9): it left by itself
