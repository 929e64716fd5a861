"""Access tokens whose signature already checked: their claims, by the token's SHA-256, until expiry.

Verifying an access token (``auth.tokens``) decodes it and checks its Ed25519 signature on every
request: about a tenth of the broker's CPU for a grant request. What that check establishes
about a given token never changes, so its outcome is kept here, for tokens that passed only
(a forged or malformed token is checked, and refused, every time; it never takes room here).
Everything that can change is still checked on each use by ``auth.tokens``: the times against
the broker's clock, and in the database the session behind the token (revoked, expired, the
principal disabled). An entry also names the key and the issuer it was verified with; under
another, it does not count.

Bounded: at most ``MAX_ENTRIES``; when full, the expired entries go first, then the oldest.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["MAX_ENTRIES", "AccessClaims", "VerifiedToken", "VerifiedTokens"]

# A sign-in's token lives minutes (``access_token_ttl``): this is thousands of active clients,
# a few MB at most.
MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class AccessClaims:
    """An access token's claims (``auth.tokens.verify_access_token``)."""

    subject: str  # principal id
    session_id: str
    token_id: str
    client_id: str
    issued_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class VerifiedToken:
    """What a valid signature, type, issuer and audience established about one token."""

    key: Ed25519PrivateKey  # the key it was verified with (compared by identity)
    issuer: str
    claims: AccessClaims
    not_before: datetime | None


class VerifiedTokens:
    """Thread-safe, bounded map of token digest -> ``VerifiedToken``."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: dict[bytes, VerifiedToken] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes, *, key: Ed25519PrivateKey, issuer: str) -> VerifiedToken | None:
        """The entry for ``digest`` if it was verified with ``key`` for ``issuer``, else None."""
        entry = self._entries.get(digest)
        if entry is None or entry.key is not key or entry.issuer != issuer:
            return None
        return entry

    def put(self, digest: bytes, entry: VerifiedToken, now: datetime) -> None:
        """Keep ``entry``; when full, first drop the entries expired at ``now``, then the oldest."""
        with self._lock:
            if digest not in self._entries and len(self._entries) >= self.max_entries:
                for old in [d for d, e in self._entries.items() if e.claims.expires_at <= now]:
                    del self._entries[old]
                while len(self._entries) >= self.max_entries:
                    del self._entries[next(iter(self._entries))]
            self._entries[digest] = entry
