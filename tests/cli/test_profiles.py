"""A profile per broker: two brokers in-process (routed by host), each with its own CA file."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from access.cli import config
from access.cli.client import BrokerClient
from access.cli.context import Globals
from access.shared.devca import make_ca
from access.shared.errors import ExitCode
from tests.cli.conftest import BrokerApp, InProcessTransport, LiveBroker, Result, invoke
from tests.cli.test_commands import POLICY

A, B = "https://a.test", "https://b.test"


class ByHost(httpx.BaseTransport):
    """Each request to the in-process broker its host names."""

    def __init__(self, routes: dict[str, InProcessTransport]) -> None:
        self.routes = routes

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.routes[request.url.host].handle_request(request)


@pytest.fixture
def two(broker_app: BrokerApp) -> tuple[LiveBroker, LiveBroker, ByHost]:
    first, second = broker_app(policy=POLICY, users={}), broker_app(policy=POLICY, users={})
    return first, second, ByHost({"a.test": first.transport, "b.test": second.transport})


def _run(transport: ByHost, live: LiveBroker, *args: str) -> Result:
    return invoke(*args, obj=Globals(transport=transport, now=live.now))


def _login(transport: ByHost, live: LiveBroker, url: str, ca: Path, tmp_path: Path, name: str) -> None:
    client_id, secret = live.service_account(name, ["ci"])
    secret_file = tmp_path / f"{name}.secret"
    secret_file.write_text(secret)
    secret_file.chmod(0o600)
    result = _run(
        transport,
        live,
        *("--broker", url, "login", "--ca-file", str(ca), "--client-id", client_id),
        *("--client-secret-file", str(secret_file)),
    )
    assert result.exit_code == 0, result.stderr


def test_a_second_broker_keeps_the_first_ones_profile_ca_and_tokens(
    two: tuple[LiveBroker, LiveBroker, ByHost], tmp_path: Path, config_dir: Path
) -> None:
    first, second, transport = two
    ca_a, ca_b = make_ca(tmp_path / "ca-a").ca_cert, make_ca(tmp_path / "ca-b").ca_cert
    _login(transport, first, A, ca_a, tmp_path, "bot-a")
    granted = _run(transport, first, "request", "svc-payments", "-s", "read", "-t", "10m", "-o", "json")
    assert granted.exit_code == 0, granted.stderr
    _login(transport, second, B, ca_b, tmp_path, "bot-b")

    assert config.current_broker() == B
    assert {url: p["ca_file"] for url, p in config.profiles().items()} == {A: str(ca_a), B: str(ca_b)}
    assert BrokerClient.from_config(A).ca_file == str(ca_a)  # --broker A: A's CA, no --ca-file
    assert BrokerClient.from_config().ca_file == str(ca_b)

    assert "bot-b" in _run(transport, second, "whoami").stdout  # the current profile
    assert "bot-a" in _run(transport, first, "--broker", A, "whoami").stdout

    shown = _run(transport, first, "status", "-o", "json")
    assert shown.exit_code == 0, shown.stderr
    entries = json.loads(shown.stdout)
    assert [(e["broker"], e["current"], e["principal"]["name"]) for e in entries] == [
        (B, True, "bot-b"),
        (A, False, "bot-a"),
    ]
    session_end = first.clock.now() + timedelta(seconds=first.broker.settings.service_account_session_ttl)
    assert entries[1]["principal"]["session_expires_at"].replace("Z", "+00:00") == session_end.isoformat()
    assert [g["id"] for g in entries[1]["grants"]] == [json.loads(granted.stdout)["id"]]
    assert entries[0]["grants"] == [] and entries[0]["error"] is None

    text = _run(transport, first, "status")
    assert text.exit_code == 0, text.stderr
    assert f"{B} (current)" in text.stdout and f"{A}\n" in text.stdout
    assert "bot-a (service_account)" in text.stdout and "svc-payments read, 10m left" in text.stdout

    one = _run(transport, first, "--broker", A, "status", "-o", "json")
    assert [e["broker"] for e in json.loads(one.stdout)] == [A]

    # Signing out of B leaves A signed in, and B's profile (URL, CA) for the next login.
    assert _run(transport, second, "logout").exit_code == 0
    after = _run(transport, first, "status", "-o", "json")
    assert after.exit_code == ExitCode.NEEDS_LOGIN  # the current profile is signed out
    assert [(e["broker"], e["signed_in"]) for e in json.loads(after.stdout)] == [(B, False), (A, True)]
    assert config.profiles()[B] == {"ca_file": str(ca_b)}


def test_an_old_single_broker_config_reads_as_one_current_profile(config_dir: Path, tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca").ca_cert
    config_dir.mkdir(parents=True)
    old = {"broker_url": A, "ca_file": str(ca), "insecure": True, "token_file_note_shown": True}
    (config_dir / "config.json").write_text(json.dumps(old))

    made = BrokerClient.from_config()
    assert (made.base_url, made.ca_file, made.insecure) == (A, str(ca), True)
    assert config.profiles() == {A: {"ca_file": str(ca), "insecure": True}}

    config.save_profile(B)  # the next login rewrites the file in the new form
    saved = json.loads((config_dir / "config.json").read_text())
    assert saved == {
        "current": B,
        "profiles": {A: {"ca_file": str(ca), "insecure": True}, B: {}},
        "token_file_note_shown": True,
    }


def test_status_without_any_login(config_dir: Path) -> None:
    result = invoke("status")
    assert result.exit_code == ExitCode.NEEDS_LOGIN
    assert "not signed in to any broker" in result.stderr


def test_whoami_shows_when_the_session_ends_not_the_access_token(broker_app: BrokerApp) -> None:
    live = broker_app()
    live.sign_in("alice")
    me = json.loads(live.invoke("whoami", "-o", "json").stdout)
    session_end = live.clock.now() + timedelta(seconds=live.broker.settings.session_ttl)
    assert me["session_expires_at"].replace("Z", "+00:00") == session_end.isoformat()
    text = live.invoke("whoami").stdout
    assert "session ends" in text and "token expires" not in text
