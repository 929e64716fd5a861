"""The CLI knows why its tunnel ended before it cuts the local connections.

``access exec`` reads the end the moment its program exits, and some programs exit 0 the moment
their connection closes (``kubectl get -w``). So the end must be decided when the broker's close
frame arrives, not later when the WebSocket's connection is gone. The broker here is a small
loopback TLS server that sends the close frame and then neither reads nor closes: the CLI's TLS
shutdown waits for it, so the two moments are apart by as long as the test likes (as they are
when a loaded broker is slow to finish the shutdown).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from pathlib import Path

from access.cli.localtls import local_tls
from access.cli.tunnel import BrokerEndpoint, Forwarder
from access.shared.muxframe import HEADER_SIZE, OPEN, OPEN_OK, SUBPROTOCOL, header, unpack_header
from access.shared.wsframe import CLOSE_REVOKED, OP_BINARY, OP_CLOSE, accept_key, close_payload, encode_frame

BOUND = 5.0


async def _broker_that_closes_and_lingers(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, release: asyncio.Event
) -> None:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)
    match = re.search(rb"Sec-WebSocket-Key: (\S+)", head)
    assert match is not None
    writer.write(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key(match.group(1).decode())}\r\n"
            f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
        ).encode()
    )
    # The CLI's first binary frame carries OPEN for its channel: a 2-byte frame head, the 4-byte
    # mask, then the 9-byte message header (unmasked here by hand).
    frame = await asyncio.wait_for(reader.readexactly(2 + 4 + HEADER_SIZE), BOUND)
    assert frame[0] & 0x0F == OP_BINARY and frame[1] & 0x7F == HEADER_SIZE
    mask, body = frame[2:6], frame[6:]
    kind, channel_id, _ = unpack_header(bytes(b ^ mask[i % 4] for i, b in enumerate(body)), 0)
    assert kind == OPEN
    writer.write(encode_frame(OP_BINARY, header(OPEN_OK, channel_id, 0), mask=False))
    writer.write(encode_frame(OP_CLOSE, close_payload(CLOSE_REVOKED, "grant g-1 was revoked"), mask=False))
    await writer.drain()
    await asyncio.wait_for(release.wait(), BOUND)  # the TCP connection stays until the test is done
    writer.close()


def test_the_end_is_decided_before_the_local_connection_is_cut(tmp_path: Path) -> None:
    tls = local_tls(tmp_path)

    async def main() -> None:
        release = asyncio.Event()
        server = await asyncio.start_server(
            lambda r, w: _broker_that_closes_and_lingers(r, w, release), "127.0.0.1", 0, ssl=tls.context
        )
        port = server.sockets[0].getsockname()[1]
        trust = ssl.create_default_context(cadata=tls.cert_pem)
        endpoint = BrokerEndpoint(f"https://127.0.0.1:{port}", "g-1", lambda _fresh: "a-token", trust)
        forwarder = Forwarder(endpoint)
        try:
            _, local_port = await forwarder.start()
            reader, writer = await asyncio.open_connection("127.0.0.1", local_port)
            assert await asyncio.wait_for(reader.read(), BOUND) == b""  # the cut
            # The connection to the broker is not gone yet, yet the end is known, and why.
            assert forwarder.ended.done()
            assert forwarder.ended.result().code == "revoked"
            assert forwarder.ended.result().message == "grant g-1 was revoked"
            writer.close()
        finally:
            release.set()
            await forwarder.aclose()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
