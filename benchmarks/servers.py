"""Targets for the benchmark, each run as its own process: ``python servers.py echo|sink``.

- echo: writes back whatever it reads (round trips, connection setup);
- sink: reads an 8-byte big-endian length, then that many bytes, then answers ``k`` (bulk).

Both print their port on stdout once listening, and serve until killed.
"""

from __future__ import annotations

import asyncio
import struct
import sys


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class Sink(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.head = b""
        self.left = -1

    def data_received(self, data: bytes) -> None:
        if self.left < 0:
            self.head += data
            if len(self.head) < 8:
                return
            self.left = struct.unpack("!Q", self.head[:8])[0]
            data = self.head[8:]
        self.left -= len(data)
        if self.left == 0:
            self.transport.write(b"k")
            self.left = -1
            self.head = b""


async def serve(kind: str) -> None:
    loop = asyncio.get_running_loop()
    factory = Echo if kind == "echo" else Sink
    server = await loop.create_server(factory, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(serve(sys.argv[1]))
    except ImportError:  # pragma: no cover
        asyncio.run(serve(sys.argv[1]))
