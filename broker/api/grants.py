"""``/v1`` routes for services, grants and the audit log. Thin: parse, call one service function."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from access.broker import grants
from access.broker.api.deps import BrokerDep, CurrentPrincipal
from access.broker.audit import search as audit
from access.broker.policy import allowed_services
from access.shared.models import AuditPage, ExtendRequest, Grant, GrantRequest, ScopeInfo, ServiceInfo

__all__ = ["router"]

router = APIRouter()


@router.get("/services")
def list_services(broker: BrokerDep, ctx: CurrentPrincipal) -> list[ServiceInfo]:
    """What the caller may request: each service with its scopes and maximum TTLs."""
    scopes: dict[str, list[ScopeInfo]] = {}
    configs = {}
    for access in allowed_services(broker.policy, ctx):
        configs[access.service.name] = access.service
        seconds = int(access.max_ttl.total_seconds())
        scopes.setdefault(access.service.name, []).append(
            ScopeInfo(scope=access.scope, max_ttl_seconds=seconds, requirement=access.requirement)
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


@router.post("/grants", status_code=201)
def request_grant(body: GrantRequest, broker: BrokerDep, ctx: CurrentPrincipal) -> Grant:
    return grants.request_grant(broker, ctx, body)


@router.get("/grants")
def list_grants(
    broker: BrokerDep,
    ctx: CurrentPrincipal,
    include_all: Annotated[bool, Query(alias="all", description="include ended and denied grants")] = False,
) -> list[Grant]:
    return grants.list_grants(broker, ctx, include_ended=include_all)


@router.get("/grants/{grant_id}")
def get_grant(grant_id: str, broker: BrokerDep, ctx: CurrentPrincipal) -> Grant:
    return grants.get_grant(broker, ctx, grant_id)


@router.post("/grants/{grant_id}/revoke")
def revoke_grant(grant_id: str, broker: BrokerDep, ctx: CurrentPrincipal) -> Grant:
    return grants.revoke_grant(broker, ctx, grant_id)


@router.post("/grants/{grant_id}/extend")
def extend_grant(grant_id: str, body: ExtendRequest, broker: BrokerDep, ctx: CurrentPrincipal) -> Grant:
    """More time for the caller's active grant: a new expiry of now + ttl, within its rule's maximum."""
    return grants.extend_grant(broker, ctx, grant_id, body)


@router.get("/audit")
def read_audit(
    broker: BrokerDep,
    ctx: CurrentPrincipal,
    service: Annotated[str | None, Query(max_length=63)] = None,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[str | None, Query(max_length=40, description="e.g. 1h, or an ISO-8601 time")] = None,
    limit: Annotated[int, Query(ge=1, le=audit.MAX_LIMIT)] = 100,
    grant: Annotated[str | None, Query(max_length=40)] = None,
    action: Annotated[str | None, Query(max_length=40, description="e.g. connection.statements")] = None,
) -> AuditPage:
    return audit.search_audit(
        broker, ctx, service=service, actor=actor, since=since, limit=limit, grant=grant, action=action
    )
