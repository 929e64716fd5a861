"""Keyed tags for text the broker must count or correlate but must not keep as it was typed.

A password typed into the username field, or a secret pasted as ``client_id``, must not land
verbatim in the ledger (which cannot be redacted) or in ``rate_events``. So a name that matches
no account is recorded as ``unknown:<16 hex>``, the start of HMAC-SHA256 of the name keyed
with a secret derived from the audit key: the same name always gives the same tag (attempts
still correlate, across replicas too, since they share the audit key), and without the key a
tag cannot be tested against guesses. Rate-limit keys use the same keyed hash.
"""

from __future__ import annotations

import hashlib
import hmac

from access.broker.keys import derived_secret
from access.broker.runtime import Broker

__all__ = ["UNKNOWN_PREFIX", "digest", "unknown_name"]

UNKNOWN_PREFIX = "unknown:"
_PURPOSE = "access-broker tags for unverified names v1"


def digest(broker: Broker, *parts: str) -> str:
    """Hex HMAC-SHA256 of ``parts`` (NUL-separated) under the broker's tag secret."""
    secret = derived_secret(broker.audit_key, _PURPOSE)
    return hmac.new(secret, "\x00".join(parts).encode(), hashlib.sha256).hexdigest()


def unknown_name(broker: Broker, name: str) -> str:
    """``unknown:<16 hex>``: what the ledger says instead of a name that matches no account."""
    return UNKNOWN_PREFIX + digest(broker, name)[:16]
