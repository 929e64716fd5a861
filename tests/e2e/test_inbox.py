"""The approvals inbox in a real browser: Debian's Chromium, headless, driven by Playwright,
against the real broker process, with requests made and checked by the real CLI.

One broker and one browser for the whole story (approve, then deny, then sign out), so it
stays within a few seconds. Screenshots of the sign-in page, the list and each result go to the
test's temporary folder and, when ``ACCESS_SCREENSHOTS`` names a folder, there too (for the
issue's note). Chromium or Playwright missing fails the test with what to install: never a skip.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from access.shared.errors import ExitCode
from tests.conftest import REVIEWED_POLICY
from tests.e2e.conftest import Cli, DevCA, make_broker_process, new_cli, running

pytestmark = pytest.mark.e2e

BOB_PASSWORD = "bob-password-1"
CAROL_PASSWORD = "carol-password-1"
NAVIGATION_TIMEOUT_MS = 10_000  # every wait on the page is bounded by this


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed: `apt-get install chromium` (Debian's; .ci/run installs it)")
    return path


def _spki_pin(devca: DevCA) -> str:
    """The base64 SHA-256 of the broker certificate's public key: Chromium trusts that key alone
    (``--ignore-certificate-errors-spki-list``), not every certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(devca.server_cert.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def launch_chromium(playwright: Any, devca: DevCA) -> Any:
    """Debian's Chromium, headless, trusting the broker's certificate key alone."""
    return playwright.chromium.launch(
        executable_path=_chromium(),
        headless=True,
        args=["--no-sandbox", f"--ignore-certificate-errors-spki-list={_spki_pin(devca)}"],
    )


class Shots:
    """Screenshots into the test's folder and, if set, ``ACCESS_SCREENSHOTS``."""

    def __init__(self, tmp_path: Path) -> None:
        self.folders = [tmp_path / "screenshots"]
        extra = os.environ.get("ACCESS_SCREENSHOTS")
        if extra:
            self.folders.append(Path(extra))
        for folder in self.folders:
            folder.mkdir(parents=True, exist_ok=True)

    def take(self, page: Any, name: str) -> None:
        image = page.screenshot(full_page=True)
        for folder in self.folders:
            (folder / f"inbox-{name}.png").write_bytes(image)


def _json(result: Any) -> Any:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return json.loads(result.stdout)


def _ask(cli: Cli, reason: str) -> dict[str, Any]:
    """bob asks for write on svc-payments: it waits for review (the pending exit code)."""
    result = cli.run(
        "request", "svc-payments", "-s", "write", "-t", "15m", "-r", reason, "--no-wait", "-o", "json"
    )
    assert result.returncode == ExitCode.PENDING, f"exit {result.returncode}: {result.stderr}"
    grant: dict[str, Any] = json.loads(result.stdout)
    assert grant["state"] == "pending", grant
    return grant


def test_a_reviewer_approves_and_denies_in_chromium(tmp_path: Path, devca: DevCA) -> None:
    _chromium()  # fails with what to install before anything starts
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: `pip install '.[test]'` (the test extra has it)")

    proc = make_broker_process(
        tmp_path, devca, f"sqlite:///{tmp_path / 'broker-data' / 'broker.db'}", REVIEWED_POLICY
    )
    with ThreadPoolExecutor(2) as pool:  # two admin processes at once: each is mostly start-up
        list(
            pool.map(
                lambda user: proc.add_user(*user),
                [("bob", BOB_PASSWORD, "dev"), ("carol", CAROL_PASSWORD, "leads")],
            )
        )
    shots = Shots(tmp_path)
    with running(proc):
        bob = new_cli(tmp_path, proc)
        assert bob.device_login("bob", BOB_PASSWORD).returncode == 0
        first = _ask(bob, "CHG-42 <script>alert(1)</script>")
        second = _ask(bob, "CHG-43")

        with sync_playwright() as playwright:
            browser = launch_chromium(playwright, devca)
            try:
                # No JavaScript at all: the page must work without it (and it sends none).
                context = browser.new_context(
                    java_script_enabled=False, viewport={"width": 1000, "height": 700}
                )
                context.set_default_timeout(NAVIGATION_TIMEOUT_MS)
                expect.set_options(timeout=NAVIGATION_TIMEOUT_MS)  # bounded waits, with room for a loaded CI
                page = context.new_page()

                # Sign in.
                page.goto(f"{proc.url}/inbox")
                expect(page.get_by_role("heading", name="Sign in to review access requests")).to_be_visible()
                shots.take(page, "1-sign-in")
                page.get_by_label("Username").fill("carol")
                page.get_by_label("Password").fill(CAROL_PASSWORD)
                page.get_by_role("button", name="Sign in").click()

                # The list: bob's two requests, the reason shown as text.
                card = page.locator(f"#request-{first['id']}")
                expect(page.get_by_text("Signed in as carol")).to_be_visible()
                expect(page.locator("article")).to_have_count(2)
                expect(card).to_contain_text("bob asks for write on svc-payments")
                expect(card).to_contain_text("CHG-42 <script>alert(1)</script>")
                expect(card).to_contain_text("needs 1 more of group:leads")
                shots.take(page, "2-list")

                # Approve with a comment: the page says what happened.
                card.get_by_label("Comment").fill("ok for the migration")
                card.get_by_role("button", name="Approve").click()
                expect(page.get_by_role("status")).to_contain_text(
                    f"You approved bob's request for write on svc-payments ({first['id']}). It is granted"
                )
                expect(page.locator("article")).to_have_count(1)
                shots.take(page, "3-approved")

                # Deny: without a reason it is refused (the list says why), with one it is done.
                card = page.locator(f"#request-{second['id']}")
                card.get_by_role("button", name="Deny").click()
                expect(page.get_by_role("alert")).to_contain_text("a denial needs a reason")
                card = page.locator(f"#request-{second['id']}")
                card.get_by_label("Comment").fill("not during the freeze")
                card.get_by_role("button", name="Deny").click()
                expect(page.get_by_role("status")).to_contain_text(
                    f"You denied bob's request for write on svc-payments ({second['id']})."
                )
                expect(page.get_by_text("Nothing waits for your review.")).to_be_visible()
                shots.take(page, "4-denied")

                # Sign out: back to the form, and the list is gone.
                page.get_by_role("button", name="Sign out").click()
                expect(page.get_by_text("You are signed out.")).to_be_visible()
                page.goto(f"{proc.url}/inbox")
                expect(page.get_by_label("Password")).to_be_visible()
            finally:
                browser.close()

        # What bob's CLI says: the approved request is an active grant, its TTL counted from the
        # approval; the denied one is denied.
        listed = {g["id"]: g for g in _json(bob.run("grants", "--all", "-o", "json"))}
        assert listed[first["id"]]["state"] == "active", listed
        assert 800 <= listed[first["id"]]["seconds_left"] <= 900
        assert listed[second["id"]]["state"] == "denied", listed
