"""What a logged-in channel needs besides the relay: its machines, its errors, PostgreSQL cancel keys.

A channel to a postgres, mysql or redis service (``kinds.login.LOGIN_KINDS``) runs the kind's
``Handshake`` (``access.broker.wire``): the broker logs in to the target with the grant's
``TargetLogin`` while the client connects with none, then relays with the kind's ``Tap`` fed
every client chunk before it is forwarded. ``protocol.WireChannel`` drives them; this module
makes them and the protocol-specific bits around them.

PostgreSQL cancels. A client only ever sees a BackendKeyData the broker issued (``CancelKeys
.issue``), never the target's. Each logged-in channel registers (issued key -> grant, target
key, target address); a channel whose first message is a CancelRequest is looked up here (the
secret compared in constant time) and forwarded to the target only for a live channel of the
SAME grant at the same address. The map is per broker process: a cancel that reaches another
replica than the query's finds nothing and is refused (cross-replica cancel is not done yet).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from access.broker.perbroker import PerBroker
from access.broker.wire import mysql, postgres, resp
from access.broker.wire.base import Handshake, Tap, TargetLogin

if TYPE_CHECKING:
    from access.broker.runtime import Broker

__all__ = ["CancelEntry", "CancelKeys", "cancels_for", "client_error", "machines"]

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


@dataclass(frozen=True, slots=True)
class CancelEntry:
    grant_id: str
    client_key: tuple[int, int]
    target_key: tuple[int, int]
    host: str
    port: int


class CancelKeys:
    """The BackendKeyData this broker process issued to clients, and what each one cancels.

    Bounded by the live channels: an entry is added when a channel's login is done and dropped
    when the channel ends.
    """

    def __init__(self) -> None:
        self._by_pid: dict[int, CancelEntry] = {}

    def __len__(self) -> int:
        return len(self._by_pid)

    def issue(self) -> tuple[int, int]:
        """A fresh (pid, secret) for a client: the pid unused among the live ones."""
        while True:
            pid = secrets.randbelow(0x7FFFFFFE) + 1
            if pid not in self._by_pid:
                return pid, secrets.randbits(32)

    def add(self, entry: CancelEntry) -> bool:
        """Register a logged-in channel's key (False: its pid was taken meanwhile, not added)."""
        if entry.client_key[0] in self._by_pid:
            return False
        self._by_pid[entry.client_key[0]] = entry
        return True

    def drop(self, client_key: tuple[int, int]) -> None:
        entry = self._by_pid.get(client_key[0])
        if entry is not None and entry.client_key == client_key:
            del self._by_pid[client_key[0]]

    def find(self, presented: tuple[int, int]) -> CancelEntry | None:
        """The entry whose issued key is ``presented`` (the secret compared in constant time)."""
        entry = self._by_pid.get(presented[0])
        if entry is None or not postgres.cancel_key_matches(entry.client_key, presented):
            return None
        return entry


_cancels = PerBroker(lambda _broker: CancelKeys())


def cancels_for(broker: Broker) -> CancelKeys:
    """The cancel keys of ``broker`` (one map per broker object; gone when the broker is)."""
    return _cancels(broker)
