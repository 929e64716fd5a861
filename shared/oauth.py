"""OAuth 2.0 names both sides use: the broker accepts them at ``/oauth/token``, the CLI sends them."""

from __future__ import annotations

from typing import Final

__all__ = ["DEVICE_GRANT_TYPE"]

# RFC 8628 section 3.4: the grant type a device polls /oauth/token with.
DEVICE_GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:device_code"
