"""The identities' passwords at rest: AES-256-GCM, keyed from the broker's token signing key.

The key is ``HKDF-SHA256(token signing key's raw private bytes, info="access identities:
passwords v1")``. Why that key and not a file of its own: every replica must unseal what another
sealed, and replicas already share the signing key (they verify each other's tokens), so there
is no second secret to distribute, back up or forget on one replica. The cost: whoever holds the
signing key can also unseal the passwords, which changes little (that holder can already mint
tokens and get grants); rotating the signing key makes sealed passwords unreadable, which fails
closed (``identity_login`` answers None; the grant's next identity gets a new one).

The grant id is the associated data: a sealed password moved to another grant's row does not open.
"""

from __future__ import annotations

import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["Sealer"]

_INFO = b"access identities: passwords v1"
_NONCE = 12


class Sealer:
    """Seal and open passwords with the key derived from ``token_key``."""

    def __init__(self, token_key: Ed25519PrivateKey) -> None:
        raw = token_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(raw)
        self._aead = AESGCM(key)

    def seal(self, grant_id: str, password: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        return nonce + self._aead.encrypt(nonce, password.encode(), grant_id.encode())

    def open(self, grant_id: str, sealed: bytes) -> str | None:
        """The password, or None when it does not open (another key, another grant, tampered)."""
        try:
            return self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], grant_id.encode()).decode()
        except (InvalidTag, ValueError):
            return None
