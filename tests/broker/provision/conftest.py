"""A loopback TCP proxy the tests can freeze: a target that stops answering mid-statement, without
touching the shared servers (never stop those)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest


class FreezableProxy:
    """Relays 127.0.0.1:<port> to an upstream; ``freeze()`` holds every byte from then on (the
    sockets stay open and the kernel still ACKs, as with a hung server or a silent network)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.thawed = threading.Event()
        self.thawed.set()
        self.stopped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port: int = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def freeze(self) -> None:
        self.thawed.clear()

    def close(self) -> None:
        self.stopped.set()
        self.thawed.set()
        for sock in [self.listener, *self.sockets]:
            sock.close()
        for thread in self.threads:
            thread.join(timeout=2)

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(self.upstream, timeout=5)
            self.sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                source.settimeout(0.1)
                pump = threading.Thread(target=self._pump, args=(source, sink), daemon=True)
                self.threads.append(pump)
                pump.start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while not self.stopped.is_set():
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            while not self.thawed.wait(0.1):  # frozen: hold the bytes until thawed or closed
                pass
            if self.stopped.is_set():
                return
            try:
                sink.sendall(data)
            except OSError:
                return


@pytest.fixture
def make_proxy() -> Iterator[Callable[[tuple[str, int]], FreezableProxy]]:
    made: list[FreezableProxy] = []

    def make(upstream: tuple[str, int]) -> FreezableProxy:
        made.append(FreezableProxy(upstream))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


def in_thread(work: Callable[[], object]) -> tuple[threading.Thread, list[BaseException | None]]:
    """Run ``work`` in a daemon thread; the list receives its exception (or None) when it ends."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome
