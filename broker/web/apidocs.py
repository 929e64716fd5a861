"""``/docs``: Swagger UI over ``/openapi.json``, served by the broker itself, no CDN.

FastAPI's own docs page loads Swagger UI's script and stylesheet from a CDN: brokers often run
where there is no internet, and a page that runs third-party script next to the API's tokens is
one more thing to trust. So the assets come from the ``swagger-ui-bundle`` package (Swagger
UI's release files) and go out from here, with a policy (CSP) that lets the page run only
them: no inline script (the set-up is ``/docs/init.js``), no other origin, no framing.
Swagger UI's own validator badge (a request to a third party) is turned off.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, Response

from access.broker.errors import NotFound

__all__ = ["DOCS_HEADERS", "router"]

router = APIRouter(include_in_schema=False)

# The page runs the bundle's script and ours, styles from the stylesheet (and the inline ones
# Swagger UI sets), images from the bundle or data: URLs (its icons); fetches only this origin.
DOCS_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; form-action 'none'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

# Relative links: the page works under a path prefix too (/docs -> openapi.json, docs/...).
_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>access broker: API</title>
<link rel="stylesheet" href="docs/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"><noscript>This page needs JavaScript; the schema itself is
<a href="openapi.json">openapi.json</a>.</noscript></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script src="docs/init.js"></script>
</body>
</html>
"""

_INIT = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
"""

# The bundle's files the page uses, and nothing else of the package.
_ASSETS: dict[str, str] = {
    "swagger-ui-bundle.js": "application/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
_CACHED = {"Cache-Control": "public, max-age=86400"}


@functools.cache
def _asset_dir() -> Path:
    # ``swagger_ui_bundle.swagger_ui_path`` names the same folder; found here by its layout
    # (vendor/swagger-ui-<version>/) so the module, which ships no type information, is not imported.
    vendor = Path(str(resources.files("swagger_ui_bundle") / "vendor"))
    (folder,) = sorted(vendor.glob("swagger-ui-*"))
    return folder


@router.get("/docs", response_class=HTMLResponse)
def docs_page() -> Response:
    return HTMLResponse(_PAGE, headers={**DOCS_HEADERS, "Cache-Control": "no-cache"})


@router.get("/docs/init.js")
def docs_init() -> Response:
    return Response(_INIT, media_type="application/javascript", headers={**DOCS_HEADERS, **_CACHED})


@router.get("/docs/{name}")
def docs_asset(name: str) -> Response:
    """One of Swagger UI's files. Raises NotFound for any other name."""
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no such file under /docs: {name[:60]!r}", hint="the API docs are at /docs")
    return FileResponse(_asset_dir() / name, media_type=media_type, headers={**DOCS_HEADERS, **_CACHED})
