"""The broker's Ed25519 keys: one signs access tokens, one signs audit checkpoints.

Keys are PEM files, created on first start with mode 0600. Replicas that share a database
must share both files (mount the same secret); see docs/broker.md. ``derived_secret`` turns
a key into a symmetric secret for one purpose (the audit key keys the tags that stand in for
names nobody has, see ``auth.tags``), so no third key file is needed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = ["derived_secret", "key_id", "load_key", "load_or_create_key", "public_pem"]


def load_key(path: Path) -> Ed25519PrivateKey:
    """Load the Ed25519 private key at ``path`` (it must exist: nothing is created).

    Raises:
        ValueError: the file is readable by group or others, or is not an Ed25519 key.
        OSError: the file cannot be read (``FileNotFoundError`` when it is missing).
    """
    mode = path.stat().st_mode & 0o077
    if mode:
        raise ValueError(f"{path} is readable by group or others: run `chmod 600 {path}`")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:  # not PEM, or encrypted with a password
        raise ValueError(
            f"{path} is not an unencrypted PEM private key: move it away to have a new one created"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """Load the Ed25519 key at ``path``, creating it (mode 0600) if it does not exist.

    Raises:
        ValueError: the file exists but is readable by group or others, or is not an Ed25519 key.
        OSError: the file or its directory cannot be read or written.
    """
    if path.exists():
        return load_key(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """A short stable id for a key: base64url of the first 12 bytes of SHA-256 of the raw public key."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.urlsafe_b64encode(hashlib.sha256(raw).digest()[:12]).decode().rstrip("=")


def derived_secret(key: Ed25519PrivateKey, purpose: str) -> bytes:
    """32 bytes for ``purpose``: HMAC-SHA256 keyed with ``key``'s raw private bytes.

    The same key and purpose give the same secret on every replica; other purposes, or the
    public key, reveal nothing about it.
    """
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return hmac.new(raw, purpose.encode(), hashlib.sha256).digest()
