"""The inbox's second-factor page (``/inbox/mfa``): set up one-time codes (TOTP) with a QR code,
confirm them with a first code, turn them off with a current one. No JavaScript.

Flow, signed in to the inbox (``web.inbox``): GET /inbox/mfa (on, pending or off) -> POST
/inbox/mfa/begin (a new secret: the QR code as inline SVG, the CSP allows no images, and the
secret as text) -> POST /inbox/mfa/confirm (a first code puts it in force) -> POST
/inbox/mfa/disable (a current code turns it off). The service is ``auth.identity.totp``; every
POST passes the CSRF check, and the page is sent ``Cache-Control: no-store`` like every page.
"""

from __future__ import annotations

from collections.abc import Callable

import segno
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool

from access.broker.api.deps import BrokerDep, client_ip
from access.broker.auth.identity import totp
from access.broker.auth.principal import AuthContext
from access.broker.errors import BrokerError
from access.broker.runtime import Broker
from access.broker.web import csrf, pages
from access.broker.web.csrf import CSRF_FIELD
from access.broker.web.inbox import _SIGN_IN_FIRST, _session_token, _sign_in_page, _signed_in, _signed_in_page

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


def _qr(uri: str) -> Markup:
    # segno draws only a path from the URI's bits: no text of ours lands in the markup.
    return Markup(segno.make(uri, error="m").svg_inline(scale=4, title="QR code for your authenticator"))  # noqa: S704


def _mfa_page(
    broker: Broker,
    ctx: AuthContext,
    csrf_token: str,
    *,
    enrolment: totp.Enrolment | None = None,
    message: str = "",
    error: str = "",
    status: int = 200,
) -> HTMLResponse:
    with broker.transaction() as conn:
        on = totp.is_enabled(conn, ctx.principal_id)
    if not on and enrolment is None:
        enrolment = totp.pending_enrolment(broker, ctx.name)
    state = "on" if on else "pending" if enrolment is not None else "off"
    return _signed_in_page(
        broker,
        ctx,
        "inbox_mfa.html",
        "Second factor",
        csrf_token,
        message=message,
        error=error,
        status=status,
        state=state,
        qr=_qr(enrolment.uri) if enrolment is not None and state == "pending" else "",
        secret=enrolment.secret if enrolment is not None and state == "pending" else "",
        issuer=totp.issuer(broker),
    )


@router.get("/inbox/mfa", response_class=HTMLResponse)
def mfa_page(request: Request, broker: BrokerDep) -> HTMLResponse:
    """Whether one-time codes are on, pending (the QR code) or off, with the form for the next step."""
    token = csrf.token_from_cookie(request) or csrf.new_token()
    ctx = _signed_in(broker, request)
    if ctx is None:
        return _sign_in_page(broker, token, notice=_SIGN_IN_FIRST if _session_token(request) else "")
    return _mfa_page(broker, ctx, token)


def _step(
    broker: Broker, request: Request, form: dict[str, str], act: Callable[[AuthContext], str]
) -> Response:
    """CSRF and the sign-in, then ``act`` (its text is the message), then the page again."""
    ctx = _signed_in(broker, request)
    if not csrf.form_is_ours(request, form):
        token = csrf.new_token()
        if ctx is None:
            return _sign_in_page(broker, token, error=pages.BAD_CSRF, status=403)
        return _mfa_page(broker, ctx, token, error=pages.BAD_CSRF, status=403)
    token = form[CSRF_FIELD]
    if ctx is None:
        return _sign_in_page(broker, token, error=_SIGN_IN_FIRST, status=401)
    try:
        message = act(ctx)
    except BrokerError as exc:
        return _mfa_page(broker, ctx, token, error=pages.error_text(exc), status=exc.status)
    return _mfa_page(broker, ctx, token, message=message)


@router.post("/inbox/mfa/begin", response_class=HTMLResponse)
async def begin(request: Request, broker: BrokerDep) -> Response:
    """A new secret: the page shows its QR code (not in force until confirmed)."""
    form = await pages.read_form(request)

    def act(ctx: AuthContext) -> str:
        totp.begin_enrolment(broker, ctx.name, actor=ctx.name)
        return ""

    return await run_in_threadpool(_step, broker, request, form, act)


@router.post("/inbox/mfa/confirm", response_class=HTMLResponse)
async def confirm(request: Request, broker: BrokerDep) -> Response:
    """A first code from the app: one-time codes are on from now."""
    form = await pages.read_form(request)

    def act(ctx: AuthContext) -> str:
        totp.confirm_enrolment(broker, ctx.name, form.get("otp", ""), client_ip(request))
        return "One-time codes are on: your next sign-in asks for a code."

    return await run_in_threadpool(_step, broker, request, form, act)


@router.post("/inbox/mfa/disable", response_class=HTMLResponse)
async def disable(request: Request, broker: BrokerDep) -> Response:
    """A current code: one-time codes are off from now."""
    form = await pages.read_form(request)

    def act(ctx: AuthContext) -> str:
        totp.disable(broker, ctx.name, form.get("otp", ""), client_ip(request))
        return "One-time codes are off: sign-ins need only your password."

    return await run_in_threadpool(_step, broker, request, form, act)
