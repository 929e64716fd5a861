"""PostgreSQL's statement tap: the per-message part of ``wire.postgres``, compiled with the tunnel.

It runs on every client chunk of a logged-in channel, so ``setup.py`` compiles it with mypyc
beside ``shared/mux.py`` (it is strictly typed, and plain Python where compiling is not possible;
``wire.postgres`` documents what it records). Written for that: the chunk is walked as ``bytes``
(indexing and slicing bytes are native operations; a memoryview's are calls), message lengths are
read byte by byte, and message types are looked up in a bytes table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, cast

from access.broker.wire.base import Statement, WireError

__all__ = ["NAME_CEILING", "PENDING_CEILING", "STATEMENTS_KEPT", "TEXT_CEILING", "PostgresTap"]

TEXT_CEILING: Final = 4096
NAME_CEILING: Final = 256  # bytes of a statement or portal name the tap keeps
PENDING_CEILING: Final = 1000
STATEMENTS_KEPT: Final = 100  # named statements (and portals) the tap remembers, oldest forgotten first
LARGEST_MESSAGE: Final = 0x3FFFFFFF  # PostgreSQL refuses longer ones too

# What the tap does with each frontend message type: _NOT_ONE (the stream is out of step),
# _SKIP its body, otherwise the kind of prefix it reads.
_SKIP: Final = 0
_QUERY: Final = 1
_PARSE: Final = 2
_BIND: Final = 3
_EXECUTE: Final = 4
_CLOSE: Final = 5
_FUNCTION: Final = 6
_COPY_DATA: Final = 7
_TERMINATE: Final = 8
_NOT_ONE: Final = 255


def _kinds() -> bytes:
    table = bytearray([_NOT_ONE]) * 256
    for letter in b"cDfHSp":  # CopyDone, Describe, CopyFail, Flush, Sync, the password family
        table[letter] = _SKIP
    table[ord("Q")], table[ord("P")], table[ord("B")] = _QUERY, _PARSE, _BIND
    table[ord("E")], table[ord("C")], table[ord("F")] = _EXECUTE, _CLOSE, _FUNCTION
    table[ord("d")], table[ord("X")] = _COPY_DATA, _TERMINATE
    return bytes(table)


_KIND: Final = _kinds()

# A ``Statement`` made without its Python ``__init__`` (a Python frame per statement, about
# 0.8 µs): the object allocated and its three slots set through their descriptors, C calls all.
# What ``Statement.__init__`` does, without the frame (``tests/broker/wire`` compare the two).
_allocate: Final[Callable[[type[Statement]], object]] = object.__new__
_set_kind: Final[Callable[[Statement, str], None]] = Statement.__dict__["kind"].__set__
_set_text: Final[Callable[[Statement, str], None]] = Statement.__dict__["text"].__set__
_set_name: Final[Callable[[Statement, str | None], None]] = Statement.__dict__["name"].__set__


def _statement(kind: str, text: str, name: str | None = None) -> Statement:
    """``Statement(kind, text, name)``, made natively."""
    statement = cast(Statement, _allocate(Statement))
    _set_kind(statement, kind)
    _set_text(statement, text)
    _set_name(statement, name)
    return statement


def _cut_text(raw: bytes, ceiling: int) -> str:
    """``raw`` up to its NUL, at most ``ceiling`` bytes, as text (a character cut in two dropped)."""
    end = raw.find(b"\0")
    cut = raw[: end if 0 <= end <= ceiling else ceiling]
    try:
        return cut.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data":
            return cut[: exc.start].decode("utf-8", "replace")
        return cut.decode("utf-8", "replace")


def _name(raw: bytes, start: int = 0) -> tuple[str, int]:
    """A cstring name from ``raw[start:]`` (cut at NAME_CEILING) and where the next field starts."""
    end = raw.find(b"\0", start)
    stop = len(raw) if end < 0 else end
    name = raw[start : min(stop, start + NAME_CEILING)].decode("utf-8", "replace")
    return name, stop + 1


def _remember(kept: dict[str, str], name: str, value: str) -> None:
    kept.pop(name, None)
    if len(kept) >= STATEMENTS_KEPT:
        del kept[next(iter(kept))]
    kept[name] = value


class PostgresTap:
    """Records the statements a client sends after the login (see ``wire.postgres``)."""

    def __init__(self, *, pending_ceiling: int = PENDING_CEILING, text_ceiling: int = TEXT_CEILING) -> None:
        self._pending_ceiling = pending_ceiling
        self._text_ceiling = text_ceiling
        self._pending: list[Statement] = []
        self._skip = 0  # body bytes of the current message still to pass over
        self._held = b""  # an incomplete header, or a header and an incomplete prefix
        self._need = 0  # how long _held must grow
        self._body = 0  # the held message's body length
        self._statements: dict[str, str] = {}  # statement name -> text
        self._portals: dict[str, str] = {}  # portal name -> statement name
        self.dropped = 0
        """Statements not kept because ``pending_ceiling`` were waiting for ``take``."""
        self.copy_bytes = 0
        """CopyData bytes the client sent (COPY ... FROM STDIN), counted, never decoded."""
        self.terminated = False
        """The client sent Terminate."""

    @property
    def waiting(self) -> int:
        """Statements recorded and not yet taken."""
        return len(self._pending)

    def take(self) -> list[Statement]:
        taken = self._pending
        self._pending = []
        return taken

    def client_bytes(self, data: bytes | memoryview) -> None:
        self.feed(data if isinstance(data, bytes) else bytes(data))

    def feed(self, data: bytes) -> None:
        """``client_bytes`` for bytes (the channel's hot path)."""
        pos = 0
        end = len(data)
        while pos < end:
            if self._skip:  # at a chunk's start, or once a held message is complete
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            if self._held:
                pos = self._fill(data, pos, end)
                continue
            if end - pos < 5:
                self._held = data[pos:end]
                self._need = 5
                return
            # At a message boundary: one header, at most one prefix, then a jump over the rest.
            letter = data[pos]
            body = ((data[pos + 1] << 24) | (data[pos + 2] << 16) | (data[pos + 3] << 8) | data[pos + 4]) - 4
            want = self._prefix(letter, body)
            start = pos + 5
            if want:
                if end - start < want:
                    self._held = data[pos:end]
                    self._need = 5 + want
                    self._body = body
                    return
                self._decode(letter, data[start : start + want])
            pos = start + body
            if pos > end:
                self._skip = pos - end
                return

    def _fill(self, data: bytes, pos: int, end: int) -> int:
        step = min(self._need - len(self._held), end - pos)
        held = self._held + data[pos : pos + step]
        self._held = held
        pos += step
        if len(held) < self._need:
            return pos
        if self._need == 5:  # the header is complete
            body = ((held[1] << 24) | (held[2] << 16) | (held[3] << 8) | held[4]) - 4
            want = self._prefix(held[0], body)
            if want:
                self._need = 5 + want
                self._body = body
                return pos
            self._skip = body
        else:
            self._decode(held[0], held[5:])
            self._skip = self._body - (self._need - 5)
        self._held = b""
        return pos

    def _prefix(self, letter: int, body: int) -> int:
        """Checks a message header; how many body bytes the tap reads (0: none)."""
        kind = _KIND[letter]
        if kind == _NOT_ONE:
            raise WireError(f"PostgreSQL client: not a frontend message (type {letter:#04x}): out of step")
        if body < 0 or body > LARGEST_MESSAGE:
            raise WireError(f"PostgreSQL client: invalid message length {body + 4}")
        if kind == _SKIP:
            return 0
        if kind == _COPY_DATA:
            self.copy_bytes += body
            return 0
        if kind == _TERMINATE:
            self.terminated = True
            return 0
        if body == 0:
            raise WireError(f"PostgreSQL client: an empty {chr(letter)!r} message")
        if kind == _QUERY:
            return min(body, self._text_ceiling + 1)
        if kind == _PARSE:
            return min(body, NAME_CEILING + 1 + self._text_ceiling + 1)
        if kind == _BIND:
            return min(body, 2 * (NAME_CEILING + 1))
        if kind == _FUNCTION:
            return min(body, 4)
        return min(body, 1 + NAME_CEILING + 1)  # Execute, Close

    def _decode(self, letter: int, raw: bytes) -> None:
        kind = _KIND[letter]
        if kind == _QUERY:
            # A simple query drops the unnamed statement and portal, as PostgreSQL does.
            if self._statements:
                self._statements.pop("", None)
            if self._portals:
                self._portals.pop("", None)
            self._record(_statement("query", _cut_text(raw, self._text_ceiling)))
        elif kind == _PARSE:
            name, start = _name(raw)
            text = _cut_text(raw[start:], self._text_ceiling) if start <= len(raw) else ""
            _remember(self._statements, name, text)
            self._record(_statement("parse", text, name or None))
        elif kind == _BIND:
            portal, start = _name(raw)
            statement, _ = _name(raw, start)
            _remember(self._portals, portal, statement)
        elif kind == _EXECUTE:
            portal, _ = _name(raw)
            bound = self._portals.get(portal)
            text = self._statements.get(bound, "") if bound is not None else ""
            self._record(_statement("execute", text, bound or None))
        elif kind == _CLOSE:
            name, _ = _name(raw, 1)
            (self._statements if raw[0] == 0x53 else self._portals).pop(name, None)
        elif kind == _FUNCTION and len(raw) == 4:
            oid = (raw[0] << 24) | (raw[1] << 16) | (raw[2] << 8) | raw[3]
            self._record(_statement("function", f"function oid {oid}"))

    def _record(self, statement: Statement) -> None:
        if len(self._pending) < self._pending_ceiling:
            self._pending.append(statement)
        else:
            self.dropped += 1
