"""The device verification page (RFC 8628 ``verification_uri``): plain HTML forms, no JavaScript.

Flow: GET /device (code, username, password) -> POST /device (checks them, shows what is
being authorized) -> POST /device/confirm (Approve or Deny) -> "return to your terminal".

CSRF protection is double-submit: a random ``access_csrf`` cookie (HttpOnly, SameSite=Strict,
Secure over TLS) must equal the hidden ``csrf_token`` field; another site can make a browser
send the cookie but cannot read it to fill in the field. Every value shown is HTML-escaped,
and the pages forbid framing, scripts and referrers.
"""

from __future__ import annotations

import functools
import hmac
import html
import importlib.resources
import re
import secrets
from string import Template
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from access.broker.api.deps import BrokerDep, client_ip
from access.broker.auth import device
from access.broker.errors import BrokerError
from access.broker.runtime import Broker

__all__ = ["CSRF_COOKIE", "router"]

router = APIRouter(include_in_schema=False)

CSRF_COOKIE = "access_csrf"
_CSRF_FIELD = "csrf_token"
_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{43}$")
_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}
_BAD_CSRF = "This form expired or your browser blocked its cookie. Please try again."


@functools.cache
def _template(name: str) -> Template:
    text = importlib.resources.files("access.broker.web").joinpath("templates", name).read_text("utf-8")
    return Template(text)


def _render(name: str, **values: str) -> str:
    """Fill a template; every value is HTML-escaped except pre-rendered ``*_html`` ones."""
    escaped = {
        k.removesuffix("_html"): v if k.endswith("_html") else html.escape(v) for k, v in values.items()
    }
    return _template(name).substitute(escaped)


def _page(broker: Broker, title: str, content: str, *, csrf: str, status: int = 200) -> HTMLResponse:
    body = _render("layout.html", title=title, content_html=content)
    response = HTMLResponse(body, status_code=status, headers=_HEADERS)
    response.set_cookie(
        CSRF_COOKIE,
        csrf,
        httponly=True,
        samesite="strict",
        secure=broker.base_url.startswith("https://"),
        path="/device",
    )
    return response


def _message(text: str | None, css_class: str = "error") -> str:
    if not text:
        return ""
    return f'<p class="{css_class}" role="alert">{html.escape(text)}</p>'


def _csrf_from_cookie(request: Request) -> str | None:
    value = request.cookies.get(CSRF_COOKIE, "")
    return value if _TOKEN_SHAPE.match(value) else None


def _csrf_ok(request: Request, form: dict[str, str]) -> bool:
    cookie = _csrf_from_cookie(request)
    field = form.get(_CSRF_FIELD, "")
    return cookie is not None and hmac.compare_digest(cookie.encode(), field.encode())


def _form_page(
    broker: Broker,
    csrf: str,
    *,
    user_code: str = "",
    username: str = "",
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    normalised = device.normalise_user_code(user_code)
    shown = device.format_user_code(normalised) if normalised else user_code[:20]
    content = _render(
        "device_form.html",
        message_html=_message(error),
        csrf_token=csrf,
        user_code=shown,
        username=username[:64],
    )
    return _page(broker, "Authorize a device", content, csrf=csrf, status=status)


def _error_text(exc: BrokerError) -> str:
    text = exc.message.rstrip(".") + "."
    if exc.hint:
        text += f" {exc.hint[0].upper()}{exc.hint[1:].rstrip('.')}."
    return text


async def _read_form(request: Request) -> dict[str, str]:
    try:
        form = await request.form()
    except Exception:  # a malformed body is treated as an empty form: the CSRF check then fails
        return {}
    return {k: v for k, v in form.items() if isinstance(v, str)}


@router.get("/device", response_class=HTMLResponse)
def device_form(request: Request, broker: BrokerDep, user_code: str = "") -> HTMLResponse:
    """The sign-in form, with the code pre-filled from ``verification_uri_complete``."""
    csrf = _csrf_from_cookie(request) or secrets.token_urlsafe(32)
    return _form_page(broker, csrf, user_code=user_code)


@router.post("/device", response_class=HTMLResponse)
async def device_sign_in(request: Request, broker: BrokerDep) -> HTMLResponse:
    """Check CSRF, the code and the password; show what is being authorized."""
    form = await _read_form(request)
    user_code, username = form.get("user_code", ""), form.get("username", "")
    if not _csrf_ok(request, form):
        csrf = secrets.token_urlsafe(32)
        return _form_page(broker, csrf, user_code=user_code, username=username, error=_BAD_CSRF, status=403)
    csrf = form[_CSRF_FIELD]
    try:
        result = await run_in_threadpool(
            device.sign_in, broker, user_code, username, form.get("password", ""), client_ip(request)
        )
    except BrokerError as exc:
        return _form_page(
            broker, csrf, user_code=user_code, username=username, error=_error_text(exc), status=exc.status
        )
    req = result.request
    content = _render(
        "device_confirm.html",
        user_name=result.user_name,
        client_name=req.client_name,
        client_host=req.client_host or "(not given)",
        client_ip=req.client_ip or "(unknown)",
        asked_at=req.created_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        user_code=req.user_code,
        consent_token=result.consent_token,
        csrf_token=csrf,
    )
    return _page(broker, "Authorize this sign-in?", content, csrf=csrf)


@router.post("/device/confirm", response_class=HTMLResponse)
async def device_confirm(request: Request, broker: BrokerDep) -> HTMLResponse:
    """Approve or deny, once; then tell the person to go back to the terminal."""
    form = await _read_form(request)
    if not _csrf_ok(request, form):
        return _form_page(broker, secrets.token_urlsafe(32), error=_BAD_CSRF, status=403)
    csrf = form[_CSRF_FIELD]
    action = form.get("action", "")
    if action not in ("approve", "deny"):
        return _form_page(broker, csrf, error="Choose Approve or Deny.", status=400)
    try:
        decision = await run_in_threadpool(
            device.decide, broker, form.get("consent_token", ""), action == "approve", client_ip(request)
        )
    except BrokerError as exc:
        return _form_page(broker, csrf, error=_error_text(exc), status=exc.status)
    values: dict[str, Any] = (
        {
            "headline": "Device authorized",
            "css_class": "ok",
            "detail": f"{decision.request.client_name} on {decision.request.client_host or 'your device'} "
            f"can now finish signing in as {decision.user_name}.",
        }
        if decision.approved
        else {
            "headline": "Request denied",
            "css_class": "error",
            "detail": "The sign-in request was denied; the terminal will say so.",
        }
    )
    content = _render("device_done.html", **values)
    return _page(broker, values["headline"], content, csrf=csrf)
