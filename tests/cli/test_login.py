"""`access login` against the real broker in-process: the device flow (RFC 8628) with injected
time, and client credentials.
"""

from __future__ import annotations

import dataclasses
import json
import stat
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from access.cli import device
from access.cli.client import BrokerClient, DeviceAuthorization
from access.cli.errors import Denied, Expired, TimedOut
from access.cli.tokens import FileStore, Tokens
from access.shared.errors import ExitCode
from tests.cli.conftest import BROKER, BrokerApp, LiveBroker, invoke, stored

# A device authorization as the broker sends it (for tests of the code display alone).
DEVICE = {
    "device_code": "dc-secret",
    "user_code": "BCDF-GHJK",
    "verification_uri": f"{BROKER}/device",
    "verification_uri_complete": f"{BROKER}/device?user_code=BCDF-GHJK",
    "expires_in": 600,
    "interval": 5,
}


def _auth(**overrides: object) -> DeviceAuthorization:
    return DeviceAuthorization(**{**DEVICE, **overrides})  # type: ignore[arg-type]


class FakeTime:
    """sleep() records the interval and moves monotonic() and the broker's clock: polling without waiting.

    ``during[n]`` runs while the CLI sleeps for the n-th time (from 1): what the person in the
    browser, or the world, does meanwhile. ``broker_lag[n]`` makes the broker's clock move that
    many seconds less during the n-th sleep, as if the poll came early by the broker's watch.
    """

    def __init__(self, live: LiveBroker) -> None:
        self.live = live
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.during: dict[int, Callable[[], None]] = {}
        self.broker_lag: dict[int, float] = {}

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        self.live.clock.advance(seconds - self.broker_lag.get(len(self.sleeps), 0.0))
        action = self.during.get(len(self.sleeps))
        if action is not None:
            action()

    def monotonic(self) -> float:
        return self.now

    def restart(self) -> None:
        self.sleeps.clear()
        self.during.clear()
        self.broker_lag.clear()


@pytest.fixture
def live(broker_app: BrokerApp) -> LiveBroker:
    return broker_app()


@pytest.fixture
def client(live: LiveBroker, tmp_path: Path) -> BrokerClient:
    return BrokerClient(
        BROKER, transport=live.transport, token_store=FileStore(tmp_path / "t.json"), now=live.now
    )


def _approve(live: LiveBroker, action: str = "approve") -> Callable[[], None]:
    """Press Approve (or Deny) on the page for the latest device authorization."""
    return lambda: live.device_page(
        live.answered("POST", "/oauth/device_authorization")[-1]["user_code"], action
    )


def _expire(live: LiveBroker) -> Callable[[], None]:
    return lambda: live.clock.advance(live.broker.settings.device_code_ttl)


def _steal(live: LiveBroker) -> Callable[[], None]:
    """Someone else approves and exchanges the code first (a copied code): the CLI's code is spent."""
    from access.broker.auth.device import exchange

    def run() -> None:
        _approve(live)()
        code = live.answered("POST", "/oauth/device_authorization")[-1]["device_code"]
        exchange(live.broker, code, "access-cli")

    return run


def test_polling_honours_interval_and_slow_down(live: LiveBroker, client: BrokerClient) -> None:
    clock = FakeTime(live)
    clock.broker_lag[2] = 1  # the second poll is a second early for the broker: slow_down
    clock.during[4] = _approve(live)
    tokens = device.wait_for_approval(
        client, client.device_authorize("laptop-1"), sleep=clock.sleep, monotonic=clock.monotonic
    )
    assert isinstance(tokens, Tokens)
    assert tokens.access_token and tokens.refresh_token
    assert clock.sleeps == [5, 5, 10, 10]  # slow_down adds 5 s for the rest of the login
    errors = [body.get("error") for body in live.answered("POST", "/oauth/token")]
    assert errors == ["authorization_pending", "slow_down", "authorization_pending", None]
    sent = parse_qs(live.sent("POST", "/oauth/token")[0].content.decode())
    assert sent == {
        "grant_type": ["urn:ietf:params:oauth:grant-type:device_code"],
        "device_code": [live.answered("POST", "/oauth/device_authorization")[0]["device_code"]],
        "client_id": ["access-cli"],
    }


def test_polling_gives_up_when_the_code_runs_out(live: LiveBroker, client: BrokerClient) -> None:
    # The CLI keeps its own bound on the wait from expires_in: here shorter than the broker's,
    # so the broker still says "pending" when the CLI stops, at the bound, not past it.
    auth = dataclasses.replace(client.device_authorize("laptop-1"), expires_in=12)
    clock = FakeTime(live)
    with pytest.raises(TimedOut, match="within 12s"):
        device.wait_for_approval(client, auth, sleep=clock.sleep, monotonic=clock.monotonic)
    assert clock.sleeps == [5, 5, 2]
    assert {body["error"] for body in live.answered("POST", "/oauth/token")} == {"authorization_pending"}


@pytest.mark.parametrize(
    ("meanwhile", "exception"), [(lambda live: _approve(live, "deny"), Denied), (_expire, Expired)]
)
def test_polling_stops_on_terminal_errors(
    live: LiveBroker,
    client: BrokerClient,
    meanwhile: Callable[[LiveBroker], Callable[[], None]],
    exception: type,
) -> None:
    clock = FakeTime(live)
    clock.during[2] = meanwhile(live)
    with pytest.raises(exception):
        device.wait_for_approval(
            client, client.device_authorize("laptop-1"), sleep=clock.sleep, monotonic=clock.monotonic
        )
    assert len(clock.sleeps) == 2


@pytest.fixture
def instant(live: LiveBroker, monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    clock = FakeTime(live)
    monkeypatch.setattr(device, "SLEEP", clock.sleep)
    monkeypatch.setattr(device, "MONOTONIC", clock.monotonic)
    return clock


@pytest.mark.parametrize(
    ("meanwhile", "code", "text"),
    [
        (lambda live: _approve(live, "deny"), ExitCode.DENIED, "denied"),
        (_expire, ExitCode.EXPIRED, "run `access login` again"),
        (_steal, ExitCode.ERROR, "run `access login` again"),  # a device code already used
    ],
)
def test_login_exit_codes(
    live: LiveBroker,
    instant: FakeTime,
    config_dir: Path,
    meanwhile: Callable[[LiveBroker], Callable[[], None]],
    code: int,
    text: str,
) -> None:
    instant.during[2] = meanwhile(live)
    result = live.invoke("--broker", BROKER, "login", "--no-browser")
    assert result.exit_code == code, result.stderr
    assert text in result.stderr
    assert "error: " in result.stderr and "hint: " in result.stderr
    assert stored(config_dir) is None


def test_device_login_stores_tokens_and_says_so_once(
    live: LiveBroker, instant: FakeTime, config_dir: Path
) -> None:
    instant.during[2] = _approve(live)
    result = live.invoke("login", "--broker", BROKER + "/", "--no-browser")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""  # messages only: all on stderr
    [authorization] = live.answered("POST", "/oauth/device_authorization")
    assert f"{BROKER}/device" in result.stderr and authorization["user_code"] in result.stderr
    assert "tokens are kept in" in result.stderr
    assert "Signed in to https://broker.test as alice" in result.stderr
    form = parse_qs(live.sent("POST", "/oauth/device_authorization")[0].content.decode())
    assert form["client_id"] == ["access-cli"] and form["client_host"]
    first = stored(config_dir)
    assert first is not None and first["refresh_token"]
    assert live.sent("GET", "/v1/whoami")[0].headers["authorization"] == f"Bearer {first['access_token']}"

    token_file = config_dir / "tokens.json"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    saved = json.loads((config_dir / "config.json").read_text())
    assert saved["current"] == BROKER
    assert saved["profiles"][BROKER] == {"name": "alice", "kind": "user"}

    # Second login: the token-file note is not repeated, the replaced session is revoked.
    instant.restart()
    instant.during[1] = _approve(live)
    again = live.invoke("login", "--no-browser")  # no --broker: the last login's broker
    assert again.exit_code == 0, again.stderr
    assert "tokens are kept in" not in again.stderr
    assert parse_qs(live.sent("POST", "/oauth/revoke")[0].content.decode())["token"] == [
        first["refresh_token"]
    ]
    old = live.invoke("whoami", env={"ACCESS_TOKEN": first["access_token"]})
    assert old.exit_code == ExitCode.NEEDS_LOGIN  # the replaced session is over on the broker


@pytest.mark.parametrize("loose", [0o664, 0o646, 0o666])
def test_a_client_secret_file_others_can_change_is_refused(
    live: LiveBroker, tmp_path: Path, loose: int
) -> None:
    client_id, client_secret = live.service_account("deploy-bot", ["ci"])
    secret = tmp_path / "secret"
    secret.write_text(client_secret + "\n")
    secret.chmod(loose)
    result = live.invoke(
        "--broker", BROKER, "login", "--client-id", client_id, "--client-secret-file", str(secret)
    )
    assert result.exit_code == ExitCode.USAGE
    assert "other users can change it" in result.stderr and f"chmod go-w {secret}" in result.stderr
    assert live.transport.requests == []


# 0600/0400: a file of one's own; 0644: a Kubernetes secret volume; 0444: a Docker secret.
@pytest.mark.parametrize("mode", [0o600, 0o400, 0o644, 0o444])
def test_a_secret_file_only_its_owner_can_change_is_read(tmp_path: Path, mode: int) -> None:
    from access.cli.tokens import read_secret_file

    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    secret.chmod(mode)
    assert read_secret_file(str(secret)) == "s3cret"


def test_client_credentials_read_the_secret_from_a_kubernetes_style_file(
    live: LiveBroker, tmp_path: Path, config_dir: Path
) -> None:
    client_id, client_secret = live.service_account("deploy-bot", ["ci"])
    secret = tmp_path / "secret"
    secret.write_text(client_secret + "\n")
    secret.chmod(0o644)
    ok = live.invoke(
        "--broker", BROKER, "login", "--client-id", client_id, "--client-secret-file", str(secret)
    )
    assert ok.exit_code == 0, ok.stderr
    assert client_secret not in ok.stdout + ok.stderr
    assert "as deploy-bot (service_account; groups: ci)" in ok.stderr
    form = parse_qs(live.sent("POST", "/oauth/token")[0].content.decode())
    assert form == {
        "grant_type": ["client_credentials"],
        "client_id": [client_id],
        "client_secret": [client_secret],
    }
    entry = stored(config_dir)
    # A refreshable session, as a person's: the secret itself is never stored.
    assert entry is not None and entry["client_id"] == client_id and entry["refresh_token"]
    assert client_secret not in (config_dir / "tokens.json").read_text()


def test_a_client_secret_file_of_another_user_is_refused(
    live: LiveBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    client_id, client_secret = live.service_account("deploy-bot", ["ci"])
    secret = tmp_path / "secret"
    secret.write_text(client_secret)
    secret.chmod(0o600)
    if os.getuid() == 0:  # root may give the file away: to a user that is neither us nor root
        os.chown(secret, 4242, -1)
    else:  # the file is ours and root's is fine: we pretend to be another user
        monkeypatch.setattr(os, "getuid", lambda: secret.stat().st_uid + 4242)
    result = live.invoke(
        "--broker", BROKER, "login", "--client-id", client_id, "--client-secret-file", str(secret)
    )
    assert result.exit_code == ExitCode.USAGE
    assert "belongs to another user" in result.stderr
    assert live.transport.requests == []


def test_login_from_the_environment_needs_no_flags(
    live: LiveBroker, tmp_path: Path, config_dir: Path
) -> None:
    client_id, client_secret = live.service_account("deploy-bot", ["ci"])
    secret = tmp_path / "secret"
    secret.write_text(client_secret)
    secret.chmod(0o444)
    for env in (
        {"ACCESS_CLIENT_ID": client_id, "ACCESS_CLIENT_SECRET": client_secret},
        {"ACCESS_CLIENT_ID": client_id, "ACCESS_CLIENT_SECRET_FILE": str(secret)},
    ):
        result = live.invoke("--broker", BROKER, "login", env=env)
        assert result.exit_code == 0, result.stderr
        assert "as deploy-bot (service_account" in result.stderr
        assert client_secret not in (config_dir / "tokens.json").read_text()
    both = {"ACCESS_CLIENT_ID": client_id, "ACCESS_CLIENT_SECRET": "x", "ACCESS_CLIENT_SECRET_FILE": "y"}
    refused = live.invoke("--broker", BROKER, "login", env=both)
    assert refused.exit_code == ExitCode.USAGE and "unset one of them" in refused.stderr


def test_device_login_without_a_terminal_gives_up_after_timeout_with_its_own_code(
    live: LiveBroker, instant: FakeTime, config_dir: Path
) -> None:
    result = live.invoke("--broker", BROKER, "login", "--no-browser", "--timeout", "7s", input="")
    assert result.exit_code == ExitCode.TIMED_OUT == 9, result.stderr
    assert "nobody approved the code within 7s" in result.stderr and "--timeout" in result.stderr
    assert sum(instant.sleeps) == 7  # bounded: it waited 7 s (by its monotonic clock), no longer
    assert stored(config_dir) is None
    bad = live.invoke("--broker", BROKER, "login", "--timeout", "soon")
    assert bad.exit_code == ExitCode.USAGE


def test_client_id_without_a_secret_file_does_not_prompt_without_a_terminal(config_dir: Path) -> None:
    result = invoke("--broker", BROKER, "login", "--client-id", "cid", input="")
    assert result.exit_code == ExitCode.USAGE
    assert "--client-secret-file" in result.stderr


def test_wrong_client_secret_is_denied(live: LiveBroker, tmp_path: Path) -> None:
    client_id, _ = live.service_account("deploy-bot", ["ci"])
    secret = tmp_path / "secret"
    secret.write_text("wrong-secret-value")
    secret.chmod(0o600)
    result = live.invoke(
        "--broker", BROKER, "login", "--client-id", client_id, "--client-secret-file", str(secret)
    )
    assert result.exit_code == ExitCode.DENIED
    [refusal] = live.answered("POST", "/oauth/token")
    assert refusal["error"] == "invalid_client"
    assert refusal["error_description"] in result.stderr and "wrong-secret-value" not in result.stderr
