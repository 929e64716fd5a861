"""The tunnel end to end inside one process: a real uvicorn broker on 127.0.0.1:0 (its own thread
and loop), a real TCP target that records every connection, and the CLI's tunnel client.

No sleeps for synchronisation: every wait is on an event or a socket, with a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
import uvloop

from access.broker import grants
from access.broker.app import create_app
from access.broker.auth import identity, sessions, tokens
from access.broker.auth.sessions import revoke_session
from access.broker.auth.tokens import OAuthError
from access.broker.clock import SystemClock
from access.broker.runtime import Broker
from access.broker.server import http_options, protocols
from access.broker.store.tables import grants as grants_table
from access.broker.tunnel.registry import registry_for
from access.cli.tunnel import BrokerEndpoint, ClientSession, Forwarder, HandshakeRefused
from access.shared.models import GrantRequest
from access.shared.muxframe import DATA, OPEN, OPEN_FAIL, SUBPROTOCOL, header
from access.shared.wsframe import (
    CLOSE_PROTOCOL,
    CLOSE_TOO_BIG,
    OP_BINARY,
    OP_CLOSE,
    FrameParser,
    frame_header,
    masked_frame,
    parse_close,
    unmasked_frame,
)
from tests.broker.conftest import add_user, audit_rows, login

TIMEOUT = 10.0


class RecordingTarget(socketserver.ThreadingTCPServer):
    """An echo server that counts the connections it accepted and the bytes it got."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.accepted = 0
        self.received = 0
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: RecordingTarget = self.server  # type: ignore[assignment]
        with server.lock:
            server.accepted += 1
        while data := self.request.recv(65536):
            with server.lock:
                server.received += len(data)
            self.request.sendall(data)


@dataclass
class Setup:
    broker: Broker
    url: str
    target: RecordingTarget
    tokens: dict[str, str] = field(default_factory=dict)
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    make_broker: Callable[..., Broker] | None = None

    def grant(self, user: str = "alice", service: str = "svc-echo", ttl: str = "5m") -> str:
        ctx = tokens.authenticate(self.broker, self.tokens[user])
        return grants.request_grant(self.broker, ctx, GrantRequest(service=service, scope="read", ttl=ttl)).id

    def other_process(self) -> Broker:
        """Another broker object on the same database: what it decides reaches this one's
        tunnels only through the database (its event bus is its own)."""
        assert self.make_broker is not None
        return self.make_broker(
            db_url=str(self.broker.settings.database_url),
            policy=_policy(self.target.port, 1),
            clock=SystemClock(),
        )

    def endpoint(self, grant_id: str, user: str = "alice", token: str | None = None) -> BrokerEndpoint:
        value = token if token is not None else self.tokens[user]
        return BrokerEndpoint(base_url=self.url, grant_id=grant_id, token=lambda _fresh: value)


def _policy(echo_port: int, dead_port: int, stream_port: int | None = None) -> dict[str, Any]:
    return {
        "services": [
            {
                "name": "svc-stream",
                "kind": "tcp",
                "target": f"127.0.0.1:{stream_port or dead_port}",
                "scopes": ["read"],
                "max_ttl": "1h",
            },
            {
                "name": "svc-echo",
                "kind": "tcp",
                "target": f"127.0.0.1:{echo_port}",
                "scopes": ["read"],
                "max_ttl": "1h",
            },
            {
                "name": "svc-dead",
                "kind": "tcp",
                "target": f"127.0.0.1:{dead_port}",
                "scopes": ["read"],
                "max_ttl": "1h",
            },
        ],
        "rules": [
            {
                "name": "sre",
                "subjects": {"groups": ["sre"]},
                "services": ["svc-echo", "svc-dead", "svc-stream"],
                "scopes": ["read"],
                "max_ttl": "1h",
                "require": "auto",
            }
        ],
    }


def stream_as_redis(monkeypatch: pytest.MonkeyPatch, **service: Any) -> int:
    """For a module's ``stream_port`` fixture: svc-stream becomes a redis service on the shared
    Redis (with ``service``'s keys, ``credentials`` say); returns the port it listens on."""
    plain = _policy

    def policy(echo_port: int, dead_port: int, stream_port: int | None = None) -> dict[str, Any]:
        made = plain(echo_port, dead_port, stream_port)
        made["services"][0].update(kind="redis", **service)
        return made

    monkeypatch.setattr(sys.modules[__name__], "_policy", policy)
    return 6379


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def wrap_app() -> Callable[[Any], Any]:
    """The ASGI app the broker is served as: test modules override this to add routes."""
    return lambda app: app


@pytest.fixture
def setup(
    make_broker: Callable[..., Broker],
    wrap_app: Callable[[Any], Any],
    broker_db_url: str | None,
    broker_settings: dict[str, Any],
    stream_port: int | None,
) -> Iterator[Setup]:
    target = RecordingTarget()
    threading.Thread(target=target.serve_forever, daemon=True).start()
    policy = _policy(target.port, _free_port(), stream_port)
    broker = make_broker(db_url=broker_db_url, policy=policy, clock=SystemClock(), **broker_settings)
    tokens_by_user, refresh_by_user = {}, {}
    for name in ("alice", "bob"):
        user = add_user(broker, name, ("sre",))
        token_set = login(broker, user)
        tokens_by_user[name] = token_set.access_token
        refresh_by_user[name] = token_set.refresh_token or ""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        wrap_app(create_app(broker)),
        loop="uvloop",
        **protocols(),  # as server.run serves it: the tunnel on its path, ASGI for other upgrades
        **http_options(broker.settings),
        lifespan="on",
        log_level="warning",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the broker did not start"
        time.sleep(0.01)
    try:
        yield Setup(broker, f"http://127.0.0.1:{port}", target, tokens_by_user, refresh_by_user, make_broker)
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)
        target.shutdown()
        target.server_close()


def run(coro: Any) -> Any:
    # uvloop, as the CLI runs: it differs from asyncio in ways the relay must handle (it starts
    # reading an accepted connection even when connection_made paused it).
    return uvloop.run(asyncio.wait_for(coro, TIMEOUT * 2))


async def _echo(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    got = await reader.readexactly(len(payload))
    writer.close()
    await writer.wait_closed()
    return got


def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _one_refused_connection(setup: Setup, grant_id: str) -> list[str]:
    """Open one local connection through a new Forwarder, see it closed, return what was reported."""

    async def main() -> list[str]:
        messages: list[str] = []
        forwarder = Forwarder(setup.endpoint(grant_id), report=messages.append)
        _, port = await forwarder.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.read() == b""
        writer.close()
        await forwarder.aclose()
        return messages

    result: list[str] = run(main())
    return result


def test_bytes_flow_both_ways_and_each_connection_is_audited(setup: Setup) -> None:
    grant_id = setup.grant()
    payload = os.urandom(3 * 1024 * 1024 + 17)

    async def main() -> None:
        forwarder = Forwarder(setup.endpoint(grant_id))
        _, port = await forwarder.start()
        assert await _echo(port, b"hello") == b"hello"
        assert await _echo(port, payload) == payload
        await forwarder.aclose()

    run(main())
    _wait_for(lambda: len(audit_rows(setup.broker, "connection.close")) == 2, "two connection.close entries")
    opened = audit_rows(setup.broker, "connection.open")
    closed = audit_rows(setup.broker, "connection.close")
    assert [row["details"]["grant"] for row in opened] == [grant_id, grant_id]
    assert opened[0]["actor"] == "alice"
    assert opened[0]["details"]["client"] == "127.0.0.1"
    big = max(closed, key=lambda row: row["details"]["bytes_up"])
    assert big["details"]["bytes_up"] == len(payload)
    assert big["details"]["bytes_down"] == len(payload)
    assert big["details"]["why"] == "client closed"
    assert setup.target.accepted == 2


@pytest.mark.parametrize("case", ["no token", "forged token", "someone else's grant", "unknown grant"])
def test_refused_handshakes_never_reach_the_target(setup: Setup, case: str) -> None:
    grant_id = setup.grant("bob") if case == "someone else's grant" else setup.grant()
    endpoint = setup.endpoint(grant_id)
    if case == "no token":
        endpoint = setup.endpoint(grant_id, token="")
    elif case == "forged token":
        header, claims, _sig = setup.tokens["alice"].split(".")
        endpoint = setup.endpoint(
            grant_id, token=f"{header}.{claims}.{base64.urlsafe_b64encode(b'x' * 64).decode()}"
        )
    elif case == "unknown grant":
        endpoint = setup.endpoint("g-0000000000000000")
    expected = {
        "no token": 401,
        "forged token": 401,
        "someone else's grant": 404,  # answered as a missing grant: ids do not leak
        "unknown grant": 404,
    }[case]

    async def main() -> HandshakeRefused:
        session = ClientSession(Forwarder(endpoint))
        with pytest.raises(HandshakeRefused) as err:
            await session.connect(endpoint)
        return err.value

    refusal = run(main())
    assert refusal.status == expected
    assert refusal.message
    assert setup.target.accepted == 0
    assert audit_rows(setup.broker, "connection.open") == []


def test_someone_elses_grant_is_refused_exactly_like_a_missing_one(setup: Setup) -> None:
    bobs = setup.grant("bob")
    missing = "g-" + "0" * (len(bobs) - 2)

    async def refusal(grant_id: str) -> HandshakeRefused:
        endpoint = setup.endpoint(grant_id)  # alice's token
        with pytest.raises(HandshakeRefused) as err:
            await ClientSession(Forwarder(endpoint)).connect(endpoint)
        return err.value

    theirs, nobodys = run(refusal(bobs)), run(refusal(missing))
    assert (theirs.status, theirs.code, theirs.hint) == (nobodys.status, nobodys.code, nobodys.hint)
    assert (theirs.status, theirs.code) == (404, "not_found")
    assert theirs.message.replace(bobs, "ID") == nobodys.message.replace(missing, "ID")
    # The ledger still tells them apart, as before.
    refused = audit_rows(setup.broker, "connection.refuse")
    assert [(r["actor"], r["details"]["grant"], r["details"]["why"]) for r in refused] == [
        ("alice", bobs, "forbidden"),
        ("alice", missing, "not_found"),
    ]
    assert setup.target.accepted == 0


def test_expired_grant_is_refused_with_a_message(setup: Setup) -> None:
    grant_id = setup.grant(ttl="1s")
    _wait_for(lambda: grants.grant_state(setup.broker, [grant_id])[grant_id][0] == "expired", "expiry")

    async def main() -> list[str]:
        messages: list[str] = []
        forwarder = Forwarder(setup.endpoint(grant_id), report=messages.append)
        _, port = await forwarder.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.read() == b""
        writer.close()
        ended = await asyncio.wait_for(forwarder.ended, TIMEOUT)
        assert ended.code == "expired"
        await forwarder.aclose()
        return messages

    messages = run(main())
    assert any("expired" in m and "access request" in m for m in messages), messages
    assert setup.target.accepted == 0


def _open_live(
    setup: Setup, grant_id: str, report: Callable[[str], None] = lambda _m: None
) -> Callable[[], Any]:
    """An async function: open a local connection through a Forwarder; return (forwarder, reader, writer)."""

    async def opener() -> Any:
        forwarder = Forwarder(setup.endpoint(grant_id), report=report)
        _, port = await forwarder.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        return forwarder, reader, writer

    return opener


def test_live_connection_is_cut_at_expiry_within_the_window(setup: Setup) -> None:
    grant_id = setup.grant(ttl="2s")
    ctx = tokens.authenticate(setup.broker, setup.tokens["alice"])
    expires_at = grants.get_grant(setup.broker, ctx, grant_id).expires_at

    async def main() -> float:
        forwarder, reader, writer = await _open_live(setup, grant_id)()
        assert await reader.read() == b""  # the cut
        cut_at = time.time()
        ended = await asyncio.wait_for(forwarder.ended, TIMEOUT)
        assert ended.code == "expired"
        writer.close()
        await forwarder.aclose()
        return cut_at

    cut_at = run(main())
    late = cut_at - expires_at.timestamp()
    assert -0.05 <= late <= 1.5, late
    _wait_for(lambda: len(audit_rows(setup.broker, "connection.close")) == 1, "connection.close")
    assert audit_rows(setup.broker, "connection.close")[0]["details"]["why"] == "expired"


def test_revoke_cuts_a_live_connection_within_a_second(setup: Setup) -> None:
    grant_id = setup.grant()
    ctx = tokens.authenticate(setup.broker, setup.tokens["alice"])

    async def main() -> float:
        forwarder, reader, writer = await _open_live(setup, grant_id)()
        started = time.monotonic()
        await asyncio.to_thread(grants.revoke_grant, setup.broker, ctx, grant_id)
        assert await asyncio.wait_for(reader.read(), 1.0) == b""
        elapsed = time.monotonic() - started
        # Decided before the local connection was cut: ``access exec`` reads it the moment its
        # program exits (kubectl get -w exits 0 on the cut), not after the WebSocket is gone.
        assert forwarder.ended.done()
        assert forwarder.ended.result().code == "revoked"
        writer.close()
        await forwarder.aclose()
        return elapsed

    assert run(main()) < 1.0
    _wait_for(lambda: len(audit_rows(setup.broker, "connection.close")) == 1, "connection.close")
    assert audit_rows(setup.broker, "connection.close")[0]["details"]["why"] == "revoked"


def test_an_end_decided_by_another_process_is_seen_by_the_watcher(setup: Setup) -> None:
    grant_id = setup.grant()

    async def main() -> float:
        forwarder, reader, writer = await _open_live(setup, grant_id)()
        started = time.monotonic()
        # Another process ends the grant: only the database knows (no in-process event).
        with setup.broker.transaction() as conn:
            conn.execute(grants_table.update().where(grants_table.c.id == grant_id).values(state="revoked"))
        assert await asyncio.wait_for(reader.read(), 1.5) == b""
        elapsed = time.monotonic() - started
        writer.close()
        await forwarder.aclose()
        return elapsed

    assert run(main()) < 1.0


def test_unreachable_target_closes_the_local_connection_with_a_message(setup: Setup) -> None:
    grant_id = setup.grant(service="svc-dead")

    messages = _one_refused_connection(setup, grant_id)
    assert any("svc-dead did not answer" in m for m in messages), messages
    _wait_for(lambda: len(audit_rows(setup.broker, "connection.close")) == 1, "connection.close")
    closed = audit_rows(setup.broker, "connection.close")[0]["details"]
    assert closed["why"] == "error"
    assert "unreachable" in closed["error"]


async def upgrade(
    setup: Setup, grant_id: str, sock: socket.socket | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A raw tunnel upgrade as alice (over ``sock`` if given, connected here): reader, writer, head."""
    host, port = "127.0.0.1", int(setup.url.rsplit(":", 1)[1])
    if sock is None:
        reader, writer = await asyncio.open_connection(host, port)
    else:
        sock.connect((host, port))
        reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /v1/tunnel?grant={grant_id} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\nAuthorization: Bearer {setup.tokens['alice']}\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    return reader, writer, head


async def _raw_upgrade(setup: Setup, grant_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer, head = await upgrade(setup, grant_id)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def _close_code(reader: asyncio.StreamReader) -> int:
    parser = FrameParser(expect_masked=False)
    while data := await reader.read(65536):
        for opcode, payload in parser.feed(data):
            if opcode == OP_CLOSE:
                return parse_close(payload)[0]
    raise AssertionError("no close frame")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (unmasked_frame(b"not masked"), CLOSE_PROTOCOL),
        (frame_header(OP_BINARY, 64 * 1024 * 1024, mask_key=b"abcd"), CLOSE_TOO_BIG),
        (b"".join(masked_frame(b"") for _ in range(5000)), 1008),
        (masked_frame(b"".join(header(OPEN, i, 0) for i in range(1, 2000))), 1008),
        (masked_frame(header(DATA, 7, 3) + b"abc"), CLOSE_PROTOCOL),
        (masked_frame(header(99, 1, 0)), CLOSE_PROTOCOL),
        (masked_frame(header(OPEN, 5, 0) + header(OPEN, 5, 0)), CLOSE_PROTOCOL),
        (masked_frame(header(OPEN_FAIL, 1, 0)), CLOSE_PROTOCOL),
    ],
    ids=[
        "unmasked",
        "oversized",
        "flood",
        "flood of opens",
        "data before open",
        "unknown type",
        "reused id",
        "open_fail from the client",
    ],
)
def test_hostile_frames_close_the_connection(setup: Setup, frame: bytes, code: int) -> None:
    grant_id = setup.grant()

    async def main() -> int:
        reader, writer = await _raw_upgrade(setup, grant_id)
        writer.write(frame)
        got = await _close_code(reader)
        writer.close()
        return got

    assert run(main()) == code
    assert setup.target.received == 0


def test_not_the_tunnel_path_is_404(setup: Setup) -> None:
    async def main() -> bytes:
        port = int(setup.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"GET /v1/other HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        data = await reader.read()
        writer.close()
        return data

    assert run(main()).startswith(b"HTTP/1.1 404")


def test_local_connections_are_channels_of_one_websocket(setup: Setup) -> None:
    grant_id = setup.grant()
    registry = registry_for(setup.broker)

    async def main() -> list[int]:
        forwarder = Forwarder(setup.endpoint(grant_id))
        _, port = await forwarder.start()
        pairs = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        for i, (_reader, writer) in enumerate(pairs):
            writer.write(f"ping {i}".encode())
        got = [await reader.readexactly(6) for reader, _ in pairs]
        assert got == [b"ping 0", b"ping 1", b"ping 2"]
        tunnels = [len(registry._by_grant.get(grant_id, ())), len(forwarder.sessions)]
        for _, writer in pairs:
            writer.close()
        await forwarder.aclose()
        return tunnels

    assert run(main()) == [1, 1]  # one WebSocket on each side
    _wait_for(
        lambda: len(audit_rows(setup.broker, "connection.close")) == 3, "three connection.close entries"
    )
    opened = audit_rows(setup.broker, "connection.open")
    assert len({row["details"]["connection"] for row in opened}) == 3  # each channel audited on its own
    assert setup.target.accepted == 3


def _cut_after(setup: Setup, grant_id: str, end: Callable[[], object]) -> tuple[float, str, list[str]]:
    """Open a live channel, run ``end`` (in a worker thread), and wait at most a second for the
    cut; return how long it took, the Forwarder's end code and what it reported."""

    async def main() -> tuple[float, str, list[str]]:
        messages: list[str] = []
        forwarder, reader, writer = await _open_live(setup, grant_id, report=messages.append)()
        try:
            started = time.monotonic()
            await asyncio.to_thread(end)
            assert await asyncio.wait_for(reader.read(), 1.0) == b""  # the live channel is cut
            elapsed = time.monotonic() - started
            ended = await asyncio.wait_for(forwarder.ended, TIMEOUT)
        finally:
            writer.close()
            await forwarder.aclose()
        return elapsed, ended.code, messages

    result: tuple[float, str, list[str]] = run(main())
    return result


def _refresh_reuse(setup: Setup) -> None:
    first = setup.refresh_tokens["alice"]
    sessions.refresh(setup.broker, first, "access-cli")
    with pytest.raises(OAuthError):
        sessions.refresh(setup.broker, first, "access-cli")  # used twice: the session is revoked


@pytest.mark.parametrize("how", ["logout", "refresh-token reuse", "revoked by another process"])
def test_ending_the_session_cuts_its_live_channel_within_a_second(setup: Setup, how: str) -> None:
    grant_id = setup.grant()
    ctx = tokens.authenticate(setup.broker, setup.tokens["alice"])
    ends: dict[str, Callable[[], object]] = {
        "logout": lambda: sessions.logout(setup.broker, ctx),
        "refresh-token reuse": lambda: _refresh_reuse(setup),
        # The poll path: another broker object revokes (RFC 7009); only the database knows.
        "revoked by another process": lambda: sessions.revoke_token(
            setup.other_process(), setup.refresh_tokens["alice"]
        ),
    }

    elapsed, code, messages = _cut_after(setup, grant_id, ends[how])
    assert elapsed < 1.0, f"cut {elapsed:.2f}s after the session ended"
    assert code == "signed out"
    assert any("sign-in session ended" in m and "access login" in m for m in messages), messages
    _wait_for(lambda: len(audit_rows(setup.broker, "connection.close")) == 1, "connection.close")
    assert audit_rows(setup.broker, "connection.close")[0]["details"]["why"] == "signed out"


@pytest.mark.parametrize("where", ["this process", "another process"])
def test_disabling_the_user_closes_with_locked(setup: Setup, where: str) -> None:
    """docs/tunnel.md promises 4012 "locked" for a disabled account, also when the disable is
    seen through the database (``access-broker users disable`` is another process)."""
    grant_id = setup.grant()
    broker = setup.broker if where == "this process" else setup.other_process()
    elapsed, code, messages = _cut_after(
        setup, grant_id, lambda: identity.disable_principal(broker, "alice", "admin:root")
    )
    assert elapsed < 1.0, elapsed
    assert code == "locked"  # read back from close code 4012
    assert any("locked" in m for m in messages), messages
    _wait_for(lambda: len(audit_rows(setup.broker, "connection.close")) == 1, "connection.close")
    assert audit_rows(setup.broker, "connection.close")[0]["details"]["why"] == "locked"


def test_a_signed_out_session_opens_no_new_channel(setup: Setup) -> None:
    grant_id = setup.grant()
    ctx = tokens.authenticate(setup.broker, setup.tokens["alice"])
    with setup.broker.transaction() as conn:
        # Signed out behind the broker's back (no event, and before the tunnel opens).
        assert revoke_session(conn, setup.broker.clock, ctx.session_id, "logout")

    messages = _one_refused_connection(setup, grant_id)
    assert messages, "the refusal was not reported"
    assert setup.target.accepted == 0


@pytest.mark.parametrize(("trusted", "client"), [(True, "203.0.113.66"), (False, "127.0.0.1")])
def test_the_tunnel_records_the_client_a_trusted_proxy_forwards(
    setup: Setup, trusted: bool, client: str
) -> None:
    # The broker sees this test as its peer (127.0.0.1); as a load balancer it forwards a client.
    if trusted:
        setup.broker.settings.trusted_proxies = (ipaddress.ip_network("127.0.0.0/8"),)
    missing = "g-" + "0" * 16
    host, port = setup.url.removeprefix("http://").split(":")
    head = (
        f"GET /v1/tunnel?grant={missing} HTTP/1.1\r\nHost: broker\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\nAuthorization: Bearer {setup.tokens['alice']}\r\n"
        "X-Forwarded-For: 192.0.2.250, 203.0.113.66\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(head.encode())
        assert sock.recv(64).startswith(b"HTTP/1.1 404")
    [refused] = audit_rows(setup.broker, "connection.refuse")
    assert refused["details"]["client"] == client


async def _held(
    forwarder: Forwarder, setup: Setup, grant_id: str, other_than: object = None
) -> ClientSession:
    """Wait for the Forwarder's held WebSocket (a new one, if ``other_than``) to be open on both sides."""
    registry = registry_for(setup.broker)
    deadline = time.monotonic() + TIMEOUT
    while True:
        session = forwarder.session
        if (
            session is not None
            and session is not other_than
            and session.ready
            and registry._by_grant.get(grant_id)
        ):
            return session
        assert time.monotonic() < deadline, "the held WebSocket did not open"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("how", ["revoke", "logout", "disable", "revoke after a lost connection"])
def test_an_idle_held_forwarder_hears_the_end_within_a_second(setup: Setup, how: str) -> None:
    """`access connect` with no local connection open stops within a second of any end: it holds
    its WebSocket open (hold=True), reopened after a loss, so the broker's close reaches it."""
    grant_id = setup.grant()
    ctx = tokens.authenticate(setup.broker, setup.tokens["alice"])
    registry = registry_for(setup.broker)
    revoke = (lambda: grants.revoke_grant(setup.broker, ctx, grant_id), "revoked")
    ends: dict[str, tuple[Callable[[], object], str]] = {
        "revoke": revoke,
        "logout": (lambda: sessions.logout(setup.broker, ctx), "signed out"),
        "disable": (lambda: identity.disable_principal(setup.broker, "alice", "admin:root"), "locked"),
        "revoke after a lost connection": revoke,
    }
    end, code = ends[how]

    def drop_on_the_broker() -> None:  # on the broker's loop: its side goes away (1001)
        for tunnel in list(registry._by_grant.get(grant_id, ())):
            tunnel.shutdown()  # type: ignore[attr-defined]

    async def main() -> tuple[float, str, list[str]]:
        messages: list[str] = []
        forwarder = Forwarder(setup.endpoint(grant_id), report=messages.append, hold=True)
        await forwarder.start()
        try:
            session = await _held(forwarder, setup, grant_id)
            if how.endswith("after a lost connection"):
                assert registry.loop is not None
                registry.loop.call_soon_threadsafe(drop_on_the_broker)
                await asyncio.wait_for(session.gone, TIMEOUT)
                await _held(forwarder, setup, grant_id, other_than=session)  # reopened, still idle
            started = time.monotonic()
            await asyncio.to_thread(end)
            ended = await asyncio.wait_for(forwarder.ended, 1.0)
            return time.monotonic() - started, ended.code, messages
        finally:
            await forwarder.aclose()

    elapsed, got, messages = run(main())
    assert elapsed < 1.0 and got == code, (elapsed, got, messages)
    assert setup.target.accepted == 0  # idle: no channel, nothing reached the target


def test_a_session_whose_lifetime_ends_cuts_its_live_channel_on_time(setup: Setup) -> None:
    """Session expiry, not only revocation, cuts: a timer at the session's end (close 4013)."""
    from datetime import UTC, datetime, timedelta

    from access.broker.store.tables import sessions as sessions_table

    grant_id = setup.grant()
    ctx = tokens.authenticate(setup.broker, setup.tokens["alice"])
    ends_at = datetime.now(UTC) + timedelta(seconds=1.5)
    with setup.broker.transaction() as conn:  # as a short session_ttl would have set it at login
        conn.execute(
            sessions_table.update().where(sessions_table.c.id == ctx.session_id).values(expires_at=ends_at)
        )

    async def main() -> tuple[float, str, list[str]]:
        messages: list[str] = []
        forwarder, reader, writer = await _open_live(setup, grant_id, report=messages.append)()
        try:
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""  # the cut
            cut_at = time.time()
            ended = await asyncio.wait_for(forwarder.ended, TIMEOUT)
        finally:
            writer.close()
            await forwarder.aclose()
        return cut_at, ended.code, messages

    cut_at, code, messages = run(main())
    late = cut_at - ends_at.timestamp()
    assert -0.05 <= late <= 1.0, f"cut {late:+.2f}s from the session's end"
    assert code == "signed out"  # 4013: sign in again
    assert any("sign-in session expired" in m and "access login" in m for m in messages), messages
    _wait_for(lambda: len(audit_rows(setup.broker, "connection.close")) == 1, "connection.close")
    assert audit_rows(setup.broker, "connection.close")[0]["details"]["why"] == "session expired"
