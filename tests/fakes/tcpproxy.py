"""A loopback TCP proxy run by threads, for tests that put something between two real peers.

Each connection it accepts goes to the address ``route()`` gives at that moment (None: closed at
once), byte for byte both ways until either side closes; then both ways end together (shutdown,
so a peer waiting for the other side to close, such as psql's cancel, sees it). ``drop_all``
resets every connection through it; ``close`` also stops accepting.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

__all__ = ["TcpProxy"]


class TcpProxy:
    def __init__(self, route: Callable[[], tuple[str, int] | None]) -> None:
        self.route = route
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            address = self.route()
            if address is None:
                client.close()
                continue
            upstream = socket.create_connection(address, timeout=5)
            upstream.settimeout(None)
            with self.lock:
                self.sockets.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        with self.lock:
            self.sockets.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def drop_all(self) -> None:
        with self.lock:
            live = list(self.sockets)
        for sock in live:
            self._drop(sock)

    def close(self) -> None:
        self.drop_all()
        self.listener.close()
