"""Which WebSocket upgrades the tunnel takes: only its own path. Others go to the ASGI app's routes.

A real uvicorn broker (``setup`` from test_protocol) served with a test-only WebSocket echo route
on another path, and an ASGI wrapper that records every scope the app sees: the tunnel's
connections never reach ASGI, every other upgrade does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket
from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import connect

from access.broker.tunnel.protocol import TunnelProtocol
from access.broker.tunnel.registry import registry_for
from access.cli.tunnel import Forwarder
from tests.broker.tunnel.test_protocol import (
    Setup,
    run,
    setup,  # noqa: F401 (the fixture, used by name)
)

ECHO_PATH = "/test/echo"


class Recorder:
    """The broker's app, noting the (type, path) of every scope it is given."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.state = app.state  # TunnelProtocol finds the broker as ``config.app.state.broker``
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            self.seen.append((scope["type"], scope["path"]))
        await self.app(scope, receive, send)


@pytest.fixture
def recorder() -> list[Recorder]:
    return []


@pytest.fixture
def wrap_app(recorder: list[Recorder]) -> Callable[[Any], Any]:
    def wrap(app: FastAPI) -> Recorder:
        @app.websocket(ECHO_PATH)
        async def echo(websocket: WebSocket) -> None:
            await websocket.accept()
            while True:
                text = await websocket.receive_text()
                await websocket.send_text(f"echo: {text}")

        recorder.append(Recorder(app))
        return recorder[0]

    return wrap


def _port(served: Setup) -> int:
    return int(served.url.rsplit(":", 1)[1])


def test_an_asgi_websocket_route_takes_its_upgrade_and_the_tunnel_still_works(
    setup: Setup,  # noqa: F811
    recorder: list[Recorder],
) -> None:
    grant_id = setup.grant()

    async def main() -> tuple[str, bytes]:
        async with connect(f"ws://127.0.0.1:{_port(setup)}{ECHO_PATH}") as ws:
            await ws.send("hello")
            answer = str(await ws.recv())
        forwarder = Forwarder(setup.endpoint(grant_id))
        _, port = await forwarder.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"over the tunnel")
        through_tunnel = await reader.readexactly(15)
        # The tunnel's protocol is the transport's own: no wrapper sits on the per-frame path.
        (tunnel,) = registry_for(setup.broker)._by_grant[grant_id]
        assert type(tunnel) is TunnelProtocol
        assert tunnel.transport is not None and tunnel.transport.get_protocol() is tunnel
        writer.close()
        await forwarder.aclose()
        return answer, through_tunnel

    assert run(main()) == ("echo: hello", b"over the tunnel")
    assert setup.target.accepted == 1
    # The tunnel's upgrade never became an ASGI scope; the echo route's did.
    assert recorder[0].seen == [("websocket", ECHO_PATH)]


@pytest.mark.parametrize("path", ["/v1/other", "/v1/tunnelx", "/v1/tunnel/x", "/V1/TUNNEL"])
def test_an_upgrade_to_an_unknown_path_is_a_404_from_the_app(
    setup: Setup,  # noqa: F811
    recorder: list[Recorder],
    path: str,
) -> None:
    grant_id = setup.grant()

    async def main() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(setup))
        # Everything the tunnel would want (subprotocol, token, grant), only the path differs.
        writer.write(
            (
                f"GET {path}?grant={grant_id} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: access-tunnel.v2\r\n"
                f"Authorization: Bearer {setup.tokens['alice']}\r\n\r\n"
            ).encode()
        )
        data = await reader.read()
        writer.close()
        return data

    answer = run(main())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404"), answer
    assert json.loads(body) == {"error": {"code": "not_found", "message": "no such endpoint"}}
    assert recorder[0].seen == [("websocket", path)]  # the app answered, not the tunnel
    assert setup.target.accepted == 0
