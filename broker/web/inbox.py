"""The approvals inbox (``/inbox``): what waits for my review, with Approve and Deny. No JavaScript.

Flow: GET /inbox (not signed in: the sign-in form) -> POST /inbox (password, as on the device
page) -> 303 to GET /inbox (the list) -> POST /inbox/{id}/approve or /deny (a comment; deny
needs one) -> 303 back to the list with what happened -> POST /inbox/sign-out. GET
/inbox/{id} shows one request to those who may see it (``grants.queries.get_grant``), decided
or not.

Cookies, all ``Path=/inbox``, ``HttpOnly``, ``Secure`` over TLS:

* ``access_inbox``: the sign-in (``auth.websessions``), ``SameSite=Lax`` so that the link in a
  Slack message opens the list signed in; a cross-site POST never carries it, and every POST
  also needs the CSRF token. ``Max-Age`` is the session's lifetime; the server checks it anyway.
* ``access_csrf``: the double-submit token (``web.csrf``), ``SameSite=Strict``.

The message shown after a redirect travels in the query string with a keyed tag bound to the
session (``tags.digest``): a link crafted elsewhere cannot make the page say "You approved ...".
"""

from __future__ import annotations

import hmac
import re
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from access.broker.api.deps import BrokerDep, client_ip
from access.broker.auth import tags, websessions
from access.broker.auth.principal import AuthContext
from access.broker.auth.upstream import signin as upstream
from access.broker.auth.websessions import WebSignIn
from access.broker.errors import BrokerError, InvalidRequest, NotFound, Unauthenticated
from access.broker.grants import approvals, queries
from access.broker.runtime import Broker
from access.broker.web import csrf, pages
from access.broker.web.csrf import CSRF_FIELD
from access.broker.web.inbox_view import InboxItem, item, outcome_text
from access.shared.models import MAX_REASON_LENGTH

__all__ = ["SESSION_COOKIE", "router", "signed_in_response"]

router = APIRouter(include_in_schema=False)

SESSION_COOKIE = "access_inbox"
_PATH = "/inbox"
_GRANT_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_FLASH_PURPOSE = "inbox flash v1"
_MAX_FLASH = 600
_SIGN_IN_FIRST = "Your sign-in has ended or you are not signed in. Sign in to review requests."


def _session_token(request: Request) -> str:
    return request.cookies.get(SESSION_COOKIE, "")


def _signed_in(broker: Broker, request: Request) -> AuthContext | None:
    """Who the session cookie signs in, or None (no cookie, or one whose session is over)."""
    token = _session_token(request)
    if not token:
        return None
    try:
        return websessions.authenticate(broker, token)
    except Unauthenticated:
        return None


def _flash_tag(broker: Broker, ctx: AuthContext, text: str) -> str:
    return tags.digest(broker, _FLASH_PURPOSE, ctx.session_id, text)


def _checked_flash(broker: Broker, ctx: AuthContext, text: str, tag: str) -> str:
    """``text`` if this page made it for this session (see the module docstring), else nothing."""
    if not text or len(text) > _MAX_FLASH:
        return ""
    return text if hmac.compare_digest(_flash_tag(broker, ctx, text), tag) else ""


def _sign_in_page(
    broker: Broker,
    csrf_token: str,
    *,
    username: str = "",
    error: str = "",
    notice: str = "",
    status: int = 200,
) -> HTMLResponse:
    response = pages.page(
        broker,
        "inbox_signin.html",
        "Sign in: approvals inbox",
        csrf_token=csrf_token,
        csrf_path=_PATH,
        status=status,
        username=username[:64],
        error=error,
        notice=notice,
        providers=pages.providers(broker),
    )
    if error or notice:
        response.delete_cookie(SESSION_COOKIE, path=_PATH, secure=pages.is_https(broker), httponly=True)
    return response


def _signed_in_page(
    broker: Broker,
    ctx: AuthContext,
    name: str,
    title: str,
    csrf_token: str,
    *,
    message: str = "",
    error: str = "",
    status: int = 200,
    **values: Any,
) -> HTMLResponse:
    """A page of ``inbox_base.html``: who is signed in, the sign-out button, a message or error."""
    return pages.page(
        broker,
        name,
        title,
        csrf_token=csrf_token,
        csrf_path=_PATH,
        status=status,
        user_name=ctx.name,
        message=message,
        error=error,
        max_comment=MAX_REASON_LENGTH,
        **values,
    )


def _list_page(
    broker: Broker,
    ctx: AuthContext,
    csrf_token: str,
    *,
    message: str = "",
    error: str = "",
    status: int = 200,
) -> HTMLResponse:
    now = broker.clock.now()
    items = [item(grant, now) for grant in approvals.pending_for(broker, ctx)]
    title = f"Approvals inbox ({len(items)})" if items else "Approvals inbox"
    return _signed_in_page(
        broker, ctx, "inbox.html", title, csrf_token, message=message, error=error, status=status, items=items
    )


def _see_list(query: dict[str, str] | None = None) -> RedirectResponse:
    # Relative: the browser resolves it against the URL it is on, which is the broker's.
    return RedirectResponse(_PATH + (f"?{urlencode(query)}" if query else ""), status_code=303)


@router.get("/inbox", response_class=HTMLResponse)
def inbox(
    request: Request,
    broker: BrokerDep,
    done: str = "",
    tag: str = "",
    signed_out: str = "",
) -> HTMLResponse:
    """The list of requests waiting for my review; the sign-in form when not signed in."""
    token = csrf.token_from_cookie(request) or csrf.new_token()
    ctx = _signed_in(broker, request)
    if ctx is None:
        if signed_out:
            return _sign_in_page(broker, token, notice="You are signed out.")
        stale = bool(_session_token(request))
        return _sign_in_page(broker, token, notice=_SIGN_IN_FIRST if stale else "")
    return _list_page(broker, ctx, token, message=_checked_flash(broker, ctx, done, tag))


@router.post("/inbox", response_class=HTMLResponse)
async def sign_in(request: Request, broker: BrokerDep) -> Response:
    """Check CSRF and the password; on success set the session cookie and show the list (303)."""
    form = await pages.read_form(request)
    username = form.get("username", "")
    if not csrf.form_is_ours(request, form):
        return _sign_in_page(broker, csrf.new_token(), username=username, error=pages.BAD_CSRF, status=403)
    try:
        signed = await run_in_threadpool(
            websessions.sign_in,
            broker,
            username,
            form.get("password", ""),
            client_ip(request),
            form.get("otp", ""),
        )
    except BrokerError as exc:
        return _sign_in_page(
            broker, form[CSRF_FIELD], username=username, error=pages.error_text(exc), status=exc.status
        )
    return signed_in_response(broker, signed)


@router.post("/inbox/oidc/{provider}", response_class=HTMLResponse)
async def sign_in_upstream(provider: str, request: Request, broker: BrokerDep) -> Response:
    """Check CSRF, then send the browser to ``provider`` to sign in (back at ``web.oidc``)."""
    form = await pages.read_form(request)
    if not csrf.form_is_ours(request, form):
        return _sign_in_page(broker, csrf.new_token(), error=pages.BAD_CSRF, status=403)
    try:
        started = await run_in_threadpool(
            upstream.start, broker, provider, upstream.INBOX, "", client_ip(request)
        )
    except BrokerError as exc:
        return _sign_in_page(broker, form[CSRF_FIELD], error=pages.error_text(exc), status=exc.status)
    return pages.redirect_page(broker, started, csrf_token=form[CSRF_FIELD], csrf_path=_PATH)


def signed_in_response(broker: Broker, signed: WebSignIn) -> Response:
    """Set the session cookie of a new sign-in (password or upstream) and go to the list (303)."""
    response = _see_list()
    secure = pages.is_https(broker)
    response.set_cookie(
        SESSION_COOKIE,
        signed.token,
        max_age=broker.settings.inbox_session_ttl,
        httponly=True,
        secure=secure,
        samesite="lax",
        path=_PATH,
    )
    # A fresh CSRF token for the signed-in pages: nothing learnt before sign-in carries over.
    csrf.set_cookie(response, csrf.new_token(), secure=secure, path=_PATH)
    return response


@router.post("/inbox/sign-out", response_class=HTMLResponse)
async def sign_out(request: Request, broker: BrokerDep) -> Response:
    """End the session (CSRF-checked, so another site cannot sign me out), then the sign-in form."""
    form = await pages.read_form(request)
    if not csrf.form_is_ours(request, form):
        ctx = await run_in_threadpool(_signed_in, broker, request)
        if ctx is None:
            return _sign_in_page(broker, csrf.new_token(), error=pages.BAD_CSRF, status=403)
        return await run_in_threadpool(
            _list_page, broker, ctx, csrf.new_token(), error=pages.BAD_CSRF, status=403
        )
    await run_in_threadpool(websessions.sign_out, broker, _session_token(request))
    response = _see_list({"signed_out": "1"})
    response.delete_cookie(SESSION_COOKIE, path=_PATH, secure=pages.is_https(broker), httponly=True)
    return response


@router.get("/inbox/{grant_id}", response_class=HTMLResponse)
def one_request(request: Request, broker: BrokerDep, grant_id: str) -> HTMLResponse:
    """One request, as its reviewers see it: waiting (with Approve and Deny) or how it ended."""
    token = csrf.token_from_cookie(request) or csrf.new_token()
    ctx = _signed_in(broker, request)
    if ctx is None:
        return _sign_in_page(broker, token, notice=_SIGN_IN_FIRST if _session_token(request) else "")
    try:
        if not _GRANT_ID.match(grant_id):
            raise NotFound(f"no grant {grant_id[:40]!r}")
        shown = item(queries.get_grant(broker, ctx, grant_id), broker.clock.now())
    except BrokerError as exc:
        return _request_page(broker, ctx, token, None, error=pages.error_text(exc), status=exc.status)
    return _request_page(broker, ctx, token, shown)


def _request_page(
    broker: Broker,
    ctx: AuthContext,
    csrf_token: str,
    shown: InboxItem | None,
    *,
    error: str = "",
    status: int = 200,
) -> HTMLResponse:
    title = f"Request {shown.id}" if shown else "Request"
    return _signed_in_page(
        broker, ctx, "inbox_request.html", title, csrf_token, error=error, status=status, it=shown
    )


@router.post("/inbox/{grant_id}/approve", response_class=HTMLResponse)
async def approve(grant_id: str, request: Request, broker: BrokerDep) -> Response:
    """Approve ``grant_id`` with the optional comment."""
    form = await pages.read_form(request)
    return await run_in_threadpool(_decide, broker, request, form, grant_id, "approve")


@router.post("/inbox/{grant_id}/deny", response_class=HTMLResponse)
async def deny(grant_id: str, request: Request, broker: BrokerDep) -> Response:
    """Deny ``grant_id``; the comment is the reason and must be given."""
    form = await pages.read_form(request)
    return await run_in_threadpool(_decide, broker, request, form, grant_id, "deny")


def _decide(broker: Broker, request: Request, form: dict[str, str], grant_id: str, action: str) -> Response:
    ctx = _signed_in(broker, request)
    if not csrf.form_is_ours(request, form):
        token = csrf.new_token()
        if ctx is None:
            return _sign_in_page(broker, token, error=pages.BAD_CSRF, status=403)
        return _list_page(broker, ctx, token, error=pages.BAD_CSRF, status=403)
    token = form[CSRF_FIELD]
    if ctx is None:
        return _sign_in_page(broker, token, error=_SIGN_IN_FIRST, status=401)
    comment = form.get("comment", "").strip()
    try:
        if not _GRANT_ID.match(grant_id):
            raise NotFound(f"no request {grant_id[:64]!r} waits for your review")
        if len(comment) > MAX_REASON_LENGTH:
            raise InvalidRequest(f"the comment is over {MAX_REASON_LENGTH} characters: shorten it")
        if action == "deny":
            if not comment:
                raise InvalidRequest(
                    "a denial needs a reason", hint="write it in the comment field, then press Deny"
                )
            grant = approvals.deny(broker, ctx, grant_id, comment)
        else:
            grant = approvals.approve(broker, ctx, grant_id, comment)
    except BrokerError as exc:
        return _list_page(broker, ctx, token, error=pages.error_text(exc), status=exc.status)
    text = outcome_text(grant, action)[:_MAX_FLASH]
    return _see_list({"done": text, "tag": _flash_tag(broker, ctx, text)})
