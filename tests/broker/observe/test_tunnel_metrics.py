"""The tunnel counts for itself (it bypasses ASGI): tunnels and channels open, bytes relayed at
each channel's close, the cut's latency; one log line per tunnel event, never its token."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
from collections.abc import Iterator

import pytest

from access.broker import grants
from access.broker.auth import tokens
from access.broker.observe.metrics import Metrics, metrics_for
from access.cli.tunnel import Forwarder
from tests.broker.conftest import audit_rows
from tests.broker.observe.test_metrics import samples, value
from tests.broker.tunnel.test_protocol import (
    Setup,
    _echo,
    _open_live,
    _wait_for,
    run,
    setup,  # noqa: F401 (the fixture, used by name)
    wrap_app,  # noqa: F401 (the fixture setup uses)
)


def _open(metrics: Metrics) -> float:
    return value(samples(metrics.exposition().decode()), "access_tunnels_open")


@pytest.fixture
def tunnel_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    from access.broker.observe.logs import JsonFormatter

    handler.setFormatter(JsonFormatter())
    events = logging.getLogger("access.broker.tunnel.events")
    level = events.level
    events.addHandler(handler)
    events.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        events.removeHandler(handler)
        events.setLevel(level)


def test_tunnels_channels_and_bytes_are_counted_and_logged(setup: Setup, tunnel_log: io.StringIO) -> None:  # noqa: F811
    grant_id = setup.grant()
    payload = os.urandom(200_000)
    metrics = metrics_for(setup.broker)
    seen: dict[str, float] = {}

    async def main() -> None:
        forwarder = Forwarder(setup.endpoint(grant_id))
        _, port = await forwarder.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
        found = samples(metrics.exposition().decode())
        seen["tunnels"] = value(found, "access_tunnels_open")
        seen["channels"] = value(found, "access_channels_open")
        writer.close()
        await writer.wait_closed()
        assert await _echo(port, payload) == payload
        await forwarder.aclose()

    run(main())
    _wait_for(lambda: len(audit_rows(setup.broker, "connection.close")) == 2, "two connection.close entries")
    _wait_for(lambda: _open(metrics) == 0, "the tunnel counted closed")
    found = samples(metrics.exposition().decode())
    assert seen == {"tunnels": 1, "channels": 1}
    assert value(found, "access_channels_open") == 0
    assert value(found, "access_tunnel_bytes_total", direction="up") == 5 + len(payload)
    assert value(found, "access_tunnel_bytes_total", direction="down") == 5 + len(payload)

    events = [json.loads(line) for line in tunnel_log.getvalue().splitlines()]
    assert [e["message"] for e in events] == ["tunnel open", "channel close", "channel close", "tunnel close"]
    assert {e["grant"] for e in events} == {grant_id}
    assert {e["principal"] for e in events} == {"alice"}
    assert len({e["request_id"] for e in events}) == 1
    assert sorted(e["bytes_up"] for e in events if "bytes_up" in e) == [5, len(payload)]
    assert setup.tokens["alice"] not in tunnel_log.getvalue()


def test_a_cut_is_timed_from_the_decision_to_the_closed_socket(setup: Setup, tunnel_log: io.StringIO) -> None:  # noqa: F811
    grant_id = setup.grant()
    ctx = tokens.authenticate(setup.broker, setup.tokens["alice"])
    metrics = metrics_for(setup.broker)

    async def main() -> None:
        forwarder, reader, writer = await _open_live(setup, grant_id)()
        await asyncio.to_thread(grants.revoke_grant, setup.broker, ctx, grant_id)
        assert await asyncio.wait_for(reader.read(), 2.0) == b""
        writer.close()
        await forwarder.aclose()

    run(main())
    _wait_for(lambda: _open(metrics) == 0, "the tunnel counted closed")
    found = samples(metrics.exposition().decode())
    assert value(found, "access_tunnel_cut_seconds_count") == 1
    assert 0 < value(found, "access_tunnel_cut_seconds_sum") < 2.0
    cut = [json.loads(line) for line in tunnel_log.getvalue().splitlines() if '"tunnel cut"' in line]
    assert [(line["why"], line["grant"]) for line in cut] == [("revoked", grant_id)]


def _upgrade(served: Setup, path: str) -> tuple[str, str]:
    """A WebSocket upgrade on ``path`` with a forged token: the answer's status line and request id."""
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode() + b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Protocol: access-tunnel.v2\r\nAuthorization: Bearer forged-token-s3cr3t\r\n\r\n"
        )
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    status, *headers = answer.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    ids = [line.split(":", 1)[1].strip() for line in headers if line.lower().startswith("x-request-id:")]
    assert len(ids) == 1, headers
    return status, ids[0]


def test_an_upgrade_elsewhere_is_denied_with_a_request_id(setup: Setup) -> None:  # noqa: F811
    status, request_id = _upgrade(setup, "/v1/not-the-tunnel")
    assert status.startswith("HTTP/1.1 404"), status
    assert len(request_id) == 16


def test_a_refused_tunnel_answers_with_a_request_id(setup: Setup, tunnel_log: io.StringIO) -> None:  # noqa: F811
    status, request_id = _upgrade(setup, "/v1/tunnel?grant=g-nope")
    assert status.startswith("HTTP/1.1 401"), status
    refused = [json.loads(line) for line in tunnel_log.getvalue().splitlines()]
    assert [(e["message"], e["request_id"], e["status"]) for e in refused] == [
        ("tunnel refused", request_id, 401)
    ]
    assert "forged-token-s3cr3t" not in tunnel_log.getvalue()
