"""Token storage and use: keyring or 0600 file, refused loose files, ACCESS_TOKEN, refresh rotation.

The commands run against the real broker in-process, on its FakeClock, so expiry is real.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from access.cli.tokens import FileStore, KeyringStore, Tokens, default_store
from access.shared.errors import ExitCode
from tests.cli.conftest import BROKER, BrokerApp, LiveBroker, MemoryKeyring, invoke, stored


def test_without_a_keyring_tokens_go_to_a_private_file(config_dir: Path) -> None:
    store = default_store()
    assert isinstance(store, FileStore)
    store.save(BROKER, Tokens("a", 1.0, "r"))
    assert (config_dir / "tokens.json").stat().st_mode & 0o777 == 0o600
    assert store.load(BROKER) == Tokens("a", 1.0, "r")
    store.delete(BROKER)
    assert not (config_dir / "tokens.json").exists()


def test_a_working_keyring_is_used_and_the_file_is_not(
    memory_keyring: MemoryKeyring, config_dir: Path
) -> None:
    store = default_store()
    assert isinstance(store, KeyringStore)
    store.save(BROKER, Tokens("a", 1.0, "r"))
    assert json.loads(memory_keyring.items[("access", BROKER)])["refresh_token"] == "r"
    assert not (config_dir / "tokens.json").exists()
    assert store.load(BROKER) == Tokens("a", 1.0, "r")
    store.delete(BROKER)
    assert memory_keyring.items == {}


@pytest.fixture
def live(broker_app: BrokerApp) -> LiveBroker:
    return broker_app()


def test_whoami_reads_tokens_from_the_keyring(memory_keyring: MemoryKeyring, live: LiveBroker) -> None:
    tokens = live.sign_in("alice")
    (live.config_dir / "tokens.json").unlink()  # only the keyring holds them now
    KeyringStore(memory_keyring).save(BROKER, tokens)
    result = live.invoke("--broker", BROKER, "whoami")
    assert result.exit_code == 0, result.stderr
    assert live.sent("GET", "/v1/whoami")[0].headers["authorization"] == f"Bearer {tokens.access_token}"
    assert "alice" in result.stdout


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_token_file_others_can_read_is_refused(live: LiveBroker, config_dir: Path, mode: int) -> None:
    live.sign_in("alice")
    token_file = config_dir / "tokens.json"
    token_file.chmod(mode)
    result = live.invoke("whoami")
    assert result.exit_code == ExitCode.USAGE
    assert f"chmod 600 {token_file}" in result.stderr
    assert live.transport.requests == []


def test_access_token_env_wins_and_is_never_refreshed_or_stored(live: LiveBroker, config_dir: Path) -> None:
    stale = live.sign_in("alice", expires_at=live.now() - 100)  # expired: would need a refresh
    result = live.invoke("whoami", env={"ACCESS_TOKEN": "from-env"})
    assert result.exit_code == ExitCode.NEEDS_LOGIN  # the broker does not know that token
    assert "run `access login`" in result.stderr
    assert live.sent("GET", "/v1/whoami")[0].headers["authorization"] == "Bearer from-env"
    assert live.sent("POST", "/oauth/token") == []
    assert stored(config_dir)["access_token"] == stale.access_token  # type: ignore[index]


def test_an_expired_token_is_refreshed_and_the_new_refresh_token_stored(
    live: LiveBroker, config_dir: Path
) -> None:
    old = live.sign_in("alice")
    # Past the access token's lifetime the broker answers 401; the CLI refreshes and retries.
    live.clock.advance(live.broker.settings.access_token_ttl + 1)
    result = live.invoke("whoami")
    assert result.exit_code == 0, result.stderr
    assert parse_qs(live.sent("POST", "/oauth/token")[0].content.decode()) == {
        "grant_type": ["refresh_token"],
        "refresh_token": [old.refresh_token],
        "client_id": ["access-cli"],
    }
    entry = stored(config_dir)
    assert entry is not None
    assert entry["refresh_token"] not in (None, old.refresh_token)
    assert entry["access_token"] != old.access_token
    assert [r.headers["authorization"] for r in live.sent("GET", "/v1/whoami")] == [
        f"Bearer {old.access_token}",
        f"Bearer {entry['access_token']}",
    ]
    assert live.invoke("whoami").exit_code == 0  # the rotated tokens work; no second refresh
    assert len(live.sent("POST", "/oauth/token")) == 1


def test_a_401_with_a_fresh_looking_token_refreshes_once_and_retries(live: LiveBroker) -> None:
    # The stored expiry says fresh (a skewed clock), but the broker's clock is past it.
    old = live.sign_in("alice", expires_at=live.now() + 86400)
    live.clock.advance(live.broker.settings.access_token_ttl + 1)
    assert live.invoke("whoami").exit_code == 0
    [fresh] = live.answered("POST", "/oauth/token")
    assert [c.headers["authorization"] for c in live.sent("GET", "/v1/whoami")] == [
        f"Bearer {old.access_token}",
        f"Bearer {fresh['access_token']}",
    ]


def test_a_failed_refresh_means_login_again(live: LiveBroker, config_dir: Path) -> None:
    from access.broker.auth.sessions import refresh

    old = live.sign_in("alice")
    assert old.refresh_token is not None
    refresh(live.broker, old.refresh_token, "access-cli")  # someone else used it first
    live.clock.advance(live.broker.settings.access_token_ttl + 1)
    result = live.invoke("grants")
    assert result.exit_code == ExitCode.NEEDS_LOGIN
    assert "session at https://broker.test has ended" in result.stderr
    assert "hint: run `access login`" in result.stderr
    assert live.answered("POST", "/oauth/token")[0]["error"] == "invalid_grant"
    assert stored(config_dir) is None  # useless tokens are dropped


def test_not_signed_in(config_dir: Path) -> None:
    result = invoke("--broker", BROKER, "whoami")
    assert result.exit_code == ExitCode.NEEDS_LOGIN
    assert "not signed in to https://broker.test" in result.stderr
    assert "run `access login`" in result.stderr
