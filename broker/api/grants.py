"""``/v1`` routes for services, grants and the audit log. Thin: parse, call one service function."""

from __future__ import annotations

import json
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.routing import BaseRoute, Match
from starlette.types import Message, Receive, Scope, Send

from access.broker import grants
from access.broker.api.deps import BearerClaims, BrokerDep, CurrentPrincipal, get_broker, seen_principal
from access.broker.api.schema import errors
from access.broker.audit import search as audit
from access.broker.auth.tokens import verify_access_token
from access.broker.grants.batch import Ask, GrantWriter
from access.broker.policy import allowed_services
from access.shared.models import (
    ApproveRequest,
    AuditPage,
    DenyRequest,
    ExtendRequest,
    Grant,
    GrantRequest,
    GrantState,
    ScopeInfo,
    ServiceInfo,
)

__all__ = ["GrantRequestFastPath", "router"]

router = APIRouter(tags=["grants"])


@router.get("/services")
def list_services(broker: BrokerDep, ctx: CurrentPrincipal) -> list[ServiceInfo]:
    """What the caller may request: each service with its scopes, maximum TTLs and, for scopes
    that need approval, who reviews."""
    scopes: dict[str, list[ScopeInfo]] = {}
    configs = {}
    for access in allowed_services(broker.policy, ctx):
        configs[access.service.name] = access.service
        seconds = int(access.max_ttl.total_seconds())
        reviewers = access.approval.describe() if access.approval is not None else None
        scopes.setdefault(access.service.name, []).append(
            ScopeInfo(
                scope=access.scope,
                max_ttl_seconds=seconds,
                requirement=access.requirement,
                reviewers=reviewers,
                mfa_seconds=None if access.mfa is None else int(access.mfa.total_seconds()),
            )
        )
    return [
        ServiceInfo(
            name=name,
            kind=svc.kind,
            description=svc.description,
            labels=dict(svc.labels),
            scopes=scopes[name],
        )
        for name, svc in configs.items()
    ]


@router.post(
    "/grants",
    status_code=201,
    response_model=Grant,
    responses={
        202: {"model": Grant, "description": "pending: the request waits for review"},
        **errors(403, 404, 502),
    },
)
async def request_grant(
    body: GrantRequest, broker: BrokerDep, claims: BearerClaims, request: Request
) -> Response:
    """201 with the active grant, or 202 with the pending one when the rule needs approval."""
    # The token was verified on the event loop (BearerClaims); the grant's writer serves the
    # request in turn, with the others waiting, in one transaction where its session is checked
    # first (grants.batch); the answer is the model's own JSON (FastAPI would validate the
    # returned Grant again, in a thread-pool hop).
    writer: GrantWriter = request.app.state.grant_writer
    grant = await writer.request(Ask(claims, body, partial(seen_principal, request)))
    return _answer(grant)


class GrantRequestFastPath(BaseRoute):
    """``POST /v1/grants`` without FastAPI's routing and dependency solving, tried before every
    other route (``app.py``): for a request with a bearer token and a JSON body that is a valid
    ``GrantRequest``, what ``request_grant`` does, the same way (token verified, then the
    grant's writer). Anything else (no bearer token, another content type, a body that is no
    JSON or no valid request, a body that could not be read) goes on to the FastAPI route with
    the body as it was received, so every refusal is FastAPI's own (422, 400, 413, 401 with
    its messages). About a tenth of a served request's CPU (benchmarks/grants.py)."""

    path = "/v1/grants"  # the request log's route label, as for the FastAPI route

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if (
            scope["type"] == "http"
            and scope["path"] == self.path
            and scope["method"] == "POST"
            and not scope.get(_SLOW_PATH)
        ):
            return Match.FULL, {"route": self, "endpoint": request_grant}
        return Match.NONE, {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        scheme, token = get_authorization_scheme_param(headers.get("authorization"))
        if scheme.lower() != "bearer" or not token or headers.get("content-type") != "application/json":
            await _slow_path(scope, receive, send, None)
            return
        request = Request(scope, receive)
        try:
            raw = await request.body()
        except Exception as exc:  # FastAPI answers it (413 for a body over the limit)
            await _slow_path(scope, receive, send, exc)
            return
        try:
            data = json.loads(raw)
        except ValueError:  # FastAPI's 422 says where the JSON breaks
            await _slow_path(scope, receive, send, raw)
            return
        claims = verify_access_token(get_broker(request), token)  # FastAPI checks it before the fields
        try:
            body = GrantRequest.model_validate(data)
        except ValidationError:
            await _slow_path(scope, receive, send, raw)
            return
        writer: GrantWriter = request.app.state.grant_writer
        grant = await writer.request(Ask(claims, body, partial(seen_principal, request)))
        await _answer(grant)(scope, receive, send)


_SLOW_PATH = "access.grant_request_slow_path"


async def _slow_path(scope: Scope, receive: Receive, send: Send, received: bytes | Exception | None) -> None:
    """On to the FastAPI route, with what the fast path read from ``receive`` given again."""
    scope[_SLOW_PATH] = True
    if received is None:
        await scope["app"].router(scope, receive, send)
        return
    replayed = False

    async def again() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        if isinstance(received, Exception):
            raise received
        return {"type": "http.request", "body": received, "more_body": False}

    await scope["app"].router(scope, again, send)


def _answer(grant: Grant) -> Response:
    status = 202 if grant.state == GrantState.PENDING else 201
    return Response(grant.model_dump_json(by_alias=True), status_code=status, media_type="application/json")


@router.get("/reviews")
def pending_reviews(broker: BrokerDep, ctx: CurrentPrincipal) -> list[Grant]:
    """What waits for the caller's review (others' pending requests they may approve), oldest first."""
    return grants.pending_for(broker, ctx)


@router.post("/grants/{grant_id}/approve", responses=errors(403, 404, 409, 410, 502))
def approve_grant(grant_id: str, body: ApproveRequest, broker: BrokerDep, ctx: CurrentPrincipal) -> Grant:
    return grants.approve(broker, ctx, grant_id, body.comment)


@router.post("/grants/{grant_id}/deny", responses=errors(403, 404, 409))
def deny_grant(grant_id: str, body: DenyRequest, broker: BrokerDep, ctx: CurrentPrincipal) -> Grant:
    return grants.deny(broker, ctx, grant_id, body.reason)


@router.get("/grants")
def list_grants(
    broker: BrokerDep,
    ctx: CurrentPrincipal,
    include_all: Annotated[bool, Query(alias="all", description="include ended and denied grants")] = False,
    break_glass: Annotated[
        bool,
        Query(description="instead: break-glass grants, ended ones too (everyone's, for an audit reader)"),
    ] = False,
) -> list[Grant]:
    if break_glass:
        return grants.list_break_glass(broker, ctx)
    return grants.list_grants(broker, ctx, include_ended=include_all)


@router.get("/grants/{grant_id}", responses=errors(404))
def get_grant(grant_id: str, broker: BrokerDep, ctx: CurrentPrincipal) -> Grant:
    return grants.get_grant(broker, ctx, grant_id)


@router.post("/grants/{grant_id}/revoke", responses=errors(404))
def revoke_grant(grant_id: str, broker: BrokerDep, ctx: CurrentPrincipal) -> Grant:
    return grants.revoke_grant(broker, ctx, grant_id)


@router.post("/grants/{grant_id}/extend", responses=errors(403, 404, 409, 410))
def extend_grant(grant_id: str, body: ExtendRequest, broker: BrokerDep, ctx: CurrentPrincipal) -> Grant:
    """More time for the caller's active grant: a new expiry of now + ttl, within its rule's maximum."""
    return grants.extend_grant(broker, ctx, grant_id, body)


@router.get("/audit", responses=errors(403))
async def read_audit(
    broker: BrokerDep,
    ctx: CurrentPrincipal,
    service: Annotated[str | None, Query(max_length=63)] = None,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[str | None, Query(max_length=40, description="e.g. 1h, or an ISO-8601 time")] = None,
    limit: Annotated[int, Query(ge=1, le=audit.MAX_LIMIT)] = 100,
    grant: Annotated[str | None, Query(max_length=40)] = None,
    action: Annotated[str | None, Query(max_length=40, description="e.g. connection.statements")] = None,
    after_seq: Annotated[
        int | None,
        Query(ge=0, description="instead: the entries after this seq, oldest first (follow; resume)"),
    ] = None,
    wait: Annotated[
        float,
        Query(ge=0, le=audit.MAX_WAIT, description="with after_seq: seconds to wait for a new entry"),
    ] = 0,
) -> AuditPage:
    filters = {"service": service, "actor": actor, "since": since, "grant": grant, "action": action}
    if after_seq is not None:
        return await audit.follow_audit(broker, ctx, after_seq=after_seq, wait=wait, limit=limit, **filters)
    return await run_in_threadpool(audit.search_audit, broker, ctx, limit=limit, **filters)
