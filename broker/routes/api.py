"""The JSON API under /v1: sessions (whoami, logout), services, grants and audit."""

from __future__ import annotations

from fastapi import APIRouter

from access.broker.routes import grants, session

router = APIRouter(prefix="/v1")
router.include_router(session.router)
router.include_router(grants.router)
