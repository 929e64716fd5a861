"""The webhook signature: HMAC-SHA256 over ``v1:{timestamp}:{body}``, as Slack signs its requests.

A receiver recomputes it with the shared secret, compares in constant time, and refuses a
timestamp older than ``TOLERANCE`` (a captured request cannot be replayed later).
docs/notifications.md shows the same check for receivers to copy.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "TOLERANCE",
    "sign",
    "verify",
]

TIMESTAMP_HEADER = "X-Access-Timestamp"
SIGNATURE_HEADER = "X-Access-Signature"
DELIVERY_HEADER = "X-Access-Delivery"
EVENT_HEADER = "X-Access-Event"
TOLERANCE = 300  # seconds


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Access-Signature`` value of ``body`` sent at ``timestamp`` (Unix seconds): ``v1=<hex>``."""
    message = b"v1:" + str(timestamp).encode() + b":" + body
    return "v1=" + hmac.new(secret, message, hashlib.sha256).hexdigest()


def verify(secret: bytes, timestamp: str, signature: str, body: bytes, now: float) -> bool:
    """Whether ``signature`` signs ``body`` at ``timestamp``, and that is within ``TOLERANCE`` of ``now``."""
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        return False
    if abs(now - int(timestamp)) > TOLERANCE:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)
