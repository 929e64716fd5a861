"""TLS from the broker to a MySQL/MariaDB target (issue 10), through the real tunnel code.

A real uvicorn broker (``setup`` from test_protocol, uvloop as served) whose mysql services are
the private MariaDB of ``tests.servers`` (TLS on, its certificate for 127.0.0.1 only) and the
machine's shared one (no TLS); the client is PyMySQL through the CLI's Forwarder, in clear on the
loopback leg as always. The channel starts TLS in the middle of the login (after the SSLRequest)
and the user ``access_tls`` exists only over TLS on the server's side, so a login that works went
over TLS; the server's ``Ssl_version`` says so too.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

from access.cli.tunnel import Forwarder
from access.shared.devca import make_ca
from tests.broker.conftest import audit_rows
from tests.broker.tunnel import test_protocol
from tests.broker.tunnel.test_protocol import (
    Setup,
    _wait_for,
    run,
    setup,  # noqa: F401 (the fixtures, used by name)
    wrap_app,  # noqa: F401
)
from tests.broker.wire.test_mysql import greeting, packet
from tests.servers import MariaDB, mariadb_server

__all__ = ["mariadb_server"]


@pytest.fixture
def broker_settings() -> dict[str, Any]:
    return {"tunnel_login_timeout": 1.0}  # the logins here take milliseconds


@pytest.fixture
def mute_after_greeting() -> Iterator[int]:
    """A target that greets (offering TLS), then never answers: TLS never starts."""
    server = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(packet(0, greeting()))
            while conn.recv(4096):  # until the broker hangs up
                pass
        done.set()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield int(server.getsockname()[1])
    finally:
        server.close()


@pytest.fixture
def stream_port(
    monkeypatch: pytest.MonkeyPatch, mariadb_server: MariaDB, tmp_path: Path, mute_after_greeting: int
) -> None:
    """The tunnel tests' policy, with mysql services whose ``options.tls`` asks for TLS."""
    plain = test_protocol._policy
    password = tmp_path / "tls.pw"
    password.write_text(mariadb_server.tls_password + "\n")
    password.chmod(0o600)
    other_ca = make_ca(tmp_path / "other-ca").ca_cert
    port = mariadb_server.port

    def service(name: str, target: str, **options: str) -> dict[str, Any]:
        options = {"user": mariadb_server.tls_user, "password_file": str(password), **options}
        return {"name": name, "kind": "mysql", "target": target, "scopes": ["read"], "max_ttl": "1h",
                "options": options}  # fmt: skip

    services = [
        service("svc-my-tls", f"127.0.0.1:{port}", tls="verify-full", tls_ca_file=mariadb_server.ca_file),
        service("svc-my-badca", f"127.0.0.1:{port}", tls="verify-full", tls_ca_file=str(other_ca)),
        # The same server on an address its certificate does not name.
        service("svc-my-badhost", f"127.0.0.2:{port}", tls="verify-full", tls_ca_file=mariadb_server.ca_file),
        service("svc-my-require", f"127.0.0.2:{port}", tls="require"),
        service("svc-my-plain", "127.0.0.1:3306", tls="require"),  # the shared MariaDB: no TLS
        service("svc-my-mute", f"127.0.0.1:{mute_after_greeting}", tls="require"),
    ]

    def policy(echo_port: int, dead_port: int, stream_port: int | None = None) -> dict[str, Any]:
        made = plain(echo_port, dead_port, stream_port)
        made["services"] += services
        made["rules"][0]["services"] += [item["name"] for item in services]
        return made

    monkeypatch.setattr(test_protocol, "_policy", policy)


def _through(setup: Setup, service: str, sql: str) -> tuple[Any, str]:  # noqa: F811 (not the fixture)
    """Connect PyMySQL through a Forwarder to ``service``: (the rows of ``sql``, or the error
    PyMySQL raised; what the forwarder reported)."""
    grant_id = setup.grant(service=service)

    def client(port: int) -> Any:
        try:
            conn = pymysql.connect(
                host="127.0.0.1", port=port, user="whoever", password="", connect_timeout=10, read_timeout=10
            )
        except pymysql.err.OperationalError as exc:
            return exc
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql)
                return cursor.fetchall()
        finally:
            conn.close()

    async def main() -> tuple[Any, str]:
        messages: list[str] = []
        forwarder = Forwarder(setup.endpoint(grant_id), report=messages.append)
        _, port = await forwarder.start()
        try:
            return await asyncio.to_thread(client, port), "\n".join(messages)
        finally:
            await forwarder.aclose()

    result: tuple[Any, str] = run(main())
    return result


def _closes(where: Setup, count: int) -> dict[str, dict[str, Any]]:
    """The ``connection.close`` details by service, once ``count`` are written (a worker thread)."""
    _wait_for(lambda: len(audit_rows(where.broker, "connection.close")) >= count, "the connection.close")
    rows = audit_rows(where.broker, "connection.close")
    assert len(rows) == count, rows  # one per channel: each ended once
    return {row["details"]["service"]: row["details"] for row in rows}


SSL_VERSION = (
    "SELECT CURRENT_USER(), VARIABLE_VALUE FROM information_schema.SESSION_STATUS "
    "WHERE VARIABLE_NAME = 'SSL_VERSION'"
)


def test_verify_full_with_the_right_ca_and_require_log_in_over_tls(
    setup: Setup,  # noqa: F811
    mariadb_server: MariaDB,
) -> None:
    for service in ("svc-my-tls", "svc-my-require"):  # require checks no name: 127.0.0.2 is fine
        rows, _ = _through(setup, service, SSL_VERSION)
        assert not isinstance(rows, Exception), (service, rows)
        [(user, version)] = rows
        assert user == "access_tls@%" and version.startswith("TLSv1."), service  # a TLS-only user
    for close in _closes(setup, 2).values():
        # COM_QUIT: the server hangs up as the client does, whichever the broker sees first.
        assert close["why"] in ("client closed", "target closed") and "error" not in close
        assert close["statements"] >= 2  # the SELECT and COM_QUIT: tapped as without TLS
    assert mariadb_server.tls_password not in repr(audit_rows(setup.broker, "connection.close"))


def test_verify_full_refuses_a_certificate_of_another_ca_or_for_another_host(setup: Setup) -> None:  # noqa: F811
    cases = {"svc-my-badca": "certificate verify failed", "svc-my-badhost": "IP address mismatch"}
    for service, why in cases.items():
        error, _ = _through(setup, service, "SELECT 1")
        assert isinstance(error, pymysql.err.OperationalError), error
        code, message = error.args
        assert code == 1043 and message.startswith(f"access: TLS to {service} failed (") and why in message
        assert "operators: check the service's options.tls and the target's certificate" in message
    for close in _closes(setup, 2).values():
        assert close["why"] == "refused" and close["error"].startswith("TLS to the target failed: ")
        assert close["statements"] == 0


def test_a_target_without_tls_is_refused_and_one_that_never_starts_it_ends_at_the_deadline(
    setup: Setup,  # noqa: F811
) -> None:
    error, _ = _through(setup, "svc-my-plain", "SELECT 1")  # require, against the shared MariaDB
    assert isinstance(error, pymysql.err.OperationalError), error
    assert error.args[0] == 1043
    assert "access: the target offers no TLS, which this service's options.tls asks for" in error.args[1]
    error, _ = _through(setup, "svc-my-mute", "SELECT 1")  # greets with CLIENT_SSL, then is silent
    assert isinstance(error, pymysql.err.OperationalError), error
    assert "the target did not finish the login within 1 s" in error.args[1]
    closes = _closes(setup, 2)  # the mute one's upgrade was under way: it still ends exactly once
    assert closes["svc-my-plain"]["why"] == "refused" and "offers no TLS" in closes["svc-my-plain"]["error"]
    assert closes["svc-my-mute"]["why"] == "refused" and "did not finish" in closes["svc-my-mute"]["error"]
