"""What a logged-in channel needs besides the relay: its machines and its errors.

A channel to a postgres, mysql or redis service (``kinds.login.LOGIN_KINDS``) runs the kind's
``Handshake`` (``access.broker.wire``): the broker logs in to the target with the grant's
``TargetLogin`` while the client connects with none, then relays with the kind's ``Tap`` fed
every client chunk before it is forwarded. ``protocol.WireChannel`` drives them; this module
makes them and the protocol-specific bits around them. PostgreSQL's cancel keys are
``tunnel.cancels``.
"""

from __future__ import annotations

from access.broker.wire import mysql, postgres, resp
from access.broker.wire.base import Handshake, Tap, TargetLogin

__all__ = ["client_error", "machines"]

_ER_UNKNOWN = 1105  # MySQL's ER_UNKNOWN_ERROR


def machines(
    kind: str, login: TargetLogin, client_key: tuple[int, int] | None, *, tls: bool = False
) -> tuple[Handshake, Tap]:
    """The login machine and the statement tap of one channel of a ``kind`` service.

    ``tls``: the target leg is encrypted. Only the MySQL machine is told (it asks for TLS in the
    middle of its login); the channel starts TLS before the first byte for the others (after an
    SSLRequest for PostgreSQL).
    """
    if kind == "postgres":
        return postgres.handshake(login, client_key=client_key), postgres.tap()
    if kind == "mysql":
        return mysql.handshake(login, tls=tls), mysql.tap()
    if kind == "redis":
        return resp.handshake(login), resp.tap()
    raise ValueError(f"the broker does not log in to {kind} targets")


def client_error(kind: str, message: str) -> bytes:
    """``message`` as an error in the client's protocol, for the broker to send before closing.

    MySQL: the answer to the client's last command (sequence id 1); during the login the MySQL
    machine sequences its own (``MysqlHandshake.refuse``).
    """
    text = "access: " + message
    if kind == "postgres":
        return postgres.error_response(text, code="08006")
    if kind == "redis":
        return b"-ERR " + text.replace("\r", " ").replace("\n", " ").encode() + b"\r\n"
    if kind == "mysql":
        body = b"\xff" + _ER_UNKNOWN.to_bytes(2, "little") + b"#HY000" + text.encode()[:1024]
        return len(body).to_bytes(3, "little") + b"\x01" + body
    return b""
