"""CSRF protection for the HTML forms: a double-submit cookie.

A random ``access_csrf`` cookie (HttpOnly, SameSite=Strict, Secure over TLS, its path that of
the pages using it: /device or /inbox) must equal the hidden ``csrf_token`` field of every
POST. Another site can make a browser send the cookie but cannot read it to fill in the field.
The comparison is constant-time, so timing says nothing about how much of a guess was right.

A second, one-time token guards the consent step: signing in on /device yields a consent token
(``auth.device.sign_in``, stored hashed) that the Approve/Deny form carries and that
``auth.device.decide`` consumes once. This module only checks the form came from our page; the
consent token says which sign-in it belongs to.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["CSRF_COOKIE", "CSRF_FIELD", "form_is_ours", "new_token", "set_cookie", "token_from_cookie"]

CSRF_COOKIE = "access_csrf"
CSRF_FIELD = "csrf_token"
_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_from_cookie(request: Request) -> str | None:
    """The browser's CSRF cookie, if it has one of the shape we issue (anything else is ignored)."""
    value = request.cookies.get(CSRF_COOKIE, "")
    return value if _TOKEN_SHAPE.match(value) else None


def form_is_ours(request: Request, form: Mapping[str, str]) -> bool:
    """True when the form's ``csrf_token`` equals the cookie (constant-time); fails closed without one."""
    cookie = token_from_cookie(request)
    field = form.get(CSRF_FIELD, "")
    return cookie is not None and hmac.compare_digest(cookie.encode(), field.encode())


def set_cookie(response: Response, token: str, *, secure: bool, path: str) -> None:
    """Send ``token`` as the CSRF cookie for the pages under ``path``; ``secure`` when the broker
    is served over TLS."""
    response.set_cookie(
        CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=secure,
        path=path,
    )
