"""Liveness and readiness."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter

from access.broker.api.deps import BrokerDep
from access.broker.errors import Unavailable

router = APIRouter()


@router.get("/healthz", include_in_schema=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
def readyz(broker: BrokerDep) -> dict[str, str]:
    """Ready when the database answers. Raises Unavailable otherwise."""
    with broker.transaction() as conn:
        conn.execute(sa.text("SELECT 1"))
    if broker.engine is None:  # pragma: no cover - defensive
        raise Unavailable("no database")
    return {"status": "ready"}
