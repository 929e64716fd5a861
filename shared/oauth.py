"""OAuth 2.0 names both sides use: the broker accepts them at ``/oauth/token``, the CLI sends them."""

from __future__ import annotations

from typing import Final

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "DEVICE_GRANT_TYPE",
    "ID_TOKEN_TYPE",
    "JWT_TOKEN_TYPE",
    "TOKEN_EXCHANGE_GRANT_TYPE",
]

# RFC 8628 section 3.4: the grant type a device polls /oauth/token with.
DEVICE_GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:device_code"
# RFC 8693: token exchange, with a JWT (an OpenID ID token) as the subject token.
TOKEN_EXCHANGE_GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN, not a secret
JWT_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105 - a URN, not a secret
ID_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105 - a URN, not a secret
ACCESS_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN, not a secret
