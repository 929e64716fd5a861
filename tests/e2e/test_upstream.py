"""Signing in with an upstream OpenID provider, end to end: the real broker process, the real CLI.

The provider is tests/fakes/oidcmock.py served over real HTTP on loopback (its keys, codes,
refresh tokens and groups its own), and then the real oidc-provider under Node
(tests/fakes/oidcprovider.py); the browser is httpx following the pages' forms. ``access
login`` prints its code; the person signs in at the provider and approves; policy decisions
then use the provider's groups, and a group removed there stops counting at the next refresh.
"""

from __future__ import annotations

import copy
import json
import re
import ssl
import time
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import pytest

from access.shared.errors import ExitCode
from tests.conftest import DEFAULT_POLICY
from tests.e2e.conftest import BrokerProcess, Cli, DevCA, make_broker_process, running
from tests.fakes.oidcmock import CLIENT_SECRET, FakeProvider, loopback_provider, provider_settings

pytestmark = pytest.mark.e2e

_CODE = r"\b([B-DF-HJ-NP-TV-XZ]{4}-[B-DF-HJ-NP-TV-XZ]{4})\b"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_CONSENT = re.compile(r'name="consent_token" value="([^"]+)"')
_REFRESH = re.compile(r'http-equiv="refresh" content="0; url=([^"]+)"')


def _policy() -> dict[str, Any]:
    policy = copy.deepcopy(DEFAULT_POLICY)
    policy["rules"].append(
        {
            "name": "eng-payments-read",
            "subjects": {"groups": ["eng"]},
            "services": ["svc-payments"],
            "scopes": ["read"],
            "max_ttl": "30m",
            "require": "auto",
        }
    )
    return policy


@pytest.fixture
def idp() -> Iterator[FakeProvider]:
    with loopback_provider() as provider:
        provider.set_groups("alice", ["eng"])
        provider.set_groups("carol", [])
        yield provider


def _broker(
    tmp_path: Path, devca: DevCA, database_url: str, idp: Any, secret: str
) -> Iterator[BrokerProcess]:
    proc = make_broker_process(
        tmp_path,
        devca,
        database_url,
        _policy(),
        ACCESS_BROKER_OIDC_PROVIDERS=json.dumps([provider_settings(issuer=idp.issuer)]),
        IDP_SECRET=secret,
    )
    with running(proc):
        idp.add_redirect_uri(f"{proc.url}/oidc/idp/callback")  # as registered at a real provider
        yield proc


@pytest.fixture
def broker(tmp_path: Path, devca: DevCA, e2e_db: str, idp: FakeProvider) -> Iterator[BrokerProcess]:
    """The broker (SQLite and PostgreSQL) trusting the provider written here."""
    yield from _broker(tmp_path, devca, e2e_db, idp, CLIENT_SECRET)


@pytest.fixture
def real_broker(tmp_path: Path, devca: DevCA, oidc_provider: Any) -> Iterator[BrokerProcess]:
    """The broker (SQLite) trusting the real oidc-provider (tests/fakes/oidcprovider.py)."""
    url = f"sqlite:///{tmp_path / 'broker-data' / 'broker.db'}"
    yield from _broker(tmp_path, devca, url, oidc_provider, oidc_provider.client_secret)


def _cli(tmp_path: Path, broker: BrokerProcess, name: str) -> Cli:
    home = tmp_path / f"home-{name}"
    home.mkdir()
    return Cli(home=home, broker=broker)


def _sign_in_at_provider(broker: BrokerProcess, idp: Any, user_code: str, user: str) -> str:
    """What the person does in the browser: "Sign in with", the provider, Approve. The page shown."""
    verify = ssl.create_default_context(cafile=str(broker.ca.ca_cert))
    with httpx.Client(base_url=broker.url, verify=verify, timeout=10) as browser:
        form = browser.get("/device", params={"user_code": user_code})
        assert "Sign in with Example IdP" in form.text
        csrf = _CSRF.search(form.text)
        assert csrf, form.text
        going = browser.post("/device/oidc/idp", data={"csrf_token": csrf.group(1), "user_code": user_code})
        match = _REFRESH.search(going.text)
        assert going.status_code == 200 and match, going.text
        callback = idp.sign_in(unescape(match.group(1)), user, f"{user}-pw")  # signed in there
        assert callback.startswith(f"{broker.url}/oidc/idp/callback?"), callback
        confirm = browser.get(callback)
        if confirm.status_code != 200:
            return confirm.text
        csrf, consent = _CSRF.search(confirm.text), _CONSENT.search(confirm.text)
        assert csrf and consent, confirm.text
        done = browser.post(
            "/device/confirm",
            data={"csrf_token": csrf.group(1), "consent_token": consent.group(1), "action": "approve"},
        )
        assert done.status_code == 200, done.text
        return done.text


def _login(cli: Cli, broker: BrokerProcess, idp: Any, user: str) -> None:
    login = cli.watch("login", "--no-browser")
    code = login.until(_CODE).group(1)
    assert "Device authorized" in _sign_in_at_provider(broker, idp, code, user)
    result = login.finish()
    assert result.returncode == 0, result.stderr


def _whoami(cli: Cli) -> dict[str, Any]:
    result = cli.run("whoami", "-o", "json")
    assert result.returncode == 0, result.stderr
    me: dict[str, Any] = json.loads(result.stdout)
    return me


def _request(cli: Cli) -> Any:
    return cli.run(
        "request", "svc-payments", "--scope", "read", "--ttl", "5m", "--reason", "INC-7", "-o", "json"
    )


def _expire_access_token(cli: Cli) -> None:
    """As when the CLI's access token has expired: its next call is refused and it refreshes."""
    path = cli.home / "config" / "access" / "tokens.json"
    data = json.loads(path.read_text())
    for tokens in data.values():
        tokens["access_token"] = "expired"
    path.write_text(json.dumps(data))


def test_people_sign_in_upstream_and_its_groups_decide(
    tmp_path: Path, broker: BrokerProcess, idp: FakeProvider
) -> None:
    _scenario(tmp_path, broker, idp)


def test_the_same_with_the_real_oidc_provider(
    tmp_path: Path, real_broker: BrokerProcess, oidc_provider: Any
) -> None:
    """panva's oidc-provider (OpenID-certified) with its own sign-in and consent pages, RSA keys."""
    _scenario(tmp_path, real_broker, oidc_provider)


def _scenario(tmp_path: Path, broker: BrokerProcess, idp: Any) -> None:
    alice, carol = _cli(tmp_path, broker, "alice"), _cli(tmp_path, broker, "carol")
    _login(alice, broker, idp, "alice")
    assert (_whoami(alice)["name"], _whoami(alice)["groups"]) == ("alice", ["eng"])
    granted = _request(alice)
    assert granted.returncode == 0, granted.stderr
    assert json.loads(granted.stdout)["state"] == "active"

    _login(carol, broker, idp, "carol")  # provisioned too, without the group
    refused = _request(carol)
    assert refused.returncode == ExitCode.DENIED, refused.stderr

    # Removed from eng at the provider: gone at alice's next refresh.
    idp.set_groups("alice", [])
    _expire_access_token(alice)
    assert _whoami(alice)["groups"] == []
    assert _request(alice).returncode == ExitCode.DENIED

    # The provider rotates its keys: the next sign-in still works (the broker refetches them,
    # at most once per 5 seconds: wait that long since its last fetch).
    last_fetch = time.monotonic()
    idp.rotate_keys()
    idp.set_groups("alice", ["eng"])
    time.sleep(max(0.0, 5.5 - (time.monotonic() - last_fetch)))
    _login(alice, broker, idp, "alice")
    assert _whoami(alice)["groups"] == ["eng"]

    # Disabled at the provider: the next refresh ends the session.
    idp.disable("alice")
    _expire_access_token(alice)
    ended = alice.run("whoami")
    assert ended.returncode != 0
    assert "your sign-in with Example IdP ended" in ended.stderr, ended.stderr

    # Offboarding by the provider's subject: every token of carol's ends at once.
    users = broker.admin("users", "list")
    assert "oidc:idp" in users.stdout and "carol" in users.stdout
    broker.admin("users", "revoke-sessions", "--provider", "idp", "--subject", "sub-carol")
    assert carol.run("whoami").returncode != 0
    broker.admin("audit", "verify")
