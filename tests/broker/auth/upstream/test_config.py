"""ACCESS_BROKER_OIDC_PROVIDERS is checked at start, naming the provider; its secret stays out of dumps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from access.broker.settings import Settings
from tests.fakes.oidcmock import provider_settings

SECRET = "the-client-secret-0123456789"


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDP_SECRET", SECRET)


def test_a_provider_from_the_environment_keeps_its_secret_out_of_every_dump(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ACCESS_BROKER_OIDC_PROVIDERS", json.dumps([provider_settings()]))
    settings = Settings()
    (provider,) = settings.oidc_providers
    assert provider.client_secret == SECRET
    assert provider.scopes == ("openid", "email", "profile") and "mfa" in provider.mfa_amr
    for text in (repr(settings), str(settings.model_dump()), settings.model_dump_json()):
        assert SECRET not in text


def test_a_secret_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(SECRET)
    path.chmod(0o644)
    entry = provider_settings(client_secret_env=None, client_secret_file=str(path))
    with pytest.raises(ValidationError, match="open to others"):
        Settings(oidc_providers=[entry])  # type: ignore[list-item]
    path.chmod(0o600)
    assert Settings(oidc_providers=[entry]).oidc_providers[0].client_secret == SECRET  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"issuer": "http://idp.example.com"}, "https"),
        ({"issuer": "https://idp.test/"}, "no trailing"),
        ({"scopes": ["email"]}, "must include openid"),
        ({"client_secret_file": "/x"}, "client_secret_file or client_secret_env"),
        ({"client_secret_env": None}, "client_secret_file or client_secret_env"),
        ({"client_secret_env": "NOT_SET_ANYWHERE"}, "holds no client secret"),
        ({"name": "Bad Name"}, "a name is"),
        ({"surprise": 1}, "surprise"),
        ({"email_domains": [{"domain": "Example.COM", "groups": ["x"]}]}, "domain name"),
        ({"email_domains": [{"domain": "example.com", "groups": ["Bad"]}]}, "not a group name"),
        ({"allowed_email_domains": []}, "nobody could sign in"),
    ],
)
def test_a_bad_provider_is_refused_at_start_with_its_name(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words) as caught:
        Settings(oidc_providers=[provider_settings(**changes)])  # type: ignore[list-item]
    if "name" not in changes and "surprise" not in changes:
        assert "'idp'" in str(caught.value)


def test_providers_are_unique() -> None:
    with pytest.raises(ValidationError, match="each name once"):
        Settings(oidc_providers=[provider_settings(), provider_settings(issuer="https://other.test")])  # type: ignore[list-item]
    with pytest.raises(ValidationError, match="each issuer once"):
        Settings(oidc_providers=[provider_settings(), provider_settings(name="other")])  # type: ignore[list-item]
