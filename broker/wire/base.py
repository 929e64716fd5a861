"""Types every protocol machine shares: the target login, statements, errors, and the two interfaces."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Handshake", "Outgoing", "Statement", "Tap", "TargetLogin", "WireError"]


@dataclass(frozen=True, slots=True)
class TargetLogin:
    """What the broker logs in to the target with. The client never sees it."""

    user: str
    password: str = field(repr=False)
    database: str | None = None


@dataclass(frozen=True, slots=True, init=False)
class Statement:
    """One audit record from the client's stream: never parameter values.

    ``kind`` is the protocol's word ("query", "parse", "execute", "prepare", "command", ...);
    ``text`` the SQL (or a Redis command name and keys), cut at the tap's ceiling; ``name`` the
    prepared statement or portal where the protocol has one.
    """

    kind: str
    text: str
    name: str | None = None

    def __init__(self, kind: str, text: str, name: str | None = None) -> None:
        # A tap makes one per statement, on the event loop. A frozen dataclass's own __init__
        # sets each field through object.__setattr__ (about 1 µs in all); the slots' own
        # descriptors set them in a third of that. Still frozen: assigning a field raises.
        _set_kind(self, kind)
        _set_text(self, text)
        _set_name(self, name)


_set_kind: Callable[[Statement, str], None] = Statement.__dict__["kind"].__set__
_set_text: Callable[[Statement, str], None] = Statement.__dict__["text"].__set__
_set_name: Callable[[Statement, str | None], None] = Statement.__dict__["name"].__set__


class WireError(Exception):
    """The peer broke the protocol, or the target refused the broker's login.

    ``client_message`` is the error already encoded in the client's protocol (a PostgreSQL
    ErrorResponse, a MySQL ERR packet, a RESP error), for the channel to send before closing.
    """

    def __init__(self, message: str, client_message: bytes = b"") -> None:
        super().__init__(message)
        self.client_message = client_message


class Handshake(Protocol):
    """One per channel: logs both legs in, then hands over to the relay."""

    def feed_client(self, data: bytes) -> None:
        """Bytes from the client. Raises WireError."""

    def feed_target(self, data: bytes) -> None:
        """Bytes from the target. Raises WireError."""

    def data_to_client(self) -> bytes:
        """Take (and clear) the bytes to send to the client."""

    def data_to_target(self) -> bytes:
        """Take (and clear) the bytes to send to the target."""

    @property
    def wants_target(self) -> bool:
        """True once the broker should dial the target."""

    @property
    def done(self) -> bool:
        """Both legs are logged in: relay from now on."""

    def leftovers(self) -> tuple[bytes, bytes]:
        """Bytes read past the handshake: (client to target, target to client)."""


class Outgoing:
    """What a handshake has to send on each leg, taken (and cleared) by the channel that drives it.

    The machines append to ``_to_client`` and ``_to_target``; ``data_to_client`` and
    ``data_to_target`` are ``Handshake``'s methods of the same names.
    """

    def __init__(self) -> None:
        self._to_client = bytearray()
        self._to_target = bytearray()

    def data_to_client(self) -> bytes:
        out = bytes(self._to_client)
        self._to_client.clear()
        return out

    def data_to_target(self) -> bytes:
        out = bytes(self._to_target)
        self._to_target.clear()
        return out


class Tap(Protocol):
    """After the handshake: sees the client's bytes to the target and records statements.

    It runs on every chunk, so it walks message lengths (messages may be split across chunks)
    and decodes only statement texts, each cut at a ceiling; at most a bounded number of
    statements wait for ``take``, and the ones past it are counted, not kept.
    """

    terminated: bool
    """The client said goodbye in its protocol (PostgreSQL Terminate, MySQL COM_QUIT, Redis
    QUIT): a close that follows is the client's, whichever leg's close arrives first."""

    def client_bytes(self, data: bytes | memoryview) -> None:
        """The next chunk the client sent. Raises WireError on a malformed stream."""

    def take(self) -> list[Statement]:
        """The statements recorded since the last call."""
