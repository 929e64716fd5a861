"""The device verification page (RFC 8628 ``verification_uri``): plain HTML forms, no JavaScript.

Flow: GET /device (code, username, password, one-time code if set up) -> POST /device (checks
them, shows what is being authorized) -> POST /device/confirm (Approve or Deny) -> "return to
your terminal". With an upstream provider (``web.oidc``): POST /device/oidc/<provider> (the
code) -> the provider -> GET /oidc/<provider>/callback (shows what is being authorized) ->
/device/confirm.

Every POST must pass the double-submit CSRF check (``web.csrf``); every value shown is
HTML-escaped by the template environment (``web.render``), and every page carries the
headers that forbid framing, scripts and referrers.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from access.broker.api.deps import BrokerDep, client_ip
from access.broker.auth import device
from access.broker.auth.device import SignIn
from access.broker.auth.upstream import signin as upstream
from access.broker.errors import BrokerError
from access.broker.runtime import Broker
from access.broker.web import csrf, pages
from access.broker.web.csrf import CSRF_COOKIE, CSRF_FIELD

__all__ = ["CSRF_COOKIE", "confirm_page", "router"]

router = APIRouter(include_in_schema=False)

_PATH = "/device"


def _page(
    broker: Broker, name: str, title: str, *, csrf_token: str, status: int = 200, **values: Any
) -> HTMLResponse:
    return pages.page(broker, name, title, csrf_token=csrf_token, csrf_path=_PATH, status=status, **values)


def _form_page(
    broker: Broker,
    csrf_token: str,
    *,
    user_code: str = "",
    username: str = "",
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    normalised = device.normalise_user_code(user_code)
    shown = device.format_user_code(normalised) if normalised else user_code[:20]
    return _page(
        broker,
        "device_form.html",
        "Authorize a device",
        csrf_token=csrf_token,
        status=status,
        error=error or "",
        user_code=shown,
        username=username[:64],
        providers=pages.providers(broker),
    )


@router.get("/device", response_class=HTMLResponse)
def device_form(request: Request, broker: BrokerDep, user_code: str = "") -> HTMLResponse:
    """The sign-in form, with the code pre-filled from ``verification_uri_complete``."""
    token = csrf.token_from_cookie(request) or csrf.new_token()
    return _form_page(broker, token, user_code=user_code)


@router.post("/device", response_class=HTMLResponse)
async def device_sign_in(request: Request, broker: BrokerDep) -> HTMLResponse:
    """Check CSRF, the code and the password; show what is being authorized."""
    form = await pages.read_form(request)
    user_code, username = form.get("user_code", ""), form.get("username", "")
    if not csrf.form_is_ours(request, form):
        token = csrf.new_token()
        return _form_page(
            broker, token, user_code=user_code, username=username, error=pages.BAD_CSRF, status=403
        )
    token = form[CSRF_FIELD]
    try:
        result = await run_in_threadpool(
            device.sign_in,
            broker,
            user_code,
            username,
            form.get("password", ""),
            client_ip(request),
            form.get("otp", ""),
        )
    except BrokerError as exc:
        return _form_page(
            broker,
            token,
            user_code=user_code,
            username=username,
            error=pages.error_text(exc),
            status=exc.status,
        )
    return confirm_page(broker, token, result)


@router.post("/device/oidc/{provider}", response_class=HTMLResponse)
async def device_upstream(provider: str, request: Request, broker: BrokerDep) -> HTMLResponse:
    """Check CSRF and the code, then send the browser to ``provider`` to sign in."""
    form = await pages.read_form(request)
    user_code = form.get("user_code", "")
    if not csrf.form_is_ours(request, form):
        return _form_page(broker, csrf.new_token(), user_code=user_code, error=pages.BAD_CSRF, status=403)
    try:
        started = await run_in_threadpool(
            upstream.start, broker, provider, upstream.DEVICE, user_code, client_ip(request)
        )
    except BrokerError as exc:
        return _form_page(
            broker, form[CSRF_FIELD], user_code=user_code, error=pages.error_text(exc), status=exc.status
        )
    return pages.redirect_page(broker, started, csrf_token=form[CSRF_FIELD], csrf_path=_PATH)


def confirm_page(broker: Broker, token: str, result: SignIn) -> HTMLResponse:
    """What is being authorized, with Approve and Deny (after a password or upstream sign-in)."""
    req = result.request
    return _page(
        broker,
        "device_confirm.html",
        "Authorize this sign-in?",
        csrf_token=token,
        user_name=result.user_name,
        client_name=req.client_name,
        client_host=req.client_host or "(not given)",
        client_ip=req.client_ip or "(unknown)",
        asked_at=req.created_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        user_code=req.user_code,
        consent_token=result.consent_token,
    )


@router.post("/device/confirm", response_class=HTMLResponse)
async def device_confirm(request: Request, broker: BrokerDep) -> HTMLResponse:
    """Approve or deny, once; then tell the person to go back to the terminal."""
    form = await pages.read_form(request)
    if not csrf.form_is_ours(request, form):
        return _form_page(broker, csrf.new_token(), error=pages.BAD_CSRF, status=403)
    token = form[CSRF_FIELD]
    action = form.get("action", "")
    if action not in ("approve", "deny"):
        return _form_page(broker, token, error="Choose Approve or Deny.", status=400)
    try:
        decision = await run_in_threadpool(
            device.decide, broker, form.get("consent_token", ""), action == "approve", client_ip(request)
        )
    except BrokerError as exc:
        return _form_page(broker, token, error=pages.error_text(exc), status=exc.status)
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
    return _page(broker, "device_done.html", values["headline"], csrf_token=token, **values)
