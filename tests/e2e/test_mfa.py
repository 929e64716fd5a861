"""TOTP and step-up through the real CLI and broker process: alice sets up one-time codes on the
inbox page (QR code, a first code), a write that a rule's ``mfa: 10m`` guards is refused from a
plain ``access login`` session (exit 3, "access login --mfa"); ``access login --mfa`` is refused
on the device page with the password alone and approved with the password and a code; the same
request is then issued. A user without codes is told on the page how to set them up."""

from __future__ import annotations

import re
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest

from access.cli.browser import complete_device_login, parse_forms
from access.shared.devca import DevCA
from access.shared.errors import ExitCode
from tests.e2e.conftest import Cli, make_broker_process, new_cli, running

POLICY: dict[str, Any] = {
    "services": [
        {
            "name": "svc-payments",
            "kind": "tcp",
            "target": "127.0.0.1:9",
            "scopes": ["read", "write"],
            "max_ttl": "1h",
        }
    ],
    "rules": [
        {
            "name": "write-with-mfa",
            "subjects": {"groups": ["sre"]},
            "services": ["svc-payments"],
            "scopes": ["write"],
            "mfa": "10m",
        }
    ],
}
WRITE = ("request", "svc-payments", "--scope", "write", "--ttl", "10m", "--reason", "INC-7")
_CODE = r"\b([B-DF-HJ-NP-TV-XZ]{4}-[B-DF-HJ-NP-TV-XZ]{4})\b"


def _enrol_on_the_inbox_page(url: str, ca_file: str, username: str, password: str) -> str:
    """Sign in to /inbox, set up one-time codes on /inbox/mfa and confirm them; the secret."""
    verify = ssl.create_default_context(cafile=ca_file)
    with httpx.Client(base_url=url, verify=verify, follow_redirects=True, timeout=10) as browser:

        def post(path: str, page: httpx.Response, **data: str) -> httpx.Response:
            [form] = [f for f in parse_forms(page.text) if f.action == path]
            return browser.post(path, data={**form.fields, **data})

        page = post("/inbox", browser.get("/inbox"), username=username, password=password)
        assert "Signed in as" in page.text, page.text
        page = post("/inbox/mfa/begin", browser.get("/inbox/mfa"))
        assert page.status_code == 200 and "<svg" in page.text, page.text
        match = re.search(r"<dt>Secret</dt><dd>([A-Z2-7]+)</dd>", page.text)
        assert match, page.text
        secret = match.group(1)
        page = post("/inbox/mfa/confirm", page, otp=pyotp.TOTP(secret).now())
        assert "One-time codes are on" in page.text, page.text
    return secret


def _step_up(cli: Cli, username: str, password: str, secret: str) -> None:
    login = cli.watch("login", "--no-browser", "--mfa")
    code = login.until(_CODE).group(1)
    login.until("needs a second factor")
    ca = str(cli.broker.ca.ca_cert)
    with pytest.raises(RuntimeError, match=r"sign-in refused \(401\)"):
        complete_device_login(cli.broker.url, code, username, password, ca_file=ca)
    # The next step's code: the confirming code's step is spent, and one step ahead is accepted.
    otp = pyotp.TOTP(secret).at(time.time() + 30)
    complete_device_login(cli.broker.url, code, username, password, ca_file=ca, otp=otp)
    done = login.finish()
    assert done.returncode == 0, done.stderr
    assert "Signed in to" in done.stderr


def test_totp_and_step_up(tmp_path: Path, devca: DevCA) -> None:
    proc = make_broker_process(tmp_path, devca, f"sqlite:///{tmp_path / 'broker-data' / 'broker.db'}", POLICY)
    proc.add_user("alice", "alice-password-1", "sre")
    proc.add_user("bob", "bob-password-1", "sre")
    with running(proc):
        alice = new_cli(tmp_path, proc)
        assert alice.device_login("alice", "alice-password-1").returncode == 0
        assert re.search(r"second factor\s+none", alice.run("whoami").stdout)

        refused = alice.run(*WRITE)
        assert refused.returncode == ExitCode.NEEDS_LOGIN, refused.stderr
        assert "access login --mfa" in refused.stderr

        secret = _enrol_on_the_inbox_page(proc.url, str(proc.ca.ca_cert), "alice", "alice-password-1")
        _step_up(alice, "alice", "alice-password-1", secret)
        assert re.search(r"second factor\s+\d+s ago", alice.run("whoami").stdout)
        issued = alice.run(*WRITE)
        assert issued.returncode == ExitCode.OK, issued.stderr

        # bob has no codes: access login --mfa cannot complete (the page says what to do: tests/broker/web).
        bob_home = tmp_path / "bob"
        bob_home.mkdir()
        bob = Cli(home=bob_home, broker=proc)
        login = bob.watch("login", "--no-browser", "--mfa", "--timeout", "30s")
        code = login.until(_CODE).group(1)
        with pytest.raises(RuntimeError, match=r"sign-in refused \(403\)"):
            complete_device_login(proc.url, code, "bob", "bob-password-1", ca_file=str(proc.ca.ca_cert))
        login.kill()
        assert login.finish().returncode != 0  # killed while waiting; its pipes closed
