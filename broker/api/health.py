"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter

from access.broker.api.deps import BrokerDep
from access.broker.store import engine

router = APIRouter()


@router.get("/healthz", include_in_schema=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
def readyz(broker: BrokerDep) -> dict[str, str]:
    """Ready when the database answers. Raises Unavailable otherwise."""
    with broker.transaction() as conn:
        engine.ping(conn)
    return {"status": "ready"}
