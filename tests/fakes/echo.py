"""A loopback TCP server that sends back what it gets, until the client's EOF (the app behind a
port-forward, in the Kubernetes tests)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

__all__ = ["echo_server"]


@contextlib.contextmanager
def echo_server(timeout: float = 20.0) -> Iterator[int]:
    """Its port while the ``with`` lasts (accepts wait at most ``timeout`` seconds each)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(timeout)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                with conn:
                    while data := conn.recv(65536):
                        conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
