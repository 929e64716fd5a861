"""A loopback TCP proxy in front of a real database server, which a test can freeze and thaw.

Frozen, it passes no byte either way but keeps every socket open and accepts new connections:
from outside that is a server stopped with SIGSTOP (its kernel still accepts and acknowledges)
or a network that silently eats packets. Thawed, it passes on what it held back. Tests put it
between the broker and the shared PostgreSQL, which they must never stop themselves.

``freeze_after(b"INSERT INTO grants", b"COMMIT")`` freezes the moment clients have sent those
byte strings in that order, after passing on the chunk with the last one: the server gets the
COMMIT, its answer never comes back (a COMMIT whose outcome the client cannot know). The order is
followed across connections: keep to one client at a time while it is armed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

__all__ = ["FreezableProxy", "freezable_proxy"]


class FreezableProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._markers: tuple[bytes, ...] = ()
        self._seen = b""  # what clients sent since the last marker matched
        self._step = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Future[None]] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dbproxy", daemon=True)

    # -- control, from the test's thread -------------------------------------------------------

    def start(self) -> FreezableProxy:
        self._thread.start()
        self._call(self._listen()).result(10)
        return self

    def freeze(self) -> None:
        self._call(self._set(flowing=False)).result(10)

    def thaw(self) -> None:
        self._call(self._set(flowing=True)).result(10)

    def freeze_after(self, *markers: bytes) -> None:
        """Freeze once a client has sent ``markers``, in order, on one connection."""
        self._call(self._arm(markers)).result(10)

    @property
    def frozen(self) -> bool:
        return not self._flowing.is_set()

    def stop(self) -> None:
        self._call(self._close()).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, None]) -> concurrent.futures.Future[None]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    # -- the proxy, on its own loop ------------------------------------------------------------

    async def _listen(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set(self, *, flowing: bool) -> None:
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _arm(self, markers: tuple[bytes, ...]) -> None:
        self._markers, self._seen, self._step = markers, b"", 0

    async def _close(self) -> None:
        self._flowing.set()
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()  # every pump then ends, and with it its connection
        if self._pumps:
            await asyncio.wait(self._pumps, timeout=5)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        self._writers |= {client_w, server_w}
        pumps = {
            asyncio.ensure_future(self._pump(client_r, server_w, watch=True)),
            asyncio.ensure_future(self._pump(server_r, client_w, watch=False)),
        }
        self._pumps |= pumps
        await asyncio.wait(pumps)
        self._pumps -= pumps
        self._writers -= {client_w, server_w}

    def _completes(self, data: bytes) -> bool:
        """Whether ``data`` completes the armed markers (then the proxy freezes, disarmed)."""
        self._seen = (self._seen + data)[-65536:]
        while self._step < len(self._markers) and self._markers[self._step] in self._seen:
            self._seen = self._seen.partition(self._markers[self._step])[2]
            self._step += 1
        if self._step < len(self._markers):
            return False
        self._markers, self._seen, self._step = (), b"", 0
        self._flowing.clear()
        return True

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, watch: bool) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await reader.read(65536)
                if not data:
                    break
                if not (watch and self._markers and self._completes(data)):
                    await self._flowing.wait()  # frozen meanwhile: hold the chunk
                writer.write(data)  # (the chunk that completes the markers passes, then all stops)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


@contextlib.contextmanager
def freezable_proxy(upstream_host: str, upstream_port: int) -> Iterator[FreezableProxy]:
    proxy = FreezableProxy(upstream_host, upstream_port).start()
    try:
        yield proxy
    finally:
        proxy.stop()
