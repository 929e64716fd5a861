"""Service accounts in pipelines, against the real broker in-process on its FakeClock.

The broker's clock is authoritative (the CLI's may be wrong), a job longer than one access
token keeps working within the session the broker sets, and ACCESS_CLIENT_ID with
ACCESS_CLIENT_SECRET(_FILE) signs commands in without a stored login.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

import pytest

from access.cli.context import Globals
from access.shared.errors import ExitCode
from tests.cli.conftest import BROKER, BrokerApp, LiveBroker, Result, invoke, stored
from tests.cli.test_commands import POLICY  # ci may read svc-payments for 15 minutes


def _login(live: LiveBroker, tmp_path: Path, **globals_: object) -> tuple[str, str]:
    client_id, secret = live.service_account("deploy-bot", ["ci"])
    secret_file = tmp_path / "secret"
    secret_file.write_text(secret)
    secret_file.chmod(0o600)
    args = ("--broker", BROKER, "login", "--client-id", client_id, "--client-secret-file", str(secret_file))
    result = _invoke(live, *args, **globals_)
    assert result.exit_code == 0, result.stderr
    return client_id, secret


def _invoke(live: LiveBroker, *args: str, skew: float = 0.0, env: dict[str, str] | None = None) -> Result:
    """``access ARGS`` against ``live``, the CLI's clock ``skew`` seconds off the broker's."""
    return invoke(*args, env=env, obj=Globals(transport=live.transport, now=lambda: live.now() + skew))


def _refreshes(live: LiveBroker) -> list[dict[str, list[str]]]:
    forms = [parse_qs(r.content.decode()) for r in live.sent("POST", "/oauth/token")]
    return [form for form in forms if form["grant_type"] == ["refresh_token"]]


@pytest.mark.parametrize("who", ["service account", "person"])
def test_a_cli_clock_stepped_20_minutes_ahead_does_not_expire_a_token_the_broker_accepts(
    broker_app: BrokerApp, tmp_path: Path, who: str
) -> None:
    live = broker_app(policy=POLICY, users={"alice": ["ci"]})
    if who == "person":
        live.sign_in("alice")
    else:
        _login(live, tmp_path)
    skew = 20 * 60  # after the login, the CLI's clock steps ahead; the broker's does not move
    for command in (("whoami",), ("grants",), ("request", "svc-payments", "-s", "read", "-t", "5m")):
        result = _invoke(live, *command, skew=skew)
        assert result.exit_code == 0, result.stderr
    # The CLI sent its token and the broker took it: no refresh, no "your token has expired".
    assert _refreshes(live) == []
    assert [r.status_code for r in live.transport.responses if r.status_code >= 400] == []


def test_a_service_account_keeps_working_past_the_token_lifetime_until_its_session_ends(
    broker_app: BrokerApp, tmp_path: Path, config_dir: Path
) -> None:
    ttl, session = 30, 150  # the smallest access-token lifetime the broker allows
    live = broker_app(policy=POLICY, users={}, access_token_ttl=ttl, service_account_session_ttl=session)
    client_id, _ = _login(live, tmp_path)
    assert _invoke(live, "grants").exit_code == 0  # at once: no "expires within 60 s" margin
    assert _refreshes(live) == []

    for _ in range(2):  # 2 x TTL and beyond, with no new login
        live.clock.advance(ttl + 1)
        result = _invoke(live, "request", "svc-payments", "-s", "read", "-t", "5m", "-r", "deploy")
        assert result.exit_code == 0, result.stderr
    refreshes = _refreshes(live)
    assert len(refreshes) == 2 and all(form["client_id"] == [client_id] for form in refreshes)
    assert [f for f in live.sent("POST", "/oauth/token") if b"client_credentials" in f.content][1:] == []

    live.clock.advance(session)  # the broker's session lifetime is over: refreshing stops too
    ended = _invoke(live, "grants")
    assert ended.exit_code == ExitCode.NEEDS_LOGIN
    assert "session at https://broker.test has ended" in ended.stderr
    assert stored(config_dir) is None


def test_tokens_without_a_refresh_token_end_in_a_login_hint_when_the_broker_refuses_them(
    broker_app: BrokerApp, config_dir: Path
) -> None:
    from access.cli.tokens import FileStore, Tokens

    live = broker_app(users={})
    # As an older CLI left a service account's login: no refresh token; the broker says 401.
    FileStore(config_dir / "tokens.json").save(
        BROKER, Tokens("not-a-live-token", live.now() + 900, None, "cid-7")
    )
    result = invoke("--broker", BROKER, "whoami", obj=Globals(transport=live.transport, now=live.now))
    assert result.exit_code == ExitCode.NEEDS_LOGIN
    assert "no longer accepts your token" in result.stderr and "--client-id cid-7" in result.stderr
    assert len(live.sent("GET", "/v1/whoami")) == 1  # it asked the broker, and did not decide alone


def test_commands_sign_in_from_the_environment_and_store_nothing(
    broker_app: BrokerApp, tmp_path: Path, config_dir: Path
) -> None:
    live = broker_app(policy=POLICY, users={})
    client_id, secret = live.service_account("deploy-bot", ["ci"])
    secret_file = tmp_path / "secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o444)  # a Docker secret
    env = {
        "ACCESS_BROKER_URL": BROKER,
        "ACCESS_CLIENT_ID": client_id,
        "ACCESS_CLIENT_SECRET_FILE": str(secret_file),
    }
    result = _invoke(live, "request", "svc-payments", "-s", "read", "-t", "5m", "-r", "deploy", env=env)
    assert result.exit_code == 0, result.stderr
    assert not (config_dir / "tokens.json").exists()  # nothing stored: not the secret, not the tokens
    # The session it opened ends with the command (RFC 7009 revoke of its refresh token).
    [logged_in] = live.answered("POST", "/oauth/token")
    [revoke] = live.sent("POST", "/oauth/revoke")
    assert parse_qs(revoke.content.decode())["token"] == [logged_in["refresh_token"]]
    after = _invoke(live, "--broker", BROKER, "whoami", env={"ACCESS_TOKEN": logged_in["access_token"]})
    assert after.exit_code == ExitCode.NEEDS_LOGIN

    no_secret = _invoke(live, "grants", env={"ACCESS_BROKER_URL": BROKER, "ACCESS_CLIENT_ID": client_id})
    assert no_secret.exit_code == ExitCode.USAGE and "ACCESS_CLIENT_SECRET_FILE" in no_secret.stderr


def test_exec_does_not_hand_the_client_secret_to_its_program() -> None:
    from access.cli.tokens import child_environment

    env = {"ACCESS_CLIENT_ID": "sa-1", "ACCESS_CLIENT_SECRET": "s3cret", "PATH": "/bin"}
    assert child_environment(env) == {"ACCESS_CLIENT_ID": "sa-1", "PATH": "/bin"}
