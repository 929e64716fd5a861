"""The JSON API under /v1: sessions (whoami, logout), services, grants, connection details and audit."""

from __future__ import annotations

from fastapi import APIRouter

from access.broker.api import grants, session
from access.broker.api.schema import API_ERRORS
from access.broker.tunnel import http as tunnel_http

router = APIRouter(prefix="/v1", responses=API_ERRORS)
router.include_router(session.router)
router.include_router(grants.router)
router.include_router(tunnel_http.router)
