"""Who is making a request, as established from a verified access token."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["AuthContext"]


@dataclass(frozen=True)
class AuthContext:
    principal_id: str
    name: str
    kind: str  # "user" | "service_account"
    groups: tuple[str, ...]
    session_id: str
    token_id: str  # the access token's jti
    expires_at: datetime  # the access token's
    session_expires_at: datetime | None = None  # the sign-in session's (refresh family), server time
    # When the sign-in behind the session presented a second factor (None: it did not); policy
    # that requires MFA within a window compares it with the broker's clock.
    mfa_at: datetime | None = None
