"""Broker settings: TLS or loopback only, token and code lifetimes within the issue's bounds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from access.broker.settings import Settings


@pytest.fixture(autouse=True)
def _no_broker_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ACCESS_BROKER_"):
            monkeypatch.delenv(name)


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(data_dir=tmp_path, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "broker.example.com", "::"])
def test_plain_http_is_refused_off_loopback(tmp_path: Path, host: str) -> None:
    with pytest.raises(ValidationError, match="refusing plain HTTP"):
        _settings(tmp_path, host=host)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_plain_http_is_fine_on_loopback(tmp_path: Path, host: str) -> None:
    assert _settings(tmp_path, host=host).base_url().startswith("http://")


def test_insecure_http_is_an_explicit_choice(tmp_path: Path) -> None:
    assert not _settings(tmp_path, host="0.0.0.0", insecure_http=True).tls


def test_tls_needs_both_files_and_makes_https_urls(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="both --tls-cert and --tls-key"):
        _settings(tmp_path, host="0.0.0.0", tls_cert=tmp_path / "c.pem")
    tls = _settings(
        tmp_path, host="broker.example.com", tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem"
    )
    assert tls.base_url(8443) == "https://broker.example.com:8443"


def test_environment_variables_configure_the_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCESS_BROKER_ACCESS_TOKEN_TTL", "300")
    monkeypatch.setenv("ACCESS_BROKER_DATABASE_URL", "postgresql://db.example/access")
    settings = _settings(tmp_path)
    assert settings.access_token_ttl == 300
    assert settings.resolved_database_url == "postgresql://db.example/access"


def test_defaults_follow_the_issue(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert settings.access_token_ttl == 900  # access tokens live at most 15 minutes
    assert settings.device_code_ttl == 600  # user codes expire after 10 minutes
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'broker.db'}"


def test_access_tokens_cannot_be_configured_past_15_minutes(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="access_token_ttl"):
        _settings(tmp_path, access_token_ttl=901)
