"""The authorization code flow with PKCE against one provider: Authlib's sans-I/O helpers build
the requests (``prepare_grant_uri``, ``prepare_token_request``, ``ClientAuth``), the broker's
bounded client (``auth.jwks``: 5 seconds, a size cap, no redirects) sends them.

Endpoints come from the provider's discovery document, fetched and cached with its keys
(``KeyCache.discovery``), its ``issuer`` checked to be the one configured. The client
authenticates with ``client_secret_basic`` unless the provider announces only
``client_secret_post``. PKCE is S256 always: a provider that announces
``code_challenge_methods_supported`` without S256 is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from authlib.common.security import generate_token
from authlib.oauth2.auth import ClientAuth
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from access.broker.auth.jwks import KeyCache, KeyUnavailable, fetch_json
from access.broker.auth.upstream.config import OidcProvider
from access.broker.clock import Clock
from access.shared.net import check_remote_url

__all__ = [
    "Endpoints",
    "TokenRefused",
    "authorization_url",
    "endpoints",
    "fetch_userinfo",
    "new_code_verifier",
    "redeem_code",
    "redeem_refresh_token",
    "with_userinfo",
]


class TokenRefused(Exception):
    """The token endpoint said no (``error``: ``invalid_grant`` when the grant is gone)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description


@dataclass(frozen=True)
class Endpoints:
    authorization: str
    token: str
    userinfo: str | None
    auth_method: str  # client_secret_basic | client_secret_post


def _url(document: dict[str, Any], key: str, provider: OidcProvider, required: bool = True) -> str | None:
    value = document.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise KeyUnavailable(f"the discovery document of {provider.issuer} has no {key}")
    try:
        check_remote_url(key, value)
    except ValueError as exc:
        raise KeyUnavailable(f"{provider.issuer}: {exc}") from None
    return value


def endpoints(keys: KeyCache, provider: OidcProvider, clock: Clock) -> Endpoints:
    """The provider's endpoints, from its (cached) discovery document.

    Raises:
        KeyUnavailable: the document cannot be fetched, lacks an endpoint, or the provider
            supports neither S256 nor a client secret method we use.
    """
    document = keys.discovery(provider, clock)
    methods = document.get("code_challenge_methods_supported")
    if isinstance(methods, list) and "S256" not in methods:
        raise KeyUnavailable(f"{provider.issuer} does not support PKCE with S256")
    auth_methods = document.get("token_endpoint_auth_methods_supported")
    # Discovery's default is client_secret_basic (OpenID Connect Discovery 1.0, section 3).
    offered = auth_methods if isinstance(auth_methods, list) else ["client_secret_basic"]
    if "client_secret_basic" in offered:
        method = "client_secret_basic"
    elif "client_secret_post" in offered:
        method = "client_secret_post"
    else:
        raise KeyUnavailable(f"{provider.issuer} accepts neither client_secret_basic nor client_secret_post")
    authorization = _url(document, "authorization_endpoint", provider)
    token = _url(document, "token_endpoint", provider)
    assert authorization is not None and token is not None
    return Endpoints(authorization, token, _url(document, "userinfo_endpoint", provider, False), method)


def new_code_verifier() -> str:
    """A PKCE code verifier (RFC 7636: 43 to 128 characters; 64 here)."""
    return str(generate_token(64))


def authorization_url(
    found: Endpoints,
    provider: OidcProvider,
    redirect_uri: str,
    state: str,
    nonce: str,
    verifier: str,
    *,
    step_up: bool = False,
) -> str:
    """Where the browser goes to sign in: the code flow with PKCE S256, ``state`` and ``nonce``.

    ``step_up`` (``access login --mfa``): ask the provider to authenticate the person again now
    (``prompt=login``, ``max_age=0``: OpenID Connect Core 3.1.2.1), with the ``acr`` values that
    count as a second factor when the provider is configured with some, so the ID token's
    ``auth_time`` is fresh and its ``amr``/``acr`` are about this sign-in."""
    extra: dict[str, str] = {}
    if step_up:
        extra = {"prompt": "login", "max_age": "0"}
        if provider.mfa_acr:
            extra["acr_values"] = " ".join(provider.mfa_acr)
    return str(
        prepare_grant_uri(
            found.authorization,
            provider.client_id,
            "code",
            redirect_uri=redirect_uri,
            scope=" ".join(provider.scopes),
            state=state,
            nonce=nonce,
            code_challenge=create_s256_code_challenge(verifier),
            code_challenge_method="S256",
            **extra,
        )
    )


def _token_request(keys: KeyCache, found: Endpoints, provider: OidcProvider, body: str) -> dict[str, Any]:
    auth = ClientAuth(provider.client_id, provider.client_secret, found.auth_method)
    _, headers, body = auth.prepare("POST", found.token, {}, body)
    with keys.http() as http:
        status, answer = fetch_json(
            http, "POST", found.token, "the token endpoint", data=body, headers=headers
        )
    if status == 200:
        return answer
    error = answer.get("error")
    if status in (400, 401) and isinstance(error, str):
        description = answer.get("error_description")
        raise TokenRefused(error[:64], description[:300] if isinstance(description, str) else "")
    raise KeyUnavailable(f"the token endpoint of {provider.issuer} answered HTTP {status}")


def redeem_code(
    keys: KeyCache, found: Endpoints, provider: OidcProvider, code: str, redirect_uri: str, verifier: str
) -> dict[str, Any]:
    """The token response for an authorization ``code``.

    Raises:
        TokenRefused: the provider refused the code (used, expired, another client's).
        KeyUnavailable: the provider did not answer usefully (down, 5xx, garbage).
    """
    body = prepare_token_request(
        "authorization_code", code=code, redirect_uri=redirect_uri, code_verifier=verifier
    )
    return _token_request(keys, found, provider, str(body))


def redeem_refresh_token(
    keys: KeyCache, found: Endpoints, provider: OidcProvider, refresh_token: str
) -> dict[str, Any]:
    """The token response for an upstream refresh token.

    Raises:
        TokenRefused: the provider refused it (``invalid_grant``: the person was disabled,
            removed, or signed out there).
        KeyUnavailable: the provider did not answer usefully.
    """
    body = prepare_token_request("refresh_token", refresh_token=refresh_token)
    return _token_request(keys, found, provider, str(body))


def fetch_userinfo(keys: KeyCache, found: Endpoints, access_token: str) -> dict[str, Any]:
    """The userinfo claims for an upstream access token.

    Raises:
        KeyUnavailable: no userinfo endpoint, or no good answer from it.
    """
    if found.userinfo is None:
        raise KeyUnavailable("the provider has no userinfo endpoint")
    with keys.http() as http:
        status, answer = fetch_json(
            http,
            "GET",
            found.userinfo,
            "the userinfo endpoint",
            headers={"Authorization": f"Bearer {access_token}"},
        )
    if status != 200:
        raise KeyUnavailable(f"the userinfo endpoint answered HTTP {status}")
    return answer


def with_userinfo(
    keys: KeyCache, found: Endpoints, provider: OidcProvider, claims: dict[str, Any], answer: dict[str, Any]
) -> dict[str, Any]:
    """``claims`` (a validated ID token's) completed from userinfo when they lack the groups or a
    name: many providers put the scopes' claims only there (OpenID Connect Core 5.4, and
    oidc-provider's default). The ID token's claims win; userinfo's ``sub`` must be its.

    Raises:
        KeyUnavailable: userinfo was needed and could not be read.
        ValueError: userinfo is about another subject.
    """
    wanted = (provider.groups_claim, provider.username_claim, "email")
    access = answer.get("access_token")
    if all(name in claims for name in wanted) or found.userinfo is None or not isinstance(access, str):
        return claims
    info = fetch_userinfo(keys, found, access)
    # Core 5.3.2: a userinfo answer for another sub must not be used.
    if info.get("sub") != claims.get("sub"):
        raise ValueError("userinfo is about another person than the ID token")
    return {**info, **claims}
