"""The signing keys of trusted CI issuers: discovery, JWKS, caching and key rotation.

For each issuer the broker reads ``{issuer}/.well-known/openid-configuration`` (unless the
settings give ``jwks_uri``), then the JWKS, and keeps the keys for ``MAX_AGE`` seconds. A token
whose ``kid`` is not in the cached set makes one refetch (an issuer rotating its keys), at most
one per ``REFETCH_AFTER`` seconds per issuer, so tokens with made-up ``kid`` values cannot make
the broker hammer the issuer. Every fetch is bounded: ``TIMEOUT`` seconds in all and
``MAX_BYTES`` of body; no redirects.

Fail closed: when the keys cannot be fetched (the issuer is down, answers garbage, announces
no acceptable algorithm) no token of that issuer is accepted until they can; a set older than
``MAX_AGE`` is not used past a failed refetch.

Keys are used only for the algorithm family they are of (RSA: RS*/PS*, EC: ES*, OKP: EdDSA),
never an ``oct`` (symmetric) key, and only for the ``alg`` the key itself names when it names one.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import jwt

from access.broker.auth.citrust import ALLOWED_ALGORITHMS
from access.broker.clock import Clock
from access.shared.net import check_remote_url

__all__ = ["KeyCache", "KeySource", "KeyUnavailable", "UnknownKey", "fetch_json"]

TIMEOUT = 5.0
MAX_BYTES = 256 * 1024
MAX_AGE = 600.0
REFETCH_AFTER = 30.0
MAX_KEYS = 64

_FAMILY = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


class KeySource(Protocol):
    """An issuer whose keys the cache fetches: a CI issuer, or an upstream OIDC provider."""

    @property
    def issuer(self) -> str: ...

    @property
    def jwks_uri(self) -> str | None: ...

    @property
    def algorithms(self) -> tuple[str, ...] | None: ...


class KeyUnavailable(Exception):
    """The issuer's keys could not be fetched or are unusable: refuse (fail closed)."""


class UnknownKey(Exception):
    """The token names a key the issuer does not publish (or no key fits its algorithm)."""


@dataclass
class _Entry:
    fetched_at: float
    keys: list[dict[str, Any]]
    algorithms: frozenset[str]
    # The discovery document (None when the settings pinned jwks_uri and algorithms).
    document: dict[str, Any] | None = None


@dataclass
class KeyCache:
    """Per-process cache of each issuer's keys; safe to share between threads."""

    transport: httpx.BaseTransport | None = None
    # At most one refetch for an unknown kid per this many seconds per issuer.
    refetch_after: float = REFETCH_AFTER
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _attempted: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def signing_key(self, issuer: KeySource, kid: str | None, alg: str, clock: Clock) -> jwt.PyJWK:
        """The key that must have signed a token of ``issuer`` with header ``kid`` and ``alg``.

        Raises:
            KeyUnavailable: the keys could not be fetched (now or within ``MAX_AGE``).
            UnknownKey: ``alg`` is not accepted for this issuer, or no published key has ``kid``.
        """
        with self._lock:
            entry = self._current(issuer, clock)
            # Before any key is looked at: ``none`` and HMAC are never in the accepted set.
            if alg not in self._accepted(issuer, entry):
                raise UnknownKey(f"the token's algorithm {alg[:20]!r} is not accepted for this issuer")
            found = _pick(entry.keys, kid, alg)
            if found is None and self._may_refetch(issuer, clock):
                entry = self._fetch(issuer, clock)
                found = _pick(entry.keys, kid, alg)
        if found is None:
            raise UnknownKey("the token is signed by a key the issuer does not publish")
        try:
            return jwt.PyJWK(found, algorithm=alg)
        except jwt.PyJWTError as exc:
            raise UnknownKey(f"the issuer's key {kid!r} is unusable: {exc}") from exc

    def discovery(self, issuer: KeySource, clock: Clock) -> dict[str, Any]:
        """The issuer's discovery document, as last fetched (at most ``MAX_AGE`` old), its
        ``issuer`` checked to be the one asked for.

        Raises:
            KeyUnavailable: it could not be fetched, or the settings pinned the keys (no discovery).
        """
        with self._lock:
            entry = self._current(issuer, clock)
        if entry.document is None:
            raise KeyUnavailable(f"{issuer.issuer}: no discovery document (its jwks_uri is pinned)")
        return entry.document

    @contextmanager
    def http(self) -> Iterator[httpx.Client]:
        """A client bounded as the key fetches are (``TIMEOUT``, no redirects), on this cache's
        transport: for the other requests to the same issuers (token endpoints)."""
        with httpx.Client(timeout=TIMEOUT, transport=self.transport, follow_redirects=False) as http:
            yield http

    def _accepted(self, issuer: KeySource, entry: _Entry) -> frozenset[str]:
        return frozenset(issuer.algorithms) if issuer.algorithms is not None else entry.algorithms

    def _current(self, issuer: KeySource, clock: Clock) -> _Entry:
        entry = self._entries.get(issuer.issuer)
        if entry is not None and clock.monotonic() - entry.fetched_at < MAX_AGE:
            return entry
        return self._fetch(issuer, clock)

    def _may_refetch(self, issuer: KeySource, clock: Clock) -> bool:
        last = self._attempted.get(issuer.issuer)
        return last is None or clock.monotonic() - last >= self.refetch_after

    def _fetch(self, issuer: KeySource, clock: Clock) -> _Entry:
        self._attempted[issuer.issuer] = clock.monotonic()
        self._entries.pop(issuer.issuer, None)  # a failed refetch leaves nothing stale behind
        discovered: dict[str, Any] | None = None
        with self.http() as http:
            jwks_uri, announced = issuer.jwks_uri, frozenset(ALLOWED_ALGORITHMS)
            if jwks_uri is None or issuer.algorithms is None:
                jwks_uri, announced, discovered = _discover(http, issuer)
            document = _get_json(http, jwks_uri, "the JWKS")
        raw = document.get("keys")
        if not isinstance(raw, list) or not raw:
            raise KeyUnavailable(f"the JWKS of {issuer.issuer} holds no keys")
        keys = [key for key in raw[:MAX_KEYS] if _usable(key)]
        if not keys:
            raise KeyUnavailable(f"the JWKS of {issuer.issuer} holds no usable signing key")
        entry = _Entry(clock.monotonic(), keys, announced, discovered)
        self._entries[issuer.issuer] = entry
        return entry


def _discover(http: httpx.Client, issuer: KeySource) -> tuple[str, frozenset[str], dict[str, Any]]:
    """The issuer's ``jwks_uri`` (the setting's if given), the acceptable algorithms it announces,
    and the whole document."""
    url = issuer.issuer + "/.well-known/openid-configuration"
    document = _get_json(http, url, "the discovery document")
    # OpenID Connect Discovery 1.0 section 4.3: the document must name the very issuer asked for.
    if document.get("issuer") != issuer.issuer:
        raise KeyUnavailable(f"the discovery document of {issuer.issuer} names another issuer")
    jwks_uri = issuer.jwks_uri or document.get("jwks_uri")
    if not isinstance(jwks_uri, str):
        raise KeyUnavailable(f"the discovery document of {issuer.issuer} has no jwks_uri")
    try:
        check_remote_url("jwks_uri", jwks_uri)
    except ValueError as exc:
        raise KeyUnavailable(f"{issuer.issuer}: {exc}") from None
    values = document.get("id_token_signing_alg_values_supported")
    announced = (
        frozenset(v for v in values if isinstance(v, str)) if isinstance(values, list) else frozenset()
    )
    algorithms = announced & ALLOWED_ALGORITHMS
    if not algorithms and issuer.algorithms is None:
        raise KeyUnavailable(
            f"{issuer.issuer} announces no accepted signing algorithm; pin `algorithms` in its settings"
        )
    return jwks_uri, algorithms, document


def _get_json(http: httpx.Client, url: str, what: str) -> dict[str, Any]:
    status, document = fetch_json(http, "GET", url, what)
    if status != 200:
        raise KeyUnavailable(f"{what} at {url} answered HTTP {status}")
    return document


def fetch_json(
    http: httpx.Client,
    method: str,
    url: str,
    what: str,
    *,
    data: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """``method`` ``url`` (a form ``data`` body if given); the status and the JSON object answered,
    at most ``MAX_BYTES`` of it. A non-JSON answer to a status other than 200 is ``{}``.

    Raises:
        KeyUnavailable: no answer (a timeout, a refused connection), a body too large, or a
            200 whose body is not a JSON object.
    """
    sent = {"Accept": "application/json", **(headers or {})}
    if data is not None:
        sent["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        with http.stream(method, url, headers=sent, content=data) as response:
            status = response.status_code
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_BYTES:
                    raise KeyUnavailable(f"{what} at {url} is larger than {MAX_BYTES} bytes")
    except httpx.HTTPError as exc:
        raise KeyUnavailable(f"cannot fetch {what} at {url}: {type(exc).__name__}") from None
    try:
        document = json.loads(body)
    except ValueError:
        if status != 200:
            return status, {}
        raise KeyUnavailable(f"{what} at {url} is not JSON") from None
    if not isinstance(document, dict):
        if status != 200:
            return status, {}
        raise KeyUnavailable(f"{what} at {url} is not a JSON object")
    return status, document


def _usable(key: Any) -> bool:
    return (
        isinstance(key, dict)
        and key.get("kty") in ("RSA", "EC", "OKP")
        and key.get("use", "sig") == "sig"
        and (not isinstance(key.get("key_ops"), list) or "verify" in key["key_ops"])
    )


def _pick(keys: list[dict[str, Any]], kid: str | None, alg: str) -> dict[str, Any] | None:
    """The key for ``kid`` that fits ``alg``; without a kid, the only key that fits."""
    fits = [key for key in keys if key.get("kty") == _FAMILY.get(alg[:2]) and key.get("alg", alg) == alg]
    if kid is None:
        return fits[0] if len(fits) == 1 else None
    return next((key for key in fits if key.get("kid") == kid), None)
