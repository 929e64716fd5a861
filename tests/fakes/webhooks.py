"""A webhook receiver on loopback, run by threads: it checks each request's signature the way
docs/notifications.md tells receivers to, records what came, and answers as scripted.

``answers`` is the statuses to give, one per request in order (then 200); ``HANG`` instead
holds the request without answering until the receiver closes (a receiver that never answers).
``wait_for(n)`` waits, bounded, for ``n`` requests to have come.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from access.broker.notifications import signing

__all__ = ["HANG", "Received", "Receiver", "receiver"]

HANG = -1
_MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]  # names in lower case
    body: bytes
    signed: bool  # the signature and timestamp passed the receiver's check

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str:
        return self.headers[name.lower()]

    @property
    def delivery(self) -> str:
        return self.header(signing.DELIVERY_HEADER)


class Receiver:
    def __init__(self, secret: bytes, now: Callable[[], float], answers: list[int]) -> None:
        self.secret = secret
        self.now = now
        self.answers = list(answers)
        self.received: list[Received] = []
        self.changed = threading.Condition()
        self.closing = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = min(int(self.headers.get("Content-Length", "0")), _MAX_BODY)
                body = self.rfile.read(length)
                headers = {name.lower(): value for name, value in self.headers.items()}
                signed = signing.verify(
                    receiver.secret,
                    headers.get(signing.TIMESTAMP_HEADER.lower(), ""),
                    headers.get(signing.SIGNATURE_HEADER.lower(), ""),
                    body,
                    receiver.now(),
                )
                with receiver.changed:
                    receiver.received.append(Received(headers, body, signed))
                    status = receiver.answers.pop(0) if receiver.answers else 200
                    receiver.changed.notify_all()
                if status == HANG:
                    receiver.closing.wait(30)  # bounded: the test's close ends it sooner
                    return
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.received) >= count, timeout):
                raise AssertionError(f"{len(self.received)} webhook requests came, not {count}")
            return list(self.received)


@contextmanager
def receiver(secret: bytes, now: Callable[[], float], answers: list[int] | None = None) -> Iterator[Receiver]:
    """A running receiver checking signatures made with ``secret`` against the clock ``now``."""
    running = Receiver(secret, now, answers or [])
    thread = threading.Thread(target=running.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield running
    finally:
        running.closing.set()
        running.server.shutdown()
        running.server.server_close()
        thread.join(10)
