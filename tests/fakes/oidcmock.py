"""An OpenID provider in process, for httpx.MockTransport: the unit tests' upstream.

It serves discovery, the JWKS and the token endpoint as a real provider does (PKCE S256 checked,
client_secret_basic checked, codes single use, refresh tokens rotated) and lets a test change
anything: the discovery document (``discovery``), the keys (``rotate``), what the next ID token
says (``claims``, ``header``, ``key``), a person's groups (``groups``), a refused refresh
(``refuse_refresh``), or no answer at all (``down``). The browser's visit is ``authorize``:
it reads the authorization URL and answers with a code, as a sign-in would.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt

from tests.fakes.ciissuer import SigningKey

__all__ = ["CLIENT_ID", "CLIENT_SECRET", "ISSUER", "FakeProvider", "loopback_provider", "provider_settings"]

ISSUER = "https://idp.test"
CLIENT_ID = "access-broker"
CLIENT_SECRET = "s3cret-of-the-broker-at-the-idp"


def provider_settings(**changes: Any) -> dict[str, Any]:
    """One entry of ACCESS_BROKER_OIDC_PROVIDERS for this provider (the secret in $IDP_SECRET)."""
    return {
        "name": "idp",
        "display_name": "Example IdP",
        "issuer": ISSUER,
        "client_id": CLIENT_ID,
        "client_secret_env": "IDP_SECRET",
        **changes,
    }


@dataclass
class _Grant:
    user: str
    nonce: str
    challenge: str
    redirect_uri: str


@dataclass
class FakeProvider:
    now: Any = time.time  # () -> float: the provider's clock
    issuer: str = ISSUER
    key: SigningKey = field(default_factory=SigningKey)
    published: list[SigningKey] = field(default_factory=list)
    discovery: dict[str, Any] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=lambda: {"alice": ["eng"], "carol": []})
    claims: dict[str, Any] = field(default_factory=dict)  # added to (or, None: removed from) the next tokens
    header: dict[str, Any] = field(default_factory=dict)
    signer: Any = None  # sign with this instead (a forger's key, or a str for HS256)
    refuse_refresh: bool = False
    refresh_without_id_token: bool = False
    issue_refresh_tokens: bool = True
    down: bool = False
    userinfo_sub: str | None = None  # answer userinfo about another subject
    disabled: set[str] = field(default_factory=set)
    requests: list[str] = field(default_factory=list)
    _codes: dict[str, _Grant] = field(default_factory=dict)
    _refresh: dict[str, str] = field(default_factory=dict)  # refresh token -> user
    _access: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.published = [self.key]
        issuer = self.issuer
        self.discovery = {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/token",
            "userinfo_endpoint": f"{issuer}/userinfo",
            "jwks_uri": f"{issuer}/jwks",
            "id_token_signing_alg_values_supported": ["ES256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        }

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def rotate(self) -> SigningKey:
        """A new signing key; the old one is no longer published."""
        self.key = SigningKey()
        self.published = [self.key]
        return self.key

    # The same surface as tests/fakes/oidcprovider.py (the real oidc-provider), so an end-to-end
    # test can run against either.
    def set_groups(self, user: str, groups: list[str]) -> None:
        self.groups[user] = list(groups)

    def disable(self, user: str) -> None:
        """The person is disabled here: their refresh tokens are refused."""
        self.disabled.add(user)

    def rotate_keys(self) -> str:
        return self.rotate().kid

    def add_redirect_uri(self, uri: str) -> None:
        """Any redirect URI is accepted here (the code is bound to the one asked for)."""

    def sign_in(self, authorize_url: str, user: str, password: str = "", otp: str | None = None) -> str:
        """The browser signs in at the authorization URL: the callback URL it is sent back to."""
        if otp is not None:
            self.claims = {**self.claims, "amr": ["pwd", "otp"]}
        code, state = self.authorize(authorize_url, user)
        redirect = self._codes[code].redirect_uri
        return f"{redirect}?{urlencode({'code': code, 'state': state})}"

    def authorize(self, url: str, user: str = "alice") -> tuple[str, str]:
        """The browser at the authorization URL, signed in as ``user``: ``(code, state)``."""
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        assert url.startswith(f"{self.issuer}/authorize?"), url
        assert query["response_type"] == "code" and query["client_id"] == CLIENT_ID
        assert query["code_challenge_method"] == "S256" and "openid" in query["scope"].split()
        code = secrets.token_urlsafe(16)
        self._codes[code] = _Grant(user, query["nonce"], query["code_challenge"], query["redirect_uri"])
        return code, query["state"]

    def id_token(self, user: str, nonce: str | None = None, **extra: Any) -> str:
        now = int(self.now())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": f"sub-{user}",
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 3600,
            "preferred_username": user,
            "email": f"{user}@example.com",
            "email_verified": True,
            "groups": list(self.groups.get(user, [])),
            "amr": ["pwd"],
            "auth_time": now,
        }
        if nonce is not None:
            claims["nonce"] = nonce
        claims.update(extra)
        claims.update(self.claims)
        claims = {k: v for k, v in claims.items() if v is not None}
        header = {"kid": self.key.kid, **self.header}
        if isinstance(self.signer, str):  # an HMAC forgery keyed with text (the public key, say)
            return jwt.encode(claims, self.signer, algorithm="HS256", headers=header)
        key = self.signer or self.key
        return jwt.encode(claims, key.private, algorithm="ES256", headers={"kid": key.kid, **self.header})

    # -- HTTP -------------------------------------------------------------------------------
    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.path}")
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        path = request.url.path
        if path == "/.well-known/openid-configuration":
            return httpx.Response(200, json=self.discovery)
        if path == "/jwks":
            return httpx.Response(200, json={"keys": [key.jwk() for key in self.published]})
        if path == "/token":
            return self._token(request)
        if path == "/userinfo":
            user = self._access.get(request.headers.get("authorization", "").removeprefix("Bearer "))
            if user is None:
                return httpx.Response(401, json={"error": "invalid_token"})
            return httpx.Response(
                200,
                json={
                    "sub": self.userinfo_sub or f"sub-{user}",
                    "preferred_username": user,
                    "email": f"{user}@example.com",
                    "email_verified": True,
                    "groups": self.groups.get(user, []),
                },
            )
        return httpx.Response(404)

    def _token(self, request: httpx.Request) -> httpx.Response:
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        if self.discovery.get("token_endpoint_auth_methods_supported") == ["client_secret_post"]:
            authenticated = (form.get("client_id"), form.get("client_secret")) == (CLIENT_ID, CLIENT_SECRET)
            authenticated = authenticated and "authorization" not in request.headers
        else:
            expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
            authenticated = request.headers.get("authorization") == f"Basic {expected}"
        if not authenticated:
            return httpx.Response(401, json={"error": "invalid_client"})
        if form.get("grant_type") == "authorization_code":
            grant = self._codes.pop(form.get("code", ""), None)
            if grant is None or form.get("redirect_uri") != grant.redirect_uri:
                return httpx.Response(400, json={"error": "invalid_grant", "error_description": "bad code"})
            digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
            if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != grant.challenge:
                return httpx.Response(400, json={"error": "invalid_grant", "error_description": "PKCE"})
            return self._tokens(grant.user, self.id_token(grant.user, grant.nonce))
        if form.get("grant_type") == "refresh_token":
            user = self._refresh.pop(form.get("refresh_token", ""), None)
            if user is None or self.refuse_refresh or user in self.disabled:
                return httpx.Response(400, json={"error": "invalid_grant", "error_description": "gone"})
            return self._tokens(user, None if self.refresh_without_id_token else self.id_token(user))
        return httpx.Response(400, json={"error": "unsupported_grant_type"})

    def _tokens(self, user: str, id_token: str | None) -> httpx.Response:
        access = secrets.token_urlsafe(16)
        self._access[access] = user
        body: dict[str, Any] = {"access_token": access, "token_type": "Bearer", "expires_in": 300}
        if id_token is not None:
            body["id_token"] = id_token
        if self.issue_refresh_tokens:
            refresh = secrets.token_urlsafe(16)
            self._refresh[refresh] = user
            body["refresh_token"] = refresh
        return httpx.Response(
            200, content=json.dumps(body).encode(), headers={"content-type": "application/json"}
        )


@contextmanager
def loopback_provider() -> Iterator[FakeProvider]:
    """The same provider over real HTTP on 127.0.0.1 (a thread), for the real broker process:
    its issuer is ``http://127.0.0.1:<port>`` (plain HTTP, which the broker allows on loopback)."""
    lock = threading.Lock()
    holder: list[FakeProvider] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(min(length, 64 * 1024)) if length else b""
            request = httpx.Request(
                self.command, holder[0].issuer + self.path, headers=dict(self.headers.items()), content=body
            )
            try:
                with lock:
                    response = holder[0].handle(request)
            except httpx.ConnectError:
                self.close_connection = True  # "down": drop the connection without an answer
                return
            content = response.read()
            self.send_response(response.status_code)
            self.send_header("content-type", response.headers.get("content-type", "application/json"))
            self.send_header("content-length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    holder.append(FakeProvider(issuer=f"http://127.0.0.1:{server.server_address[1]}"))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield holder[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
