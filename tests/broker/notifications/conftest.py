"""Brokers with a webhook endpoint, its secret file, and a receiver on loopback that checks signatures."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from access.broker.clock import FakeClock
from access.broker.runtime import Broker
from tests.fakes.webhooks import Receiver, receiver


@pytest.fixture
def secret() -> bytes:
    return secrets.token_hex(32).encode()


@pytest.fixture
def secret_file(tmp_path: Path, secret: bytes) -> Path:
    path = tmp_path / "webhook.secret"
    path.write_bytes(secret + b"\n")
    path.chmod(0o600)
    return path


def endpoint(url: str, secret_file: Path, **fields: Any) -> dict[str, Any]:
    return {"name": "ops", "url": url, "format": "json", "secret_file": str(secret_file), **fields}


@pytest.fixture
def make_receiver(secret: bytes, fake_clock: FakeClock) -> Iterator[Callable[..., Receiver]]:
    """``make_receiver(answers=[500])``: a running receiver checking signatures by the fake clock."""
    with ExitStack() as stack:
        yield lambda answers=None: stack.enter_context(
            receiver(secret, lambda: fake_clock.now().timestamp(), answers)
        )


@pytest.fixture
def hooked(make_broker: Callable[..., Broker], secret_file: Path) -> Callable[..., Broker]:
    """``hooked(url, format=..., events=[...], **settings)``: a broker with one endpoint, ``ops``."""

    def factory(url: str, *, db_url: str | None = None, **fields: Any) -> Broker:
        settings = {k: fields.pop(k) for k in list(fields) if k.startswith("webhook_")}
        return make_broker(db_url=db_url, webhooks=[endpoint(url, secret_file, **fields)], **settings)

    return factory
