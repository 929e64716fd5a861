"""A graceful stop drains tunnels (docs/deploy.md): the broker tells the CLI (DRAIN) to open new
connections through a new WebSocket, lets the open ones go on until they end or
``drain_timeout`` passes, then closes (1001). The real broker app under uvicorn, the real
``Forwarder`` in the same process; the drain is started on the broker's loop as uvicorn's
shutdown starts it (``TunnelProtocol.shutdown``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from access.broker.tunnel.registry import registry_for
from access.cli.tunnel import ClientSession, Forwarder
from tests.broker.conftest import audit_rows
from tests.broker.tunnel.test_protocol import TIMEOUT, Setup, _wait_for, run, setup, wrap_app

__all__ = ["setup", "wrap_app"]

DRAIN = 1.5


@pytest.fixture
def broker_settings() -> dict[str, Any]:
    return {"drain_timeout": DRAIN}


def _drain(setup: Setup, grant_id: str) -> None:
    registry = registry_for(setup.broker)
    assert registry.loop is not None

    def on_the_broker() -> None:
        for tunnel in list(registry._by_grant.get(grant_id, ())):
            tunnel.shutdown()  # type: ignore[attr-defined]

    registry.loop.call_soon_threadsafe(on_the_broker)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    writer.write(data)
    return await asyncio.wait_for(reader.readexactly(len(data)), TIMEOUT)


Opened = tuple[asyncio.StreamReader, asyncio.StreamWriter, ClientSession]


async def _drained(setup: Setup, grant_id: str, forwarder: Forwarder) -> Opened:
    """A connection through ``forwarder``, then the broker's drain of its tunnel, once the CLI
    has heard it: (reader, writer, the draining session)."""
    _, port = await forwarder.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await _echo(reader, writer, b"before") == b"before"
    session = forwarder.session
    assert session is not None and session.ready
    _drain(setup, grant_id)
    deadline = time.monotonic() + TIMEOUT
    while not session.draining:  # the DRAIN message arrives
        assert time.monotonic() < deadline, "no DRAIN reached the CLI"
        await asyncio.sleep(0.01)
    return reader, writer, session


def test_a_drained_tunnel_keeps_its_connections_moves_new_ones_and_cuts_at_the_deadline(setup: Setup) -> None:
    grant_id = setup.grant()

    async def main() -> tuple[float, float, list[str], bool]:
        messages: list[str] = []
        forwarder = Forwarder(setup.endpoint(grant_id), report=messages.append)
        try:
            started = time.monotonic()
            reader, writer, first = await _drained(setup, grant_id, forwarder)
            port = forwarder.port
            # The open connection goes on through the draining WebSocket ...
            assert await _echo(reader, writer, b"during") == b"during"
            # ... and a new one goes through a new WebSocket (another replica, behind a balancer).
            reader2, writer2 = await asyncio.open_connection("127.0.0.1", port)
            assert await _echo(reader2, writer2, b"new") == b"new"
            second = forwarder.session
            assert second is not None and second is not first and not second.draining
            # At the deadline the old connection is cut, the new one is not.
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
            cut_after = time.monotonic() - started
            assert await _echo(reader2, writer2, b"after") == b"after"
            await asyncio.wait_for(first.gone, TIMEOUT)
            writer.close()
            writer2.close()
            return cut_after, time.monotonic() - started, messages, forwarder.ended.done()
        finally:
            await forwarder.aclose()

    cut_after, _, messages, ended = run(main())
    assert DRAIN - 0.05 <= cut_after <= DRAIN + 1.0, cut_after
    assert not ended  # the grant goes on: nothing said it ended
    assert any("the broker is restarting: 1 open connection(s) go on for up to 2 s" in m for m in messages)
    assert any("1 connection(s) still open through it were cut" in m for m in messages), messages
    _wait_for(lambda: len(audit_rows(setup.broker, "connection.close")) >= 1, "connection.close")
    whys = [row["details"]["why"] for row in audit_rows(setup.broker, "connection.close")]
    assert "shutdown" in whys, whys


def test_a_drained_tunnel_whose_connections_end_closes_at_once(setup: Setup) -> None:
    grant_id = setup.grant()

    async def main() -> tuple[float, list[str]]:
        messages: list[str] = []
        forwarder = Forwarder(setup.endpoint(grant_id), report=messages.append)
        try:
            _, writer, first = await _drained(setup, grant_id, forwarder)
            closed = time.monotonic()
            writer.close()  # the last connection ends: the tunnel needs no more time
            await asyncio.wait_for(first.gone, TIMEOUT)
            return time.monotonic() - closed, messages
        finally:
            await forwarder.aclose()

    took, messages = run(main())
    assert took < DRAIN - 0.5, took
    assert not any("were cut" in m for m in messages), messages
