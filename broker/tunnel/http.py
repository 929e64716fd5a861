"""``GET /v1/grants/{id}/connection``: what ``access exec``/``access env`` need for a grant.

Mounted under ``/v1`` by ``routes/api.py``. The answer may carry the service's password, so
it only ever travels in a response body (over TLS), is never logged, and its ledger entry
records that details were handed out, not what they were.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from access.broker.api.deps import BrokerDep, CurrentPrincipal
from access.broker.api.schema import errors
from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.auth.principal import AuthContext
from access.broker.kinds import kind_for
from access.broker.runtime import Broker
from access.shared.kinds import ConnectionInfo

__all__ = ["connection_details", "router"]

router = APIRouter()


def connection_details(broker: Broker, ctx: AuthContext, grant_id: str) -> ConnectionInfo:
    """Connection details for the caller's usable grant, audited as ``grant.connection_details``.

    Raises:
        NotFound / Forbidden / Expired: the grant is not the caller's or not usable now.
        Unavailable: the database, or the service's configured password source, failed.
    """
    from access.broker.grants import grant_target, open_for_tunnel

    grant = open_for_tunnel(broker, ctx, grant_id)
    info = kind_for(grant.kind).connection_details(grant=grant)
    ledger.record(
        broker,
        actor=ctx.name,
        action=Action.GRANT_CONNECTION_DETAILS,
        target=grant_target(grant.service, grant.grant_id),
        details={
            "grant": grant.grant_id,
            "service": grant.service,
            "includes_login": info.password is not None,
        },
    )
    return info


@router.get(
    "/grants/{grant_id}/connection",
    response_model=ConnectionInfo,
    tags=["grants"],
    responses=errors(403, 404, 410),
)
def get_connection(grant_id: str, broker: BrokerDep, ctx: CurrentPrincipal) -> JSONResponse:
    info = connection_details(broker, ctx, grant_id)
    # model_dump, not the response model's serialisation: the password field is repr=False only.
    return JSONResponse(info.model_dump(mode="json"), headers={"Cache-Control": "no-store"})
