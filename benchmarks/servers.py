"""Targets for the benchmark, each run as its own process: ``python servers.py echo|sink|stream``.

- echo: writes back whatever it reads (round trips, connection setup);
- sink: reads an 8-byte big-endian length, then that many bytes, then answers ``k`` (bulk);
- stream: writes without end to whoever connects, as fast as they read (``memory.py``).

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


class Stream(asyncio.Protocol):
    CHUNK = b"s" * (256 * 1024)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.paused = False
        self.transport.set_write_buffer_limits(high=1024 * 1024)
        self.loop = asyncio.get_running_loop()
        self.loop.call_soon(self.pump)

    def pump(self) -> None:
        # A few chunks per turn (other connections get their turn too) until the write buffer
        # passes its mark: pause_writing stops the pump, resume_writing starts it again.
        for _ in range(4):
            if self.paused or self.transport.is_closing():
                return
            self.transport.write(self.CHUNK)
        self.loop.call_soon(self.pump)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.loop.call_soon(self.pump)


async def serve(kind: str) -> None:
    loop = asyncio.get_running_loop()
    factory = {"echo": Echo, "sink": Sink, "stream": Stream}[kind]
    server = await loop.create_server(factory, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(serve(sys.argv[1]))
    except ImportError:  # pragma: no cover
        asyncio.run(serve(sys.argv[1]))
