"""Absolute URLs the broker sends come from its configured public URL, never from the request."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest

from tests.broker.conftest import BASE_URL

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("path", ["/device/", "/device//", "/healthz/", "/v1/whoami/"])
async def test_a_trailing_slash_redirects_to_the_public_url_whatever_the_host_header(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path, headers={"Host": "evil.example"})
    assert response.status_code == 307
    location = response.headers["location"]
    assert urlsplit(location).netloc == urlsplit(BASE_URL).netloc
    assert location == BASE_URL + path.rstrip("/")


async def test_the_query_string_survives_the_redirect(client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/device/", params={"user_code": "BCDF-GHJK"}, headers={"Host": "evil.example"}
    )
    assert response.headers["location"] == f"{BASE_URL}/device?user_code=BCDF-GHJK"


@pytest.mark.parametrize("path", ["/nothing-here/", "//evil.example/", "/"])
async def test_no_redirect_for_what_is_not_a_route(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path, headers={"Host": "evil.example"})
    assert response.status_code == 404
    assert "location" not in response.headers
    assert response.json()["error"]["message"] == "no such endpoint"
