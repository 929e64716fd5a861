"""Webhook settings are checked when the settings load, with errors that name the endpoint and the fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from access.broker.notifications.endpoints import SecretUnavailable, WebhookEndpoint
from access.broker.notifications.kinds import Notice
from access.broker.settings import Settings
from tests.broker.notifications.conftest import endpoint


def refused(tmp_path: Path, **fields: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        Settings(data_dir=tmp_path, webhooks=[fields])
    return "; ".join(str(e["msg"]) for e in caught.value.errors())


def test_endpoints_load_from_the_environment(
    tmp_path: Path, secret_file: Path, secret: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_SECRET", secret.decode())
    hooks = [
        endpoint("https://hooks.example/x", secret_file, format="slack", events=["grant.issued"]),
        {"name": "siem", "url": "http://127.0.0.1:9000/in", "secret_env": "HOOK_SECRET"},
    ]
    monkeypatch.setenv("ACCESS_BROKER_WEBHOOKS", json.dumps(hooks))
    first, second = Settings(data_dir=tmp_path).webhooks
    assert (first.name, first.format, first.events, first.secret()) == (
        "ops",
        "slack",
        (Notice.GRANT_ISSUED,),
        secret,
    )
    assert (second.format, second.events, second.secret()) == ("json", tuple(Notice), secret)
    assert "hooks.example" not in repr(first)  # a Slack URL is a secret: kept out of reprs and logs


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://hooks.example/x", "must be https:// (http:// only to a loopback address)"),
        ("ftp://127.0.0.1/x", "must be https://"),
        ("https:///x", "has no host"),
        ("https://user:pw@hooks.example/x", "must not carry a user or password"),
        ("https://hooks.example:99999/x", "not a valid URL"),
    ],
)
def test_bad_urls_are_refused(tmp_path: Path, secret_file: Path, url: str, message: str) -> None:
    text = refused(tmp_path, **endpoint(url, secret_file))
    assert "webhook 'ops': " in text and message in text
    assert "user:pw" not in text


def test_plain_http_to_loopback_is_allowed(tmp_path: Path, secret_file: Path) -> None:
    for url in ("http://127.0.0.1:8000/x", "http://[::1]:8000/x", "http://localhost/x"):
        Settings(data_dir=tmp_path, webhooks=[endpoint(url, secret_file)])


def test_the_secret_must_come_from_one_source_and_be_strong(
    tmp_path: Path, secret_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "https://hooks.example/x"
    assert "one of them" in refused(tmp_path, name="ops", url=url)
    both = refused(tmp_path, **endpoint(url, secret_file, secret_env="X"))
    assert "one of them" in both
    assert "environment variable NOPE_UNSET holds no secret" in refused(
        tmp_path, name="ops", url=url, secret_env="NOPE_UNSET"
    )
    weak = tmp_path / "weak"
    weak.write_text("short")
    weak.chmod(0o600)
    assert "at least 16 bytes" in refused(tmp_path, **endpoint(url, weak))
    secret_file.chmod(0o644)
    assert "is open to others: chmod 600 it" in refused(tmp_path, **endpoint(url, secret_file))
    missing = tmp_path / "missing"
    assert f"cannot read secret file {missing}" in refused(tmp_path, **endpoint(url, missing))


def test_a_secret_file_is_read_at_each_use(tmp_path: Path, secret_file: Path) -> None:
    hook = WebhookEndpoint.model_validate(endpoint("https://hooks.example/x", secret_file))
    secret_file.write_text("a rotated secret of enough length")
    assert hook.secret() == b"a rotated secret of enough length"
    secret_file.unlink()
    with pytest.raises(SecretUnavailable, match="cannot read"):
        hook.secret()


def test_unknown_events_names_and_duplicates_are_refused(tmp_path: Path, secret_file: Path) -> None:
    url = "https://hooks.example/x"
    text = refused(tmp_path, **endpoint(url, secret_file, events=["grant.issued", "grant.exploded"]))
    assert (
        "webhook 'ops': unknown events ['grant.exploded']; choose from grant.requested, grant.issued" in text
    )
    assert "events is empty" in refused(tmp_path, **endpoint(url, secret_file, events=[]))
    assert "a name is 1 to 63" in refused(tmp_path, **endpoint(url, secret_file, name="Ops Team"))
    assert "Extra inputs are not permitted" in refused(
        tmp_path, **endpoint(url, secret_file, secret="inline")
    )  # never inline
    with pytest.raises(ValidationError, match="webhook names must be unique: ops given more than once"):
        Settings(data_dir=tmp_path, webhooks=[endpoint(url, secret_file), endpoint(url, secret_file)])
