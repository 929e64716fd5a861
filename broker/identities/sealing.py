"""Secrets at rest: AES-256-GCM, keyed from the broker's token signing key.

The identities' passwords use the key ``HKDF-SHA256(token signing key's raw private bytes,
info="access identities: passwords v1")``; other secrets the store keeps (the targets'
PostgreSQL cancel keys, ``tunnel.cancels``) use a key of their own from another ``info``
(``derive_key``), so one kind of sealed value never opens as another.

Why that key and not a file of its own: every replica must unseal what another sealed, and
replicas already share the signing key (they verify each other's tokens), so there is no second
secret to distribute, back up or forget on one replica. The cost: whoever holds the signing key
can also unseal the passwords, which changes little (that holder can already mint tokens and get
grants). A rotation keeps the old key in ``previous_signing_key_files``, so what it sealed still
opens; a key dropped from there makes what only it sealed unreadable, which fails closed
(``identity_login`` answers None; the grant's next identity gets a new one).

The grant id is the associated data: a sealed password moved to another grant's row does not open.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["Sealer", "derive_key"]

_INFO = b"access identities: passwords v1"
_NONCE = 12


def derive_key(token_key: Ed25519PrivateKey, info: bytes) -> bytes:
    """32 bytes for one purpose (``info``), derived from the token signing key (HKDF-SHA256)."""
    raw = token_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(raw)


class Sealer:
    """Seal and open secrets with the key derived from ``token_key`` for ``info`` (by default
    the identities' passwords').

    ``token_key`` may be the broker's ring (``Broker.token_ring``): the first key seals, and what
    an older key sealed still opens, so a rotation of the signing key loses no stored secret.
    """

    def __init__(
        self, token_key: Ed25519PrivateKey | Sequence[Ed25519PrivateKey], info: bytes = _INFO
    ) -> None:
        keys = (token_key,) if isinstance(token_key, Ed25519PrivateKey) else tuple(token_key)
        if not keys:
            raise ValueError("a sealer needs a key")
        self._aeads = [AESGCM(derive_key(key, info)) for key in keys]
        self._aead = self._aeads[0]

    def seal(self, grant_id: str, password: str) -> bytes:
        return self.seal_bytes(grant_id, password.encode())

    def open(self, grant_id: str, sealed: bytes) -> str | None:
        """The password, or None when it does not open (another key, another grant, tampered)."""
        opened = self.open_bytes(grant_id, sealed)
        try:
            return None if opened is None else opened.decode()
        except ValueError:
            return None

    def seal_bytes(self, associated: str, data: bytes) -> bytes:
        """``data`` sealed; it opens only with the same ``associated`` text."""
        nonce = secrets.token_bytes(_NONCE)
        return nonce + self._aead.encrypt(nonce, data, associated.encode())

    def open_bytes(self, associated: str, sealed: bytes) -> bytes | None:
        """What ``seal_bytes`` sealed, or None when it does not open."""
        return self.open_bytes_with(associated, sealed)[0]

    def open_bytes_with(self, associated: str, sealed: bytes) -> tuple[bytes | None, bool]:
        """``open_bytes``, and whether an older key of the ring opened it (then seal it again)."""
        for index, aead in enumerate(self._aeads):
            try:
                return aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], associated.encode()), index > 0
            except (InvalidTag, ValueError):
                continue
        return None, False
