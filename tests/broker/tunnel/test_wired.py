"""A logged-in channel's statements: handed to the statement log before the chunk is forwarded,
and a log that cannot take a batch ends the channel (fail closed).

A real uvicorn broker (``setup`` from test_protocol) whose ``svc-stream`` is a redis service on
the shared Redis (its ``default`` user: the broker logs in with ``AUTH default ""``), reached
through the CLI's Forwarder.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest
import redis

from access.broker.audit.statements import statement_log_for
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


def test_a_full_statement_log_ends_the_channel_before_forwarding(setup: Setup) -> None:  # noqa: F811
    """The channel hands each chunk's statements to the statement log's compiled side: once the
    log has no room, the next command is answered with an error and never reaches Redis."""
    grant_id = setup.grant(service="svc-stream")
    key = f"access:sink:{secrets.token_hex(8)}"  # the shared Redis: a key of this run's own
    wanted = f"${len(key)}\r\n{key}\r\n".encode()
    log = statement_log_for(setup.broker)

    async def main() -> tuple[bytes, bytes]:
        forwarder = Forwarder(setup.endpoint(grant_id), report=lambda _: None)
        _, port = await forwarder.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"PING\r\n")
        first = await reader.readline()
        writer.write(b"*2\r\n$3\r\nGET\r\n" + wanted)
        second = await reader.readline()
        log.side.limit = 0  # the statement log is full: the next command must not reach Redis
        writer.write(b"*3\r\n$3\r\nSET\r\n" + wanted + b"$1\r\nx\r\n")
        refused = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        await forwarder.aclose()
        return first + second, refused

    try:
        answers, refused = run(main())
    finally:
        log.side.limit = setup.broker.settings.statement_log_limit
    assert answers == b"+PONG\r\n$-1\r\n"
    assert b"-ERR access: the broker cannot record this connection's statements now" in refused
    assert log.refused == 1
    shared = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5)
    try:
        assert shared.get(key) is None  # the refused SET never ran
    finally:
        shared.delete(key)
        shared.close()
    _wait_for(lambda: len(audit_rows(setup.broker, "connection.close")) == 1, "the connection.close")
    (close,) = audit_rows(setup.broker, "connection.close")
    assert close["details"]["why"] == "refused" and close["details"]["statements"] == 3
    _wait_for(lambda: audit_rows(setup.broker, "connection.statements"), "the statements")
    (entry,) = audit_rows(setup.broker, "connection.statements")
    assert [item[2] for item in entry["details"]["statements"]] == ["PING", f"GET {key}"]
