"""A real OpenID provider for the tests: panva's ``oidc-provider`` run by Node.js on loopback.

Unlike tests/fakes/oidcmock.py (a provider written here, in process), this is the OpenID-certified
library itself (tests/oidcprovider/server.mjs, its version pinned in package-lock.json): its
discovery document, JWKS, authorization endpoint with its own sign-in and consent pages, token
endpoint (authorization code with PKCE S256 required, refresh tokens, client_secret_basic and
client_secret_post) and userinfo. Install it once with ``npm ci --prefix tests/oidcprovider``
(``.ci/run`` does).

People: alice (groups ["eng"], alice@example.com), bob (["leads"], bob@corp.example) and carol (no
groups), each with the password ``PASSWORDS[user]`` and the one-time code ``OTP``; their subject is
``subject(user)``. ID tokens carry sub, groups, email, email_verified, preferred_username, name,
amr, acr, auth_time, nonce and sid; with the one-time code amr is ["pwd", "otp"] and acr "mfa",
without it ["pwd"] and "pwd". A refresh answers a new ID token with the person's groups as they
are then. The test-admin calls go to the provider's /__test__/ API with a bearer token made at
start. The ``oidc_provider`` fixture (tests/conftest.py) is one process per test session (per
xdist worker), its people ``reset()`` before each test; keys and redirect URIs stay.

    with OidcProvider() as idp:                      # or the ``oidc_provider`` fixture
        idp.add_redirect_uri("https://127.0.0.1:8443/oidc/idp/callback")
        callback = idp.sign_in(authorize_url, "alice", PASSWORDS["alice"], otp=OTP)
        idp.set_groups("alice", [])                  # counts at the next refresh
        idp.disable("bob")                           # his refresh: invalid_grant; sign-in refused
        idp.rotate_keys()                            # new kid; the old key leaves the JWKS
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import subprocess
import threading
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

import httpx

__all__ = ["CLIENT_ID", "OTP", "PASSWORDS", "OidcProvider", "SignInRefused", "subject"]

SERVER = Path(__file__).resolve().parent.parent / "oidcprovider" / "server.mjs"
CLIENT_ID = "access-broker"
OTP = "123456"
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
BOUND = 30.0  # seconds: the provider's start (node loads slowly on a busy machine) and its exit
_TIMEOUT = 10.0  # seconds: every HTTP request to it
_HOPS = 12  # redirects and forms on the way from the authorization URL to the callback


def subject(user: str) -> str:
    """The ``sub`` the provider gives ``user``."""
    return f"sub-{user}"


class SignInRefused(AssertionError):
    """The provider showed its sign-in form again (a wrong password, a disabled person) or an
    error page instead of redirecting to the relying party. ``page`` is what it showed."""

    def __init__(self, message: str, page: str) -> None:
        super().__init__(f"{message}: {page[:2000]}")
        self.page = page


class _Forms(HTMLParser):
    """The page's forms: each one's action and its inputs (name -> value)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.forms.append((found.get("action", ""), {}))
        elif tag == "input" and self.forms and "name" in found:
            self.forms[-1][1][found["name"]] = found.get("value", "")


class OidcProvider:
    """The node process running tests/oidcprovider/server.mjs on a random loopback port."""

    def __init__(self, client_secret: str | None = None, client_id: str = CLIENT_ID) -> None:
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        self._admin_token = secrets.token_urlsafe(24)
        self._process: subprocess.Popen[str] | None = None
        self._stderr: list[str] = []
        self.issuer = ""
        self.port = 0
        # One connection pool for the admin calls and every sign-in's browser (each its own
        # cookies): a new httpx client per call would load the CA bundle each time.
        self._transport = httpx.HTTPTransport()
        self._http = httpx.Client(transport=self._transport, timeout=_TIMEOUT)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> OidcProvider:
        """Start node and wait (at most ``BOUND`` seconds) for its "listening" line.

        Raises:
            RuntimeError: node_modules is missing, or the process did not start.
        """
        if not (SERVER.parent / "node_modules" / "oidc-provider").is_dir():
            raise RuntimeError("oidc-provider is not installed: run `npm ci --prefix tests/oidcprovider`")
        env = os.environ | {
            "OIDC_PORT": "0",
            "OIDC_CLIENT_ID": self.client_id,
            "OIDC_CLIENT_SECRET": self.client_secret,
            "OIDC_ADMIN_TOKEN": self._admin_token,
        }
        # stdin stays open as long as we run: when this process dies, node's stdin closes and it exits.
        self._process = subprocess.Popen(
            ["node", str(SERVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        lines: queue.Queue[str] = queue.Queue()
        assert self._process.stdout is not None and self._process.stderr is not None
        for stream, sink in ((self._process.stdout, lines.put), (self._process.stderr, self._stderr.append)):
            threading.Thread(target=_pump, args=(stream, sink), daemon=True).start()
        try:
            ready = json.loads(lines.get(timeout=BOUND))
        except (queue.Empty, ValueError):
            self.stop()
            raise RuntimeError(f"oidc-provider did not start within {BOUND} s: {self.stderr}") from None
        self.issuer, self.port = ready["issuer"], ready["port"]
        return self

    def stop(self) -> None:
        """Close node's stdin (it exits) and wait for it; kill it if it does not."""
        process, self._process = self._process, None
        if process is None:
            return
        self._http.close()
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(BOUND)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(BOUND)

    def __enter__(self) -> OidcProvider:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    @property
    def stderr(self) -> str:
        """What node wrote on stderr so far (its warnings, a handler's stack trace)."""
        return "".join(self._stderr)

    # -- test admin --------------------------------------------------------------------------
    def _admin(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        answer = self._http.post(
            f"{self.issuer}/__test__/{path}",
            json=body or {},
            headers={"Authorization": f"Bearer {self._admin_token}"},
        )
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    def set_groups(self, user: str, groups: list[str]) -> None:
        """``user``'s groups from now on: the next ID token, userinfo answer and refresh say them."""
        self._admin(f"users/{user}/groups", {"groups": groups})

    def disable(self, user: str) -> None:
        """``user`` cannot sign in any more and their refresh tokens are refused (invalid_grant)."""
        self._admin(f"users/{user}/disable")

    def reset(self) -> None:
        """Everyone back as at the start: their first groups, none disabled (keys stay)."""
        self._admin("reset")

    def rotate_keys(self) -> str:
        """A new RSA signing key from now on; the old one is no longer in the JWKS. Its kid."""
        kid: str = self._admin("rotate-keys")["kid"]
        return kid

    def add_redirect_uri(self, uri: str) -> None:
        """Let the client redirect to ``uri`` too (a relying party's callback, once it is known)."""
        self._admin("redirect-uris", {"uri": uri})

    # -- the browser ---------------------------------------------------------------------------
    def _on_provider(self, url: str) -> bool:
        ours, theirs = urlsplit(self.issuer), urlsplit(url)
        return (theirs.scheme, theirs.netloc) == (ours.scheme, ours.netloc)

    def sign_in(self, authorize_url: str, user: str, password: str, otp: str | None = None) -> str:
        """What a browser does at ``authorize_url``: follow the provider's redirects, fill in its
        sign-in form (login, password, the one-time code if given), allow on its consent page.
        Returns the first URL it redirects to off the provider: the relying party's callback,
        with ``code`` and ``state`` (or ``error``) in its query. Nothing is fetched there.

        Raises:
            SignInRefused: the provider showed its sign-in form again or an error page.
        """
        url, method, data = authorize_url, "GET", None
        submitted_login = False
        # Not closed: closing a client closes its transport, the shared pool (stop() closes it).
        browser = httpx.Client(transport=self._transport, timeout=_TIMEOUT, follow_redirects=False)
        for _ in range(_HOPS):
            if not self._on_provider(url):
                return url
            answer = browser.request(method, url, data=data)
            if answer.is_redirect:
                url, method, data = urljoin(str(answer.url), answer.headers["location"]), "GET", None
                continue
            page = answer.text
            parser = _Forms()
            parser.feed(page)
            if answer.status_code != 200 or len(parser.forms) != 1:
                raise SignInRefused(f"the provider answered HTTP {answer.status_code}", page)
            action, fields = parser.forms[0]
            if "password" in fields:
                if submitted_login:
                    raise SignInRefused("the provider showed its sign-in form again", page)
                submitted_login = True
                fields |= {"login": user, "password": password, "otp": otp or ""}
            url, method, data = urljoin(str(answer.url), action), "POST", fields
        raise SignInRefused(f"no redirect to the relying party within {_HOPS} steps", "")


def _pump(stream: IO[str], sink: Callable[[str], None]) -> None:
    with stream:
        for line in iter(stream.readline, ""):
            sink(line)
