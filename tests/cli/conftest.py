"""CLI test harness: an isolated config dir, no real keyring, the app and the broker in-process.

``invoke("grants", "-o", "json")`` runs the real typer app (through the same root group that
catches errors in production) with its own stdout and stderr. ``broker_app()`` builds a real
broker (fresh SQLite, the test's FakeClock) and returns a :class:`LiveBroker` whose
``invoke`` runs the same app with every HTTP exchange going to the broker's ASGI app through
:class:`InProcessTransport` (no sockets), on the broker's clock. respx (the
``stub_broker`` fixture) is left for replies the real broker cannot give: malformed or foreign HTTP. Tests
that need a socket use loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import keyring
import pytest
import respx
from keyring.backend import KeyringBackend
from typer.testing import CliRunner

from access.broker.clock import FakeClock
from access.broker.runtime import Broker
from access.cli.context import Globals
from access.cli.main import app
from access.cli.tokens import FileStore, Tokens
from tests.broker.conftest import DevicePage, add_user, login

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
    # The private folder of `exec`/`connect` (config.runtime_dir) under HOME, not the machine's.
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
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
def stub_broker() -> Iterator[respx.MockRouter]:
    """respx routes on ``BROKER``, for replies the real broker cannot give (foreign or malformed HTTP)."""
    with respx.mock(base_url=BROKER) as router:
        yield router


def invoke(
    *args: str, env: dict[str, str] | None = None, input: str | None = None, obj: Globals | None = None
) -> Result:
    """Run ``access ARGS``; ``obj`` injects a transport and clock (see access.cli.context.Globals)."""
    result = CliRunner().invoke(app, list(args), env=env, input=input, prog_name="access", obj=obj)
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


T = TypeVar("T")


class InProcessTransport(httpx.BaseTransport):
    """A sync httpx transport that hands each request to an ASGI app on a private event loop.

    httpx's own ASGITransport is async-only and the CLI's client is sync. Starlette's TestClient
    has a sync transport, but it is private API and starts a thread and a fresh event loop per
    request; here one loop serves the whole test, so the app sees one process-like world, and
    the same loop runs the async helpers (the device page) through :meth:`run`.

    Every request is kept in ``requests`` (its response at the same index in ``responses``) so
    tests can check what the CLI sent on the wire and what the broker answered.
    ``close`` is a no-op because each CLI command closes its httpx client (and with it the
    transport) while the app lives on for the next command; :meth:`shutdown` ends the loop.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self._inner = httpx.ASGITransport(app=app)
        self._loop = asyncio.new_event_loop()
        self.requests: list[httpx.Request] = []
        self.responses: list[httpx.Response] = []

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coroutine)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        self.requests.append(request)

        async def exchange() -> httpx.Response:
            inner = httpx.Request(request.method, request.url, headers=request.headers, content=body)
            response = await self._inner.handle_async_request(inner)
            content = await response.aread()
            return httpx.Response(response.status_code, headers=response.headers, content=content)

        response = self.run(exchange())
        self.responses.append(response)
        return response

    def close(self) -> None:
        pass

    def shutdown(self) -> None:
        self._loop.run_until_complete(self._loop.shutdown_default_executor())
        self._loop.close()


@dataclass
class LiveBroker:
    """A real broker app in-process, and the CLI pointed at it (``invoke``) on the broker's clock."""

    broker: Broker
    clock: FakeClock
    transport: InProcessTransport
    config_dir: Path
    users: dict[str, Any] = field(default_factory=dict)

    def now(self) -> float:
        """The broker's clock as epoch seconds: the CLI's clock too, so both agree on expiry."""
        return self.clock.now().timestamp()

    def invoke(self, *args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
        return invoke(*args, env=env, input=input, obj=Globals(transport=self.transport, now=self.now))

    def sent(self, method: str, path: str) -> list[httpx.Request]:
        """The requests the CLI sent to ``method path``, oldest first."""
        return [r for r in self.transport.requests if r.method == method and r.url.path == path]

    def answered(self, method: str, path: str) -> list[Any]:
        """The JSON bodies the broker answered to ``method path``, oldest first."""
        pairs = zip(self.transport.requests, self.transport.responses, strict=False)
        return [reply.json() for r, reply in pairs if r.method == method and r.url.path == path]

    def sign_in(self, name: str = "alice", *, expires_at: float | None = None) -> Tokens:
        """A session for ``name`` opened on the broker, its tokens stored as `access login` leaves them.

        ``expires_at`` overrides what the CLI believes about the access token's expiry.
        """
        issued = login(self.broker, self.users[name])
        tokens = Tokens(
            issued.access_token,
            expires_at if expires_at is not None else self.now() + issued.expires_in,
            issued.refresh_token,
        )
        FileStore(self.config_dir / "tokens.json").save(BROKER, tokens)
        (self.config_dir / "config.json").write_text(
            json.dumps({"broker_url": BROKER, "token_file_note_shown": True})
        )
        return tokens

    def service_account(self, name: str = "deploy-bot", groups: Iterable[str] = ("ci",)) -> tuple[str, str]:
        """A service account on the broker: ``(client_id, client_secret)``."""
        from access.broker.auth.identity import create_service_account

        return create_service_account(self.broker, name, list(groups))

    def device_page(self, user_code: str, action: str = "approve", username: str = "alice") -> None:
        """Approve (or deny) a device login on /device, as the person in the browser does."""

        async def press() -> None:
            transport = httpx.ASGITransport(app=self.transport.app, client=("192.0.2.7", 50000))
            async with httpx.AsyncClient(transport=transport, base_url=BROKER) as http:
                await DevicePage(http).approve(user_code, username, action)

        self.transport.run(press())


BrokerApp = Callable[..., LiveBroker]


@pytest.fixture
def broker_app(
    make_broker: Callable[..., Broker], fake_clock: FakeClock, config_dir: Path
) -> Iterator[BrokerApp]:
    """``broker_app(policy=dict, users={"alice": ["sre"]}, **settings)``: a :class:`LiveBroker`.

    Defaults: the test policy of tests/conftest.py and one user, alice in sre.
    """
    from access.broker.app import create_app

    made: list[InProcessTransport] = []

    def factory(
        *,
        policy: dict[str, Any] | None = None,
        users: Mapping[str, Iterable[str]] | None = None,
        **settings: Any,
    ) -> LiveBroker:
        broker = make_broker(policy=policy, **settings)
        transport = InProcessTransport(create_app(broker, background=False))
        made.append(transport)
        live = LiveBroker(broker, fake_clock, transport, config_dir)
        for name, groups in (users if users is not None else {"alice": ["sre"]}).items():
            live.users[name] = add_user(broker, name, tuple(groups))
        return live

    yield factory
    for transport in made:
        transport.shutdown()


@pytest.fixture
def signed_in(broker_app: BrokerApp) -> LiveBroker:
    """The default broker (tests/conftest.py's policy), alice (sre) signed in."""
    live = broker_app()
    live.sign_in("alice")
    return live
