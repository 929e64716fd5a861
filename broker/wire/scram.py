"""SCRAM-SHA-256's client proof (RFC 5802, RFC 7677) with the salted password cached per login.

scramp speaks the protocol for the broker (the client-first message and its nonce, the checks
on the server-first message), but derives the salted password anew for every login: PBKDF2 with
the server's iteration count, about 3 ms for PostgreSQL's 4096, on the tunnel's event loop, for
every new connection. SCRAM lets a client keep it (RFC 5802 section 5.1: "the client can cache
SaltedPassword"), since the server's salt and iteration count stay the same for a password, so
the broker derives it once per (password, salt, iterations) and keeps it, in memory only, for
the ``CACHE_ENTRIES`` most recent. What is computed from it here is the RFC's arithmetic, a few
HMACs; the cache's key holds a SHA-256 of the password, never the password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
from collections import OrderedDict
from typing import Final

from scramp.utils import saslprep

__all__ = ["CACHE_ENTRIES", "ClientFinal", "client_final", "derivations"]

CACHE_ENTRIES: Final = 512
_cache: OrderedDict[tuple[bytes, bytes, int], bytes] = OrderedDict()
_lock = threading.Lock()
_derived = 0


def derivations() -> int:
    """How many salted passwords this process has derived (PBKDF2 runs) since it started."""
    return _derived


def _salted(password: str, salt: bytes, iterations: int) -> bytes:
    global _derived
    # Keyed by the password as given (SASLprep is a function of it, and costs ~200 µs in Python).
    key = (hashlib.sha256(password.encode("utf-8", "surrogatepass")).digest(), salt, iterations)
    with _lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
            return found
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode("utf-8"), salt, iterations)
    with _lock:
        _derived += 1
        _cache[key] = salted
        while len(_cache) > CACHE_ENTRIES:
            _cache.popitem(last=False)
    return salted


class ClientFinal:
    """The client-final message, and the server signature the server-final must carry."""

    __slots__ = ("message", "server_signature")

    def __init__(self, message: str, server_signature: bytes) -> None:
        self.message = message
        self.server_signature = server_signature

    def server_proved(self, server_final: str) -> bool:
        """Whether ``server_final`` (``v=...``) proves the server knows the password (constant time)."""
        if not server_final.startswith("v="):
            return False
        try:
            given = base64.b64decode(server_final[2:].split(",", 1)[0], validate=True)
        except ValueError:
            return False
        return hmac.compare_digest(given, self.server_signature)


def client_final(
    *, password: str, salt: bytes, iterations: int, nonce: str, client_first_bare: str, server_first: str
) -> ClientFinal:
    """RFC 5802's client-final-message without channel binding (gs2 header ``n,,``)."""
    salted = _salted(password, salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = f"c=biws,r={nonce}"  # base64("n,,")
    auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(stored_key, auth_message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return ClientFinal(
        f"{without_proof},p={base64.b64encode(proof).decode()}",
        hmac.digest(server_key, auth_message, "sha256"),
    )
