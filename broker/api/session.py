"""Who am I, and sign out: ``GET /v1/whoami``, ``POST /v1/logout`` (mounted by ``routes/api.py``)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from access.broker.api.deps import BrokerDep, CurrentPrincipal
from access.broker.auth import sessions
from access.shared.models import Principal

__all__ = ["router"]

router = APIRouter(tags=["session"])


@router.get("/whoami")
def whoami(broker: BrokerDep, ctx: CurrentPrincipal) -> Principal:
    """The caller's identity, groups, session and whether policy lets them read the audit log."""
    return Principal(
        name=ctx.name,
        kind=ctx.kind,
        groups=list(ctx.groups),
        session_id=ctx.session_id,
        token_expires_at=ctx.expires_at,
        session_expires_at=ctx.session_expires_at,
        can_read_audit=broker.policy.can_read_audit(ctx),
        mfa_at=ctx.mfa_at,
        mfa_age_seconds=None
        if ctx.mfa_at is None
        else max(0, int((broker.clock.now() - ctx.mfa_at).total_seconds())),
    )


@router.post("/logout")
async def logout(broker: BrokerDep, ctx: CurrentPrincipal) -> dict[str, str]:
    """Revoke the caller's session server-side: its refresh and access tokens stop working."""
    await run_in_threadpool(sessions.logout, broker, ctx)
    return {"status": "signed_out", "session_id": ctx.session_id}
