"""More connections than one WebSocket carries (the protocol's ``MAX_CHANNELS``, 256): the CLI
opens another WebSocket beside the full one instead of refusing connection 257, and closes it
again once it is empty. The real broker app under uvicorn, the real ``Forwarder``."""

from __future__ import annotations

import asyncio

from access.broker.tunnel.registry import registry_for
from access.cli.tunnel import Forwarder
from access.shared.muxframe import MAX_CHANNELS
from tests.broker.tunnel.test_protocol import TIMEOUT, Setup, run, setup, wrap_app

__all__ = ["setup", "wrap_app"]

MORE = MAX_CHANNELS + 44


def test_connection_257_goes_through_a_second_websocket(setup: Setup) -> None:
    grant_id = setup.grant()
    registry = registry_for(setup.broker)

    async def main() -> tuple[int, int, list[str], int]:
        messages: list[str] = []
        forwarder = Forwarder(setup.endpoint(grant_id), report=messages.append)
        _, port = await forwarder.start()
        opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            for _ in range(MORE):
                opened.append(await asyncio.open_connection("127.0.0.1", port))
            for n, (_, writer) in enumerate(opened):
                writer.write(b"%d\n" % n)
            for n, (reader, _) in enumerate(opened):
                assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"%d\n" % n
            tunnels = len(registry._by_grant.get(grant_id, ()))
            sessions = len(forwarder.sessions)
            # The connections of the first WebSocket end: it is closed, the second goes on.
            first = next(s for s in forwarder.sessions if s is not forwarder.session)
            for _, writer in opened[:MAX_CHANNELS]:
                writer.close()
            await asyncio.wait_for(first.gone, TIMEOUT)
            reader, writer = opened[-1]
            writer.write(b"still\n")
            assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"still\n"
            return tunnels, sessions, messages, len(forwarder.sessions)
        finally:
            for _, writer in opened:
                writer.close()
            await forwarder.aclose()

    tunnels, sessions, messages, left = run(main())
    assert (tunnels, sessions) == (2, 2), (tunnels, sessions)
    assert left == 1
    assert not messages, messages  # nothing refused, nothing to say
    assert setup.target.accepted == MORE
