"""Token storage and use: keyring or 0600 file, refused loose files, ACCESS_TOKEN, refresh rotation."""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
import respx

from access.cli.client import BrokerClient
from access.cli.tokens import FileStore, KeyringStore, Tokens, default_store
from access.shared.errors import ExitCode
from tests.cli.conftest import BROKER, PRINCIPAL, MemoryKeyring, invoke, store_tokens, stored


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


def test_whoami_reads_tokens_from_the_keyring(
    memory_keyring: MemoryKeyring, broker: respx.MockRouter
) -> None:
    KeyringStore(memory_keyring).save(BROKER, Tokens("at-keyring", time.time() + 600, "rt"))
    route = broker.get("/v1/whoami").respond(200, json=PRINCIPAL)
    result = invoke("--broker", BROKER, "whoami")
    assert result.exit_code == 0, result.stderr
    assert route.calls[0].request.headers["authorization"] == "Bearer at-keyring"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_token_file_others_can_read_is_refused(
    config_dir: Path, broker: respx.MockRouter, mode: int
) -> None:
    store_tokens(config_dir)
    token_file = config_dir / "tokens.json"
    token_file.chmod(mode)
    route = broker.get("/v1/whoami").respond(200, json=PRINCIPAL)
    result = invoke("whoami")
    assert result.exit_code == ExitCode.USAGE
    assert f"chmod 600 {token_file}" in result.stderr
    assert not route.called


def test_access_token_env_wins_and_is_never_refreshed_or_stored(
    config_dir: Path, broker: respx.MockRouter
) -> None:
    store_tokens(config_dir, access="stored", expires_in=-100)  # expired: would need a refresh
    refresh = broker.post("/oauth/token").respond(200, json={"access_token": "x", "expires_in": 900})
    whoami = broker.get("/v1/whoami").respond(
        401, json={"error": {"code": "unauthenticated", "message": "expired"}}
    )
    result = invoke("whoami", env={"ACCESS_TOKEN": "from-env"})
    assert result.exit_code == ExitCode.NEEDS_LOGIN
    assert "run `access login`" in result.stderr
    assert whoami.calls[0].request.headers["authorization"] == "Bearer from-env"
    assert not refresh.called
    assert stored(config_dir)["access_token"] == "stored"  # type: ignore[index]


def test_an_expired_token_is_refreshed_and_the_new_refresh_token_stored(
    config_dir: Path, broker: respx.MockRouter
) -> None:
    store_tokens(config_dir, access="at-old", refresh="rt-old", expires_in=10)  # inside the refresh margin
    refresh = broker.post("/oauth/token").respond(
        200, json={"access_token": "at-new", "refresh_token": "rt-new", "expires_in": 900}
    )
    whoami = broker.get("/v1/whoami").respond(200, json=PRINCIPAL)
    result = invoke("whoami")
    assert result.exit_code == 0, result.stderr
    assert parse_qs(refresh.calls[0].request.content.decode()) == {
        "grant_type": ["refresh_token"],
        "refresh_token": ["rt-old"],
        "client_id": ["access-cli"],
    }
    assert whoami.calls[0].request.headers["authorization"] == "Bearer at-new"
    entry = stored(config_dir)
    assert entry is not None and entry["refresh_token"] == "rt-new" and entry["access_token"] == "at-new"


def test_a_401_with_a_fresh_looking_token_refreshes_once_and_retries(
    config_dir: Path, broker: respx.MockRouter
) -> None:
    store_tokens(config_dir, access="at-old", refresh="rt-old")
    broker.post("/oauth/token").respond(
        200, json={"access_token": "at-new", "refresh_token": "rt-new", "expires_in": 900}
    )
    whoami = broker.get("/v1/whoami").mock(
        side_effect=[
            httpx.Response(401, json={"error": {"code": "unauthenticated", "message": "no"}}),
            httpx.Response(200, json=PRINCIPAL),
        ]
    )
    assert invoke("whoami").exit_code == 0
    assert [c.request.headers["authorization"] for c in whoami.calls] == ["Bearer at-old", "Bearer at-new"]


def test_a_failed_refresh_means_login_again(config_dir: Path, broker: respx.MockRouter) -> None:
    store_tokens(config_dir, expires_in=-1)
    broker.post("/oauth/token").respond(
        400, json={"error": "invalid_grant", "error_description": "refresh token reused: session revoked"}
    )
    result = invoke("grants")
    assert result.exit_code == ExitCode.NEEDS_LOGIN
    assert "session at https://broker.test has ended" in result.stderr
    assert "hint: run `access login`" in result.stderr
    assert stored(config_dir) is None  # useless tokens are dropped


def test_not_signed_in(config_dir: Path, broker: respx.MockRouter) -> None:
    result = invoke("--broker", BROKER, "whoami")
    assert result.exit_code == ExitCode.NEEDS_LOGIN
    assert "not signed in to https://broker.test" in result.stderr
    assert "run `access login`" in result.stderr


def test_service_account_tokens_expire_into_a_login_hint(config_dir: Path) -> None:
    FileStore(config_dir / "tokens.json").save(BROKER, Tokens("at", time.time() - 5, None, "cid-7"))
    with pytest.raises(Exception, match="expired") as info:
        BrokerClient(BROKER).access_token()
    assert "--client-id cid-7" in str(getattr(info.value, "hint", ""))
