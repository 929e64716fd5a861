"""`access login`: the device flow (RFC 8628) with injected time, and client credentials."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
import respx

from access.cli import device
from access.cli.client import BrokerClient, DeviceAuthorization
from access.cli.errors import Denied, Expired
from access.cli.tokens import Tokens
from access.shared.errors import ExitCode
from tests.cli.conftest import BROKER, PRINCIPAL, invoke, stored

DEVICE = {
    "device_code": "dc-secret",
    "user_code": "BCDF-GHJK",
    "verification_uri": f"{BROKER}/device",
    "verification_uri_complete": f"{BROKER}/device?user_code=BCDF-GHJK",
    "expires_in": 600,
    "interval": 5,
}
TOKENS = {"access_token": "at-new", "refresh_token": "rt-new", "token_type": "Bearer", "expires_in": 900}


class FakeTime:
    """sleep() records the interval and advances monotonic(): polling without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


def _oauth_error(error: str) -> httpx.Response:
    return httpx.Response(400, json={"error": error, "error_description": error.replace("_", " ")})


def _token_route(broker: respx.MockRouter, *responses: httpx.Response) -> respx.Route:
    return broker.post("/oauth/token").mock(side_effect=list(responses))


def _auth(**overrides: object) -> DeviceAuthorization:
    return DeviceAuthorization(**{**DEVICE, **overrides})  # type: ignore[arg-type]


def test_polling_honours_interval_and_slow_down(broker: respx.MockRouter) -> None:
    route = _token_route(
        broker,
        _oauth_error("authorization_pending"),
        _oauth_error("slow_down"),
        _oauth_error("authorization_pending"),
        httpx.Response(200, json=TOKENS),
    )
    clock = FakeTime()
    tokens = device.wait_for_approval(
        BrokerClient(BROKER), _auth(), sleep=clock.sleep, monotonic=clock.monotonic
    )
    assert isinstance(tokens, Tokens)
    assert tokens.access_token == "at-new" and tokens.refresh_token == "rt-new"
    assert clock.sleeps == [5, 5, 10, 10]  # slow_down adds 5 s for the rest of the login
    sent = parse_qs(route.calls[0].request.content.decode())
    assert sent == {
        "grant_type": ["urn:ietf:params:oauth:grant-type:device_code"],
        "device_code": ["dc-secret"],
        "client_id": ["access-cli"],
    }


def test_polling_gives_up_when_the_code_runs_out(broker: respx.MockRouter) -> None:
    _token_route(broker, *[_oauth_error("authorization_pending")] * 5)
    clock = FakeTime()
    with pytest.raises(Expired):
        device.wait_for_approval(
            BrokerClient(BROKER), _auth(expires_in=12), sleep=clock.sleep, monotonic=clock.monotonic
        )
    assert clock.sleeps == [5, 5, 5]


@pytest.mark.parametrize(("error", "exception"), [("access_denied", Denied), ("expired_token", Expired)])
def test_polling_stops_on_terminal_errors(broker: respx.MockRouter, error: str, exception: type) -> None:
    _token_route(broker, _oauth_error("authorization_pending"), _oauth_error(error))
    clock = FakeTime()
    with pytest.raises(exception):
        device.wait_for_approval(BrokerClient(BROKER), _auth(), sleep=clock.sleep, monotonic=clock.monotonic)


@pytest.fixture
def instant(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    clock = FakeTime()
    monkeypatch.setattr(device, "SLEEP", clock.sleep)
    monkeypatch.setattr(device, "MONOTONIC", clock.monotonic)
    return clock


@pytest.mark.parametrize(
    ("error", "code", "text"),
    [
        ("access_denied", ExitCode.DENIED, "denied"),
        ("expired_token", ExitCode.EXPIRED, "run `access login` again"),
        ("invalid_grant", ExitCode.ERROR, "run `access login` again"),  # e.g. a reused device code
    ],
)
def test_login_exit_codes(
    broker: respx.MockRouter, instant: FakeTime, config_dir: Path, error: str, code: int, text: str
) -> None:
    broker.post("/oauth/device_authorization").respond(200, json=DEVICE)
    _token_route(broker, _oauth_error("authorization_pending"), _oauth_error(error))
    result = invoke("--broker", BROKER, "login", "--no-browser")
    assert result.exit_code == code, result.stderr
    assert text in result.stderr
    assert "error: " in result.stderr and "hint: " in result.stderr
    assert stored(config_dir) is None


def test_device_login_stores_tokens_and_says_so_once(
    broker: respx.MockRouter, instant: FakeTime, config_dir: Path
) -> None:
    authorize = broker.post("/oauth/device_authorization").respond(200, json=DEVICE)
    _token_route(broker, _oauth_error("authorization_pending"), httpx.Response(200, json=TOKENS))
    whoami = broker.get("/v1/whoami").respond(200, json=PRINCIPAL)
    result = invoke("login", "--broker", BROKER + "/", "--no-browser")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""  # messages only: all on stderr
    assert f"{BROKER}/device" in result.stderr and "BCDF-GHJK" in result.stderr
    assert "tokens are kept in" in result.stderr
    assert "Signed in to https://broker.test as alice" in result.stderr
    form = parse_qs(authorize.calls[0].request.content.decode())
    assert form["client_id"] == ["access-cli"] and form["client_host"]
    assert whoami.calls[0].request.headers["authorization"] == "Bearer at-new"

    token_file = config_dir / "tokens.json"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stored(config_dir)["refresh_token"] == "rt-new"  # type: ignore[index]
    assert json.loads((config_dir / "config.json").read_text())["broker_url"] == BROKER

    # Second login: the token-file note is not repeated, the replaced session is revoked.
    _token_route(broker, httpx.Response(200, json={**TOKENS, "refresh_token": "rt-2"}))
    revoke = broker.post("/oauth/revoke").respond(200, json={})
    again = invoke("login", "--no-browser")  # no --broker: the last login's broker
    assert again.exit_code == 0, again.stderr
    assert "tokens are kept in" not in again.stderr
    assert parse_qs(revoke.calls[0].request.content.decode())["token"] == ["rt-new"]


def test_client_credentials_reads_the_secret_from_a_private_file(
    broker: respx.MockRouter, tmp_path: Path, config_dir: Path
) -> None:
    token = broker.post("/oauth/token").respond(200, json={"access_token": "at-bot", "expires_in": 900})
    broker.get("/v1/whoami").respond(200, json={**PRINCIPAL, "name": "deploy-bot", "kind": "service_account"})
    secret = tmp_path / "secret"
    secret.write_text("s3cret-value\n")

    secret.chmod(0o644)
    loose = invoke("--broker", BROKER, "login", "--client-id", "cid", "--client-secret-file", str(secret))
    assert loose.exit_code == ExitCode.USAGE
    assert f"chmod 600 {secret}" in loose.stderr
    assert not token.called

    secret.chmod(0o600)
    ok = invoke("--broker", BROKER, "login", "--client-id", "cid", "--client-secret-file", str(secret))
    assert ok.exit_code == 0, ok.stderr
    assert "s3cret-value" not in ok.stdout + ok.stderr
    form = parse_qs(token.calls[0].request.content.decode())
    assert form == {
        "grant_type": ["client_credentials"],
        "client_id": ["cid"],
        "client_secret": ["s3cret-value"],
    }
    assert stored(config_dir)["client_id"] == "cid"  # type: ignore[index]


def test_client_id_without_a_secret_file_does_not_prompt_without_a_terminal(broker: respx.MockRouter) -> None:
    result = invoke("--broker", BROKER, "login", "--client-id", "cid", input="")
    assert result.exit_code == ExitCode.USAGE
    assert "--client-secret-file" in result.stderr


def test_wrong_client_secret_is_denied(broker: respx.MockRouter, tmp_path: Path) -> None:
    broker.post("/oauth/token").respond(
        401, json={"error": "invalid_client", "error_description": "bad secret"}
    )
    secret = tmp_path / "secret"
    secret.write_text("wrong")
    secret.chmod(0o600)
    result = invoke("--broker", BROKER, "login", "--client-id", "cid", "--client-secret-file", str(secret))
    assert result.exit_code == ExitCode.DENIED
    assert "bad secret" in result.stderr and "wrong" not in result.stderr
