"""CLI test harness: an isolated config dir, no real keyring, the app driven in-process.

``invoke("grants", "-o", "json")`` runs the real typer app (through the same root group that
catches errors in production) with its own stdout and stderr. HTTP goes to respx routes on
``BROKER``; tests that need a socket use loopback.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keyring
import pytest
import respx
from keyring.backend import KeyringBackend
from typer.testing import CliRunner

from access.cli.main import app
from access.cli.tokens import FileStore, Tokens

BROKER = "https://broker.test"


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


class MemoryKeyring(KeyringBackend):
    """An in-memory keyring backend, so the keyring path is tested without the machine's keyring."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.items: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.items.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.items[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        del self.items[(service, username)]


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh HOME and XDG config dir; no ACCESS_* or colour settings from the outside."""
    for name in list(os.environ):
        if name.startswith("ACCESS_") or name in ("NO_COLOR", "FORCE_COLOR", "COLUMNS"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    return tmp_path / "config" / "access"


@pytest.fixture
def config_dir(isolated: Path) -> Path:
    return isolated


@pytest.fixture
def memory_keyring() -> Iterator[MemoryKeyring]:
    backend = MemoryKeyring()
    previous = keyring.get_keyring()
    keyring.set_keyring(backend)
    try:
        yield backend
    finally:
        keyring.set_keyring(previous)


@pytest.fixture
def broker() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BROKER, assert_all_called=False) as router:
        yield router


def invoke(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
    result = CliRunner().invoke(app, list(args), env=env, input=input, prog_name="access")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Result(result.exit_code, result.stdout, result.stderr)


def store_tokens(
    config_dir: Path,
    *,
    access: str = "at-1",
    refresh: str | None = "rt-1",
    expires_in: float = 600,
    url: str = BROKER,
) -> Tokens:
    """Tokens in the 0600 file, as `access login` leaves them without a keyring; config names the broker."""
    tokens = Tokens(access, time.time() + expires_in, refresh)
    FileStore(config_dir / "tokens.json").save(url, tokens)
    (config_dir / "config.json").write_text(json.dumps({"broker_url": url, "token_file_note_shown": True}))
    return tokens


def stored(config_dir: Path, url: str = BROKER) -> dict[str, Any] | None:
    path = config_dir / "tokens.json"
    if not path.exists():
        return None
    entry: dict[str, Any] | None = json.loads(path.read_text()).get(url)
    return entry


PRINCIPAL = {"name": "alice", "kind": "user", "groups": ["sre"], "session_id": "s1", "can_read_audit": True}


def grant_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "g-0123456789abcdef0123456789abcdef",
        "subject": "alice",
        "service": "svc-payments",
        "kind": "postgres",
        "scope": "read",
        "reason": "INC-123",
        "state": "active",
        "created_at": "2026-01-01T10:00:00Z",
        "expires_at": "2026-01-01T10:30:00Z",
        "seconds_left": 1800,
    }
    body.update(overrides)
    return body
