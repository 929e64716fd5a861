"""Run the broker under uvicorn (uvloop + httptools), TLS when configured.

The tunnel endpoint does not go through ASGI: a WebSocket upgrade on ``/v1/tunnel`` becomes a
``tunnel.protocol.TunnelProtocol``, which relays bytes with asyncio protocols (docs/tunnel.md).
Every other upgrade goes to uvicorn's own WebSocket implementation and so to the ASGI app's
routes, like any request. :class:`BrokerHttpProtocol` makes that choice, once per connection,
from the path httptools parsed: the tunnel's per-message path never sees it.

It also bounds every request head, on every path, before httptools buffers it: at most
``http_max_head`` bytes (else 431 and close) arriving within ``http_head_timeout`` seconds of
the connection or of the head's first byte (else 408 and close; one timer per head, nothing per
byte). httptools has no limit of its own (uvicorn's ``h11_max_incomplete_event_size`` is for
its h11 implementation only). A body has ``http_body_timeout`` seconds from the end of its head
(408, or a close once the answer has begun); between requests uvicorn's ``timeout_keep_alive``
closes an idle connection (``http_keepalive_timeout``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from access.broker.settings import Settings

__all__ = ["BrokerHttpProtocol", "http_options", "protocols", "run", "serve_metrics"]

log = logging.getLogger(__name__)


class BrokerHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, except that an upgrade on the tunnel path goes to the tunnel.

    uvicorn builds ``self.ws_protocol_class(config=..., server_state=..., app_state=...)`` for an
    upgrade, gives it the transport and the re-serialised head, and makes it the transport's
    protocol. Choosing the class here, before that, keeps uvicorn's hand-over intact for both:
    the tunnel gets the connection directly (no wrapper between it and its bytes), and everything
    else gets the ``ws`` implementation the config names.
    """

    def __init__(self, config: Any, server_state: Any, app_state: Any, _loop: Any = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = config.app.state.broker.settings
        self.max_head: int = settings.http_max_head
        self.head_timeout: float = settings.http_head_timeout
        self.body_timeout: float = settings.http_body_timeout
        self._body_timer: asyncio.TimerHandle | None = None
        self._in_head = True  # bytes fed now belong to a request head
        self._head_bytes = 0  # fed to the parser since this head began
        self._head_timer: asyncio.TimerHandle | None = None
        self._upgraded = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        self._disarm_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Feed the parser no more of a head than the limit: httptools keeps an unfinished header
        # in memory however long it grows.
        while self._in_head and self._head_bytes + len(data) > self.max_head:
            room = self.max_head - self._head_bytes
            self._head_bytes += room
            super().data_received(data[:room])
            if self._upgraded or self.transport.is_closing():
                return
            if self._still_in_head():  # (the parser's callbacks may have changed it)
                self._refuse_head(431)
                return
            data = data[room:]  # the head ended in that piece: the rest is its body
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)

    def _still_in_head(self) -> bool:
        return self._in_head

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm_head_timer()
        super().on_headers_complete()
        # The body, if any, has its own deadline: a client that trickles it would otherwise hold
        # the request (and what the route has read so far) for as long as it likes.
        self._body_timer = self.loop.call_later(self.body_timeout, self._body_timed_out)

    def on_message_complete(self) -> None:
        self._disarm_body_timer()
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _disarm_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        from access.broker.errors import HeadTimeout
        from access.broker.tunnel.protocol import http_error

        self._body_timer = None
        if self._upgraded or self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            error = HeadTimeout(f"request body not received within {self.body_timeout:g} s")
            self.transport.write(http_error(error))
        self.transport.close()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._upgraded or not self._in_head or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_head_timer()  # a pipelined head waits for the answer before it: not its fault
            return
        self._refuse_head(408)

    def _refuse_head(self, status: int) -> None:
        from access.broker.errors import HeadTimeout, HeadTooLarge
        from access.broker.tunnel.protocol import http_error

        self._disarm_head_timer()
        if status == 431:
            error: HeadTooLarge | HeadTimeout = HeadTooLarge(
                f"request head over {self.max_head} bytes", hint="send fewer or shorter headers"
            )
        else:
            error = HeadTimeout(f"request head not received within {self.head_timeout:g} s")
        self.transport.write(http_error(error))
        self.transport.close()

    def handle_websocket_upgrade(self) -> None:
        from access.broker.kube import channel as _kube_channel  # noqa: F401  registers its channel kind
        from access.broker.tunnel.protocol import TUNNEL_PATH, TunnelProtocol

        self._upgraded = True
        self._disarm_head_timer()
        self._disarm_body_timer()

        # The same test the tunnel applies to the head (``parse_request``): the exact path.
        if urlsplit(self.url.decode("latin-1")).path == TUNNEL_PATH:
            # uvicorn types ``ws`` as an asyncio.Protocol; ours is a BufferedProtocol (uvloop's TLS
            # layer then decrypts into its buffer), which uvicorn hands the connection to just the same.
            self.ws_protocol_class = cast("type[asyncio.Protocol]", TunnelProtocol)
        else:
            self.ws_protocol_class = self.config.ws_protocol_class
        super().handle_websocket_upgrade()


def protocols() -> dict[str, Any]:
    """uvicorn's ``http`` and ``ws`` settings for the broker: the tunnel on its path, ASGI elsewhere."""
    # websockets' sans-I/O implementation: the legacy one is deprecated (warnings are errors in tests).
    return {"http": BrokerHttpProtocol, "ws": "websockets-sansio"}


def http_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's settings that bound an idle connection (the head limits are the protocol's own)."""
    return {"timeout_keep_alive": settings.http_keepalive_timeout}


def freeze_startup_heap() -> None:
    """Move what the start made (modules, the app, settings, policy, pools) out of the cyclic
    collector's way: ``gc.freeze`` after one collection. Those objects live as long as the
    process, yet every full collection walked them all: on a started broker about 110 ms with the
    event loop stopped, and under tunnel traffic (the statement log's queued rows grow the old
    generation) one came every 5-12 s. Frozen, a full collection walks only what came later
    (4-10 ms, `python benchmarks/cpu.py`'s load). Objects the process frees later are still
    freed by reference counting; only cycles among frozen objects stay until exit.
    """
    gc.collect()
    gc.freeze()


def serve_metrics(broker: Any, listen: str) -> Callable[[], None]:
    """Serve ``/metrics`` on ``listen`` (HOST:PORT) from a thread of its own (prometheus_client's
    server: each scrape in its own thread, never on the event loop). Returns what stops it: the
    broker calls it once it has drained and closed, so the port is free when the process ends.

    Raises:
        Misconfigured: the address cannot be listened on.
    """
    from prometheus_client import start_http_server

    from access.broker.errors import Misconfigured
    from access.broker.observe.metrics import metrics_for

    host, _, port = listen.rpartition(":")
    try:
        server, thread = start_http_server(
            int(port), addr=host.strip("[]"), registry=metrics_for(broker).registry
        )
    except OSError as exc:
        raise Misconfigured(
            f"cannot serve metrics on {listen}: {exc.strerror or exc}",
            hint="choose another ACCESS_BROKER_METRICS_LISTEN, or stop what listens there",
        ) from exc

    def stop() -> None:
        server.shutdown()  # its serve_forever returns (polls every 0.5 s)
        server.server_close()
        thread.join(timeout=5)

    return stop


def run(settings: Settings, *, ready_file: Path | None = None) -> None:
    """Serve until SIGINT/SIGTERM; on shutdown the ledger gets a final signed checkpoint. SIGHUP
    reloads the policy file for every replica (``rollout``; a bad file is refused and logged).

    Raises:
        Misconfigured: a file a setting names, the listen address or the replica identity is
            wrong (``broker/startup.py`` names which, and what to do).
        Unavailable: the database cannot be reached.
        LedgerUnsafe: the ledger's append-only guards are missing or changed, or the ledger since
            its last checkpoint fails verification.
    """
    from access.broker import startup
    from access.broker.app import create_app
    from access.broker.audit.checkpoints import refuse_unsafe
    from access.broker.observe.logs import configure as configure_logs
    from access.broker.rollout import adopt_at_start, reload_on_signal
    from access.broker.runtime import Broker
    from access.shared.tuning import tune_allocator

    tune_allocator()
    configure_logs(settings.log_format, settings.log_level)

    startup.preflight(settings)
    sock = startup.listen(settings.host, settings.port)
    port = sock.getsockname()[1]
    try:
        broker = Broker.from_settings(settings, base_url=settings.base_url(port))
        startup.claim_identity(broker, stable_issuer=settings.public_url is not None or settings.port != 0)
        refuse_unsafe(broker)
        # The same policy version as every replica: this file, if it differs, else the stored one.
        adopt_at_start(broker)
    except BaseException:
        sock.close()
        raise
    app = create_app(broker)
    stop_metrics = None if settings.metrics_listen is None else serve_metrics(broker, settings.metrics_listen)
    config = uvicorn.Config(
        app,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        **protocols(),
        **http_options(settings),
        lifespan="on",
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        log_level=settings.log_level,
        log_config=None,  # our handler on the root logger (observe.logs), uvicorn's records included
        access_log=False,  # observe.requests logs each request once, with its id and route
        server_header=False,
        proxy_headers=False,
        # The drain (tunnels finishing on this replica), then 5 s for the rest (tunnel.protocol).
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout) + 5,
    )
    server = uvicorn.Server(config)

    async def announce() -> None:
        # uvicorn exposes readiness only as a flag, so poll it (bounded by startup itself).
        while not server.started:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        freeze_startup_heap()
        message = f"access-broker listening on {broker.base_url}"
        print(message, file=sys.stderr, flush=True)
        if ready_file:
            await asyncio.to_thread(ready_file.write_text, broker.base_url + "\n")

    reloads: set[asyncio.Task[None]] = set()

    def on_sighup() -> None:
        task = asyncio.ensure_future(reload_on_signal(broker))
        reloads.add(task)  # a reference until it is done, or the task may be collected
        task.add_done_callback(reloads.discard)

    async def main() -> None:
        task = asyncio.create_task(announce())
        if hasattr(signal, "SIGHUP"):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_sighup)
        try:
            await server.serve(sockets=[sock])
        finally:
            task.cancel()

    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal with the previous
    # handler in place. A no-op handler there makes a graceful stop exit 0 rather than die by signal.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    try:
        if sys.platform != "win32":
            import uvloop

            uvloop.run(main())
        else:  # pragma: no cover
            asyncio.run(main())
    finally:
        if stop_metrics is not None:
            stop_metrics()
