"""A CI system's OpenID issuer on loopback (GitHub Actions' shape), run by threads.

It serves ``/.well-known/openid-configuration`` and ``/jwks`` as a real issuer does, and mints
identity tokens with chosen claims, signed with its current key (or any other key, to play a
forger). ``rotate()`` publishes a new key and retires the old one; ``failing = True`` makes it
answer 503 (an issuer that is down); ``fetches`` counts JWKS requests.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["AUDIENCE", "Issuer", "SigningKey", "ci_issuer", "github_claims"]

AUDIENCE = "access-broker"


class SigningKey:
    """An ES256 key with its ``kid``."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.kid = secrets.token_hex(8)

    def jwk(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key()))
        return {**data, "kid": self.kid, "use": "sig", "alg": "ES256"}


def github_claims(repository: str = "acme/payments", **extra: Any) -> dict[str, Any]:
    """The claims GitHub Actions puts in a job's token (those the tests' rules look at)."""
    return {
        "sub": f"repo:{repository}:environment:production",
        "repository": repository,
        "repository_owner": repository.split("/")[0],
        "ref": "refs/heads/main",
        "environment": "production",
        "job_workflow_ref": f"{repository}/.github/workflows/deploy.yml@refs/heads/main",
        "run_id": "4242",
        **extra,
    }


class Issuer:
    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self.key = SigningKey()
        self.published = [self.key]
        self.failing = False
        self.fetches = 0
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def rotate(self) -> SigningKey:
        """A new current key; the old one is no longer published."""
        with self.lock:
            self.key = SigningKey()
            self.published = [self.key]
        return self.key

    def mint(
        self,
        claims: dict[str, Any] | None = None,
        *,
        key: SigningKey | None = None,
        audience: str | list[str] = AUDIENCE,
        lifetime: float = 300,
        **header: Any,
    ) -> str:
        """A token with ``claims`` (default: ``github_claims()``), signed with ``key`` (default:
        the current one), ``iss`` this issuer, ``iat`` now and ``exp`` ``lifetime`` later."""
        now = int(self.now())
        body = {"iss": self.url, "aud": audience, "iat": now, "nbf": now, "exp": int(now + lifetime)}
        body.update(github_claims() if claims is None else claims)
        signer = key or self.key
        return jwt.encode(body, signer.private, algorithm="ES256", headers={"kid": signer.kid, **header})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if issuer.failing:
                    self._send(503, {"error": "down"})
                elif self.path == "/.well-known/openid-configuration":
                    self._send(
                        200,
                        {
                            "issuer": issuer.url,
                            "jwks_uri": f"{issuer.url}/jwks",
                            "id_token_signing_alg_values_supported": ["ES256"],
                            "response_types_supported": ["id_token"],
                            "subject_types_supported": ["public"],
                        },
                    )
                elif self.path == "/jwks":
                    with issuer.lock:
                        issuer.fetches += 1
                        keys = [key.jwk() for key in issuer.published]
                    self._send(200, {"keys": keys})
                else:
                    self._send(404, {"error": "not found"})

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler


@contextmanager
def ci_issuer(now: Callable[[], float]) -> Iterator[Issuer]:
    """A running issuer minting tokens with times from ``now`` (epoch seconds)."""
    running = Issuer(now)
    thread = threading.Thread(target=running.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield running
    finally:
        running.server.shutdown()
        running.server.server_close()
        thread.join(10)
