"""``/docs``: Swagger UI from the broker itself (no CDN, no inline script), and the schema it shows."""

from __future__ import annotations

import re

import httpx
import pytest

pytestmark = pytest.mark.anyio


async def test_the_page_loads_only_its_own_files(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self';" in csp and "connect-src 'self';" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-eval" not in csp and page.headers["x-frame-options"] == "DENY"
    assert "<script>" not in page.text  # every script is a file: the policy allows no inline one
    links = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert links and all(not re.match(r"[a-z]+:|//", link) for link in links), links  # nothing from elsewhere
    kinds = {}
    for link in links:
        answer = await client.get(f"/{link}")
        assert answer.status_code == 200, link
        kinds[link] = answer.headers["content-type"].split(";")[0]
    assert kinds == {
        "docs/swagger-ui.css": "text/css",
        "docs/favicon-32x32.png": "image/png",
        "docs/swagger-ui-bundle.js": "application/javascript",
        "docs/init.js": "application/javascript",
        "openapi.json": "application/json",
    }
    init = (await client.get("/docs/init.js")).text
    assert 'url: "openapi.json"' in init and "validatorUrl: null" in init  # no badge from a third party
    assert "SwaggerUIBundle" in (await client.get("/docs/swagger-ui-bundle.js")).text


async def test_only_the_pages_files_are_served(client: httpx.AsyncClient) -> None:
    for name in ("index.html", "swagger-ui.js.map", "..%2F..%2F__init__.py", "swagger-initializer.js"):
        answer = await client.get(f"/docs/{name}")
        assert (answer.status_code, answer.json()["error"]["code"]) == (404, "not_found"), name


async def test_the_schema_says_how_the_broker_answers(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "an access token from `access login` (the device flow) or POST /oauth/token",
    }
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    error = {"$ref": "#/components/schemas/ErrorBody"}
    operations = [(path, op) for path, item in schema["paths"].items() for op in item.values()]
    assert not [path for path, _ in operations if path.startswith(("/docs", "/device", "/inbox", "/oidc"))]
    for path, op in operations:
        assert "422" not in op["responses"], path  # the broker answers bad input 400 in its own shape
        if path.startswith("/v1/"):
            assert op["responses"]["503"]["content"]["application/json"]["schema"] == error, path
        if path.startswith("/v1/"):
            assert op["security"] == [{"bearer": []}], path
            assert op["responses"]["401"]["content"]["application/json"]["schema"] == error, path
            assert op["responses"]["400"]["content"]["application/json"]["schema"] == error, path
    token = schema["paths"]["/oauth/token"]["post"]
    form = token["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    assert "grant_type" in form["required"]
    oauth_error = {"$ref": "#/components/schemas/OAuthErrorBody"}
    assert token["responses"]["400"]["content"]["application/json"]["schema"] == oauth_error
    assert token["responses"]["503"]["content"]["application/json"]["schema"] == {
        "anyOf": [oauth_error, error]
    }
