"""The upstream OIDC callback (``/oidc/<provider>/callback``): where the provider sends the browser back.

The sign-in itself is ``auth.upstream.signin.complete``: state, browser cookie, code, ID token,
groups. Then, for a device login, the same confirmation page as after a password (Approve or
Deny, ``web.device``); for the inbox, its session cookie and the list (``web.inbox``). Any
failure is one page with what went wrong and where to start again; everything the provider
sent that is shown is escaped (``web.render``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from access.broker.api.deps import BrokerDep, client_ip
from access.broker.auth.upstream import signin as upstream
from access.broker.errors import BrokerError
from access.broker.web import csrf, device, inbox, pages

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


@router.get("/oidc/{provider}/callback", response_class=HTMLResponse)
async def callback(
    provider: str,
    request: Request,
    broker: BrokerDep,
    state: str = "",
    code: str = "",
    error: str = "",
    error_description: str = "",
) -> Response:
    """Finish the sign-in the provider sent back; confirm the device, or open the inbox."""
    sent = upstream.Callback(state=state, code=code, error=error, error_description=error_description)
    browser = request.cookies.get(pages.BROWSER_COOKIE, "")
    response: Response
    try:
        done = await run_in_threadpool(upstream.complete, broker, provider, sent, browser, client_ip(request))
    except BrokerError as exc:
        response = pages.page(
            broker,
            "oidc_error.html",
            "Sign-in did not complete",
            csrf_token=csrf.new_token(),
            csrf_path=pages.BROWSER_COOKIE_PATH,
            status=exc.status,
            error=pages.error_text(exc),
        )
    else:
        if done.device is not None:
            response = device.confirm_page(broker, csrf.new_token(), done.device)
        else:
            assert done.web is not None
            response = inbox.signed_in_response(broker, done.web)
    # Spent either way: the state it stood for is used.
    response.delete_cookie(
        pages.BROWSER_COOKIE, path=pages.BROWSER_COOKIE_PATH, secure=pages.is_https(broker), httponly=True
    )
    return response
