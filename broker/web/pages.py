"""What every HTML page of the broker does the same way: read a form, word an error, send a page.

A page goes out through :func:`page`: rendered by ``web.render`` (escaped, with the security
headers) and carrying the CSRF cookie for the pages under its path (``web.csrf``).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse

from access.broker.auth.upstream.signin import LOGIN_TTL, Started
from access.broker.errors import BrokerError
from access.broker.runtime import Broker
from access.broker.web import csrf
from access.broker.web.render import html_response, render

__all__ = [
    "BAD_CSRF",
    "BROWSER_COOKIE",
    "error_text",
    "is_https",
    "page",
    "providers",
    "read_form",
    "redirect_page",
]

# Binds an upstream sign-in to the browser that started it (``auth.upstream.signin``). Lax: the
# provider's redirect back to the callback is a cross-site top-level GET, which must carry it.
BROWSER_COOKIE = "access_oidc"
BROWSER_COOKIE_PATH = "/oidc"

BAD_CSRF = "This form expired or your browser blocked its cookie. Please try again."


def is_https(broker: Broker) -> bool:
    """Whether people reach the broker over TLS: then its cookies are ``Secure``."""
    return broker.base_url.startswith("https://")


def page(
    broker: Broker,
    name: str,
    title: str,
    *,
    csrf_token: str,
    csrf_path: str,
    status: int = 200,
    **values: Any,
) -> HTMLResponse:
    """Render ``name`` inside the layout, with the security headers and the CSRF cookie."""
    body = render(name, title=title, csrf_token=csrf_token, **values)
    response = html_response(body, status=status)
    csrf.set_cookie(response, csrf_token, secure=is_https(broker), path=csrf_path)
    return response


def providers(broker: Broker) -> list[tuple[str, str]]:
    """The upstream OIDC providers as ``(name, display_name)``, for the "Sign in with" buttons."""
    return [(provider.name, provider.display_name) for provider in broker.settings.oidc_providers]


def redirect_page(broker: Broker, started: Started, *, csrf_token: str, csrf_path: str) -> HTMLResponse:
    """Send the browser to the provider: a page that goes there at once (``meta refresh``, with a
    link), not a 302, since CSP ``form-action 'self'`` forbids a form's POST to redirect to another
    origin; and the cookie the callback checks."""
    response = page(
        broker,
        "oidc_redirect.html",
        f"Sign in with {started.provider.display_name}",
        csrf_token=csrf_token,
        csrf_path=csrf_path,
        url=started.url,
        display_name=started.provider.display_name,
    )
    response.set_cookie(
        BROWSER_COOKIE,
        started.browser_token,
        max_age=int(LOGIN_TTL.total_seconds()),
        httponly=True,
        secure=is_https(broker),
        samesite="lax",
        path=BROWSER_COOKIE_PATH,
    )
    return response


def error_text(exc: BrokerError) -> str:
    """A broker error as one or two sentences for a person: the message, then the hint."""
    text = exc.message.rstrip(".") + "."
    if exc.hint:
        text += f" {exc.hint[0].upper()}{exc.hint[1:].rstrip('.')}."
    return text


async def read_form(request: Request) -> dict[str, str]:
    """The posted form's text fields (files are ignored)."""
    try:
        form = await request.form()
    except Exception:  # a malformed body is treated as an empty form: the CSRF check then fails
        return {}
    return {k: v for k, v in form.items() if isinstance(v, str)}
