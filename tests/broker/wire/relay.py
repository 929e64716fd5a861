"""A tiny driver for the sans-I/O wire machines: a loopback listener whose every connection is
logged in to a real target by a ``Handshake`` and then relayed through a ``Tap``.

It runs an asyncio loop in a thread so a test can drive it with real client programs
(``redis-cli``, ``psql``...) as blocking subprocesses. It follows the channel's contract: every
client chunk (the handshake's leftovers first) goes to ``Tap.client_bytes`` BEFORE it is
forwarded; on ``WireError`` the chunk is dropped, ``client_message`` is sent and both legs close.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from access.broker.wire.base import Handshake, Statement, Tap, WireError

WAIT = 10.0  # seconds any single read may take before the relay gives up


@dataclass
class Relay:
    make_handshake: Callable[[], Handshake]
    make_tap: Callable[[], Tap]
    target: tuple[str, int]
    port: int = 0
    statements: list[Statement] = field(default_factory=list)
    errors: list[WireError] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def start(self) -> Relay:
        ready = threading.Event()

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            await self._stopping.wait()
            server.close()
            # asyncio.run then cancels the connections still open and closes the loop

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        self._thread.start()
        assert ready.wait(5), "the relay did not start"
        return self

    def stop(self) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(5)
        assert not self._thread.is_alive(), "the relay did not stop"

    def taken(self) -> list[Statement]:
        with self._lock:
            return list(self.statements)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        handshake = self.make_handshake()
        target_reader, target_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), WAIT)
        queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

        async def pump(side: str, reader: asyncio.StreamReader) -> None:
            while True:
                data = await reader.read(65536)
                await queue.put((side, data))
                if not data:
                    return

        pumps = [
            asyncio.create_task(pump("client", client_reader)),
            asyncio.create_task(pump("target", target_reader)),
        ]
        tap: Tap | None = None
        try:
            target_writer.write(handshake.data_to_target())
            while True:
                side, data = await asyncio.wait_for(queue.get(), WAIT)
                if not data:
                    return
                try:
                    if tap is None:
                        (handshake.feed_client if side == "client" else handshake.feed_target)(data)
                        target_writer.write(handshake.data_to_target())
                        client_writer.write(handshake.data_to_client())
                        if handshake.done:
                            tap = self.make_tap()
                            early, late = handshake.leftovers()
                            if early:
                                tap.client_bytes(early)
                                target_writer.write(early)
                            client_writer.write(late)
                    elif side == "client":
                        tap.client_bytes(data)
                        target_writer.write(data)
                    else:
                        client_writer.write(data)
                except WireError as error:
                    self.errors.append(error)
                    client_writer.write(error.client_message)
                    return
                finally:
                    if tap is not None:
                        with self._lock:
                            self.statements.extend(tap.take())
        finally:
            for task in pumps:
                task.cancel()
            for writer in (client_writer, target_writer):
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
