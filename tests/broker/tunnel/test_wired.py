"""A logged-in channel's statements: handed to the session's ``statement_sink`` before the chunk is
forwarded, and a sink that cannot take a batch ends the channel (fail closed).

A real uvicorn broker (``setup`` from test_protocol) whose ``svc-stream`` is a redis service on
the shared Redis (its ``default`` user: the broker logs in with ``AUTH default ""``), reached
through the CLI's Forwarder.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest
import redis

from access.broker.tunnel.protocol import TunnelProtocol, WireChannel
from access.broker.tunnel.registry import registry_for
from access.broker.wire.base import Statement
from access.cli.tunnel import Forwarder
from tests.broker.conftest import audit_rows
from tests.broker.tunnel import test_protocol
from tests.broker.tunnel.test_protocol import (
    Setup,
    _wait_for,
    run,
    setup,  # noqa: F401 (the fixtures, used by name)
    wrap_app,  # noqa: F401
)


@pytest.fixture
def stream_port(monkeypatch: pytest.MonkeyPatch) -> int:
    """svc-stream is the shared Redis, as a redis service (the broker logs in to it)."""
    return test_protocol.stream_as_redis(monkeypatch)


def test_a_full_statement_sink_ends_the_channel_before_forwarding(setup: Setup) -> None:  # noqa: F811
    grant_id = setup.grant(service="svc-stream")
    key = f"access:sink:{secrets.token_hex(8)}"  # the shared Redis: a key of this run's own
    wanted = f"${len(key)}\r\n{key}\r\n".encode()
    batches: list[list[Statement]] = []
    accept = [True]

    def sink(channel: WireChannel, batch: list[Statement]) -> bool:
        batches.append(batch)
        return accept[0]

    async def main() -> tuple[bytes, bytes]:
        forwarder = Forwarder(setup.endpoint(grant_id), report=lambda _: None)
        _, port = await forwarder.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"PING\r\n")
        first = await reader.readline()
        (tunnel,) = next(iter(registry_for(setup.broker)._by_grant.values()))
        assert isinstance(tunnel, TunnelProtocol)
        tunnel.statement_sink = sink
        writer.write(b"*2\r\n$3\r\nGET\r\n" + wanted)
        second = await reader.readline()
        accept[0] = False  # the statement log is full: the next command must not reach Redis
        writer.write(b"*3\r\n$3\r\nSET\r\n" + wanted + b"$1\r\nx\r\n")
        refused = await reader.read()
        writer.close()
        await forwarder.aclose()
        return first + second, refused

    answers, refused = run(main())
    assert answers == b"+PONG\r\n$-1\r\n"
    assert b"-ERR access: the broker cannot record this connection's statements now" in refused
    assert batches == [
        [Statement("command", f"GET {key}")],
        [Statement("command", f"SET {key}")],
    ]
    shared = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5)
    try:
        assert shared.get(key) is None  # the refused SET never ran
    finally:
        shared.delete(key)
        shared.close()
    _wait_for(lambda: len(audit_rows(setup.broker, "connection.close")) == 1, "the connection.close")
    (close,) = audit_rows(setup.broker, "connection.close")
    assert close["details"]["why"] == "refused" and close["details"]["statements"] == 3
