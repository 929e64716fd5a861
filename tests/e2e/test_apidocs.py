"""``/docs`` in a real browser: Swagger UI renders every operation of the real broker's schema
under the page's policy (CSP), with no request to anywhere but the broker and no error in the
console (a script the policy blocked, or a schema this Swagger UI cannot read, shows there)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from ssl import create_default_context

import pytest

from tests.e2e.conftest import DevCA, make_broker_process, running
from tests.e2e.test_inbox import NAVIGATION_TIMEOUT_MS, _chromium, launch_chromium

pytestmark = pytest.mark.e2e


def test_swagger_ui_shows_every_operation_from_the_broker_alone(tmp_path: Path, devca: DevCA) -> None:
    _chromium()  # fails with what to install before anything starts
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: `pip install '.[test]'` (the test extra has it)")

    proc = make_broker_process(tmp_path, devca, f"sqlite:///{tmp_path / 'broker-data' / 'broker.db'}")
    with running(proc):
        tls = create_default_context(cafile=str(devca.ca_cert))
        with urllib.request.urlopen(f"{proc.url}/openapi.json", context=tls, timeout=10) as answer:  # noqa: S310
            schema = json.load(answer)
        operations = sum(len(item) for item in schema["paths"].values())
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright, devca)
            try:
                page = browser.new_page()
                page.set_default_timeout(NAVIGATION_TIMEOUT_MS)
                expect.set_options(timeout=NAVIGATION_TIMEOUT_MS)
                requested: list[str] = []
                console: list[str] = []
                page.on("request", lambda request: requested.append(request.url))
                page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
                page.goto(f"{proc.url}/docs")
                expect(page.locator(".opblock")).to_have_count(operations)
                expect(page.get_by_role("button", name="Authorize")).to_be_visible()
                expect(page.get_by_text("/v1/grants/{grant_id}/extend")).to_be_visible()
            finally:
                browser.close()
    assert operations >= 17
    assert requested and all(url.startswith(f"{proc.url}/") for url in requested), requested
    assert f"{proc.url}/openapi.json" in requested
    assert not [line for line in console if line.startswith("error")], console
