"""The statement log's per-statement parts, compiled with the tunnel's hot path (``setup.py``):
its event-loop side and its writer's rows.

A logged-in channel hands every client chunk's statements to the statement log before it forwards
the chunk (``audit.statements``). That hand-off runs once per chunk on the event loop, and as
Python it cost more than the relay itself: the ceiling check, the numbers, the turn's journal line
(docs/tunnel.md). ``AddSide`` is that part, strictly typed so mypyc compiles it:

- ``add``: the ceiling (statements and bytes; what the writer has written is ``done``), the
  connection's numbers, the turn's list; it calls ``schedule`` for the first add of a loop turn
  and ``wake`` when a connection passes a full batch.
- ``journal_text``: the turn's journal lines, ``["S",connection,grant,service,actor,first,at_us,
  [[kind,text,name],...]]``, exactly as ``json.dumps(..., ensure_ascii=False,
  separators=(",", ":"))`` writes them, built from quoted strings with each connection's prefix
  made once; on the way, each statement's ledger piece (its ``kind,text[,name]`` as RFC 8785
  writes them: the same quoted strings, made valid UTF-8 where they are not) and size.
- ``hand_over``: the turn's pieces to the writer's queue, with their time and journal
  generation (strings, ints and tuples of them: nothing the cyclic collector keeps tracking).
- ``end_turn``: once per loop turn with statements (``loop.call_soon``, straight from ``add``):
  the broker's time (the system clock read here, in µs), ``journal_text``, the journal's append,
  ``hand_over``; no Python of the statement log's runs per turn but the journal's append. A named
  statement's quoted pieces are kept per name (``named``): a prepared statement's executions
  repeat them.

The writer's side: ``take_queue`` moves the queue into per-connection ``Rows``, and
``statements_json``/``details_json`` put a ``connection.statements`` entry's details together as
canonical JSON text from the pieces, so nothing is built as objects and encoded again
(``tests/broker/audit/test_statements.py`` checks each entry's text is its own RFC 8785 form).

Both threads use ``AddSide``: the event loop adds and counts ``added``; the writer (one at a time, under the
statement log's lock) counts ``done``. Each counter has one writing thread, and the GIL orders
them.
"""

from __future__ import annotations

import json.encoder
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

from access.broker.wire.base import Statement

__all__ = [
    "BATCH_STATEMENTS",
    "ROW_OVERHEAD",
    "AddSide",
    "Added",
    "Queued",
    "Rows",
    "details_json",
    "pieces_of",
    "statements_json",
    "take_queue",
]

BATCH_STATEMENTS: Final = 500  # statements in one ledger entry at most
NAMED_KEPT: Final = 256  # named statements whose quoted pieces are kept (then all are forgotten)
ROW_OVERHEAD: Final = 96  # bytes counted per queued statement besides its text (numbers, time, kind, name)

# One add of a turn: (connection, grant, service, actor, number of the first statement, statements).
Added = tuple[str, str, str, str, int, Sequence[Statement]]
# What the writer's queue takes (``audit.statements._Item``): an add with the broker's time (µs
# since the epoch), its statements' ledger pieces and sizes, and the journal generation it is in.
# Only strings, ints and tuples of them: the cyclic collector untracks such a tuple the first time
# it sees it, so what waits for the writer (a second, or longer while the database is down) never
# reaches the old generations, whose collections stop the event loop.
Queued = tuple[str, str, str, str, int, int, tuple[str, ...], tuple[int, ...], int]

# JSON's quoting of a string without ASCII escaping (the C one where there is one).
_quote: Final[Callable[[str], str]] = json.encoder.encode_basestring


class AddSide:
    """The statement log's counters, numbers and the current loop turn's adds."""

    def __init__(self, limit: int, max_bytes: int) -> None:
        self.limit = limit  # statements queued and not written, at most
        self.max_bytes = max_bytes  # their bytes (text plus ROW_OVERHEAD each), at most
        self.added = 0  # the event loop's: statements (and bytes) queued since the start
        self.added_bytes = 0
        self.done = 0  # the writer's: statements (and bytes) written since the start
        self.done_bytes = 0
        self.refused = 0  # statements ``add`` refused, since the start
        self.shut = False  # the journal cannot be written: every add is refused (fail closed)
        self.next_n: dict[str, int] = {}  # the next statement number per connection
        self.prefixes: dict[str, str] = {}  # the start of each connection's journal records
        self.turn: list[Added] = []
        self.schedule: Callable[[], object] | None = None  # called for the first add of a turn
        self.wake: Callable[[], None] | None = None  # called when a connection passes a full batch
        self.pieces: list[tuple[tuple[str, ...], tuple[int, ...]]] = []  # journal_text's, for hand_over
        self.kinds: dict[str, str] = {}  # each (ASCII) kind quoted, with its comma: a tap has a few
        self.named: dict[str, tuple[str, str, str, str]] = {}  # quote_named's, per statement name
        # ``end_turn``'s (set by the statement log): the journal's append (returns the generation
        # written to), the writer's queue, what to call when the journal fails, the broker's
        # clock in µs since the epoch (None: the system's, read here), and a rotation's marker.
        self.append: Callable[[str], int] | None = None
        self.put: Callable[[Queued], None] | None = None
        self.failed: Callable[[Exception], None] | None = None
        self.now_us: Callable[[], int] | None = None
        self.seal: tuple[str, ...] = ()
        self.generation = 0  # the journal generation of the last turn written

    def add(
        self,
        connection_id: str,
        grant_id: str,
        service: str,
        actor: str,
        statements: Sequence[Statement],
    ) -> bool:
        """Queue ``statements`` of one connection for this turn; False, having queued none, when
        they do not fit under the ceiling or the journal has failed (the channel must not forward
        the bytes that carried them)."""
        count = len(statements)
        if count == 0:
            return True
        size = count * ROW_OVERHEAD
        for statement in statements:
            size += len(statement.text)
        if (
            self.added - self.done + count > self.limit
            or self.added_bytes - self.done_bytes + size > self.max_bytes
            or self.shut
        ):
            self.refused += count
            return False
        next_n = self.next_n
        first = next_n.get(connection_id, 0)
        next_n[connection_id] = first + count
        self.added_bytes += size
        self.added += count
        turn = self.turn
        turn.append((connection_id, grant_id, service, actor, first, statements))
        if len(turn) == 1:
            schedule = self.schedule
            if schedule is not None:
                schedule()
        # Wake the writer when this connection passes another full batch (once, not on every add
        # after it: while the database is down the queue only grows).
        if first // BATCH_STATEMENTS != (first + count) // BATCH_STATEMENTS:
            wake = self.wake
            if wake is not None:
                wake()
        return True

    def forget(self, connection_id: str) -> bool:
        """A channel ended: forget its numbers; whether it ever had a statement."""
        self.prefixes.pop(connection_id, None)
        return self.next_n.pop(connection_id, None) is not None

    def take(self) -> list[Added]:
        """This turn's adds (the next add starts a new turn)."""
        turn = self.turn
        self.turn = []
        return turn

    def journal_text(self, turn: list[Added], at_us: int) -> str:
        """The journal lines of ``turn``'s adds, stamped ``at_us`` (microseconds since the epoch).

        On the way it keeps, for ``hand_over``, each add's ledger pieces (``bodies``: each
        statement's ``kind,text[,name]`` in canonical JSON, the quoted strings the journal line
        is made of) and each statement's size against the ceiling: the writer builds the
        ledger entry's text from them (``statements_json``) instead of encoding the batch again.
        """
        tail = "," + str(at_us) + ",["
        prefixes = self.prefixes
        kinds = self.kinds
        named = self.named
        out: list[str] = []
        pieces: list[tuple[tuple[str, ...], tuple[int, ...]]] = []
        for connection_id, grant_id, service, actor, first, statements in turn:
            prefix = prefixes.get(connection_id)
            if prefix is None:
                prefix = (
                    '["S",'
                    + _quote(connection_id)
                    + ","
                    + _quote(grant_id)
                    + ","
                    + _quote(service)
                    + ","
                    + _quote(actor)
                    + ","
                )
                prefixes[connection_id] = prefix
            out.append(prefix)
            out.append(str(first))
            out.append(tail)
            bodies: list[str] = []
            sizes: list[int] = []
            opening = "["
            for statement in statements:
                kind, text, name = statement.kind, statement.text, statement.name
                sizes.append(len(text) + ROW_OVERHEAD)
                if name is not None:
                    # A prepared statement's executions repeat its kind, text and name: quoted once.
                    known = named.get(name)
                    if known is None or known[0] != kind or known[1] != text:
                        known = self.quote_named(kind, text, name)
                    out.append(opening)
                    out.append(known[2])
                    bodies.append(known[3])
                    opening = ",["
                    continue
                quoted_kind = kinds.get(kind)
                if quoted_kind is None:
                    quoted_kind = _quote(kind) + ","
                    if kind.isascii() and len(kinds) < 64:
                        kinds[kind] = quoted_kind
                body = quoted_kind + _quote(text)
                out.append(opening)
                out.append(body)
                out.append(",null]")
                opening = ",["
                if not (text.isascii() and kind in kinds):
                    body = _valid_body(kind, text, None)  # the journal keeps the text as it came
                bodies.append(body)
            out.append("]]\n")
            pieces.append((tuple(bodies), tuple(sizes)))  # tuples of str and int: see ``Queued``
        self.pieces = pieces
        return "".join(out)

    def quote_named(self, kind: str, text: str, name: str) -> tuple[str, str, str, str]:
        """A named statement's (kind, text, its journal item less the opening bracket, its
        ledger piece), kept for the next statement of that name (``named``, bounded)."""
        body = _quote(kind) + "," + _quote(text) + "," + _quote(name)
        item = body + "]"
        if not (kind.isascii() and text.isascii() and name.isascii()):
            body = _valid_body(kind, text, name)
        known = (kind, text, item, body)
        named = self.named
        if len(named) >= NAMED_KEPT:
            named.clear()
        named[name] = known
        return known

    def end_turn(self) -> None:
        """Write this turn's statements to the journal, then hand them to the writer (once per
        loop turn with statements; the statement log's ``_end_turn``).

        They were forwarded already (the journal write closes the turn that relayed them): if
        the journal cannot be written they still go to the writer, and ``add`` refuses from now
        on (``shut``), so channels stop (fail closed) rather than relay what could be lost.
        """
        turn = self.turn
        if not turn:
            return
        self.turn = []
        now_us = self.now_us
        at_us = time.time_ns() // 1000 if now_us is None else now_us()
        generation = self.generation
        append = self.append
        put = self.put
        assert append is not None and put is not None
        try:
            generation = append(self.journal_text(turn, at_us))
        except Exception as exc:  # the journal's error, or anything else: fail closed either way
            self.shut = True
            failed = self.failed
            if failed is not None:
                failed(exc)
        if generation != self.generation:
            if self.generation:
                put(("", "", "", "", 0, -1, self.seal, (), self.generation))
            self.generation = generation
        self.hand_over(turn, put, at_us, generation)

    def hand_over(
        self, turn: list[Added], put: Callable[[Queued], None], at_us: int, generation: int
    ) -> None:
        """``turn``'s adds to the writer's queue (``put``), with their time and journal generation
        and the ledger pieces ``journal_text`` made of them (made now if it did not run)."""
        pieces = self.pieces
        self.pieces = []
        if len(pieces) != len(turn):
            pieces = [pieces_of(add[5]) for add in turn]
        for i in range(len(turn)):  # (not zip(..., strict=True): a keyword call, through the interpreter)
            connection_id, grant_id, service, actor, first, _statements = turn[i]
            bodies, sizes = pieces[i]
            put((connection_id, grant_id, service, actor, first, at_us, bodies, sizes, generation))


def _utf8(text: str) -> str:
    """``text`` with anything that has no UTF-8 form (a lone surrogate) replaced."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _valid_body(kind: str, text: str, name: str | None) -> str:
    """A statement's ledger piece, its strings made valid UTF-8 first: a lone surrogate would
    make the entry unhashable (RFC 8785 has no form for it), and the batch unwritable for ever."""
    body = _quote(_utf8(kind)) + "," + _quote(_utf8(text))
    return body if name is None else body + "," + _quote(_utf8(name))


def pieces_of(statements: Sequence[Statement]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The ledger pieces and sizes of ``statements`` (as ``journal_text`` keeps them)."""
    bodies: list[str] = []
    sizes: list[int] = []
    for statement in statements:
        bodies.append(_valid_body(statement.kind, statement.text, statement.name))
        sizes.append(len(statement.text) + ROW_OVERHEAD)
    return tuple(bodies), tuple(sizes)


def statements_json(bodies: list[str], stamps: list[int], start: int, end: int) -> str:
    """The ``statements`` of a ledger entry for rows ``start:end``, in canonical JSON (RFC 8785):
    ``[[µs after the first row's time, kind, text(, name)], ...]``, from the pieces the event
    loop made (``journal_text``; valid UTF-8, quoted as RFC 8785 quotes) and each row's time in
    microseconds since the epoch."""
    first = stamps[start]
    last = first
    head = "[[0,"
    parts: list[str] = []
    for i in range(start, end):
        stamp = stamps[i]
        if stamp != last:  # the rows of one loop turn share one time
            last = stamp
            head = "],[" + str(stamp - first) + ","
        parts.append(head)
        parts.append(bodies[i])
        if i == start:
            head = "],[0,"
    parts.append("]]")
    return "".join(parts)


def details_json(
    at: str, connection_id: str, count: int, first: int, grant_id: str, service: str, statements: str
) -> str:
    """A ``connection.statements`` entry's details in canonical JSON (RFC 8785: members sorted by
    name, no spaces), given ``statements`` in that form already (``statements_json``)."""
    return (
        '{"at":'
        + _quote(at)
        + ',"connection":'
        + _quote(connection_id)
        + ',"count":'
        + str(count)
        + ',"first":'
        + str(first)
        + ',"grant":'
        + _quote(grant_id)
        + ',"service":'
        + _quote(service)
        + ',"statements":'
        + statements
        + "}"
    )


# -- the writer's side: its rows per connection ---------------------------------------------------


class Rows:
    """One connection's statements on the writer's side, not yet in the ledger: one row per
    statement, in three lists (each one's ledger piece, its size against the ceiling and its
    time in µs since the epoch, one int object per loop turn)."""

    def __init__(self, connection_id: str, grant_id: str, service: str, actor: str) -> None:
        self.connection_id = connection_id
        self.grant_id = grant_id
        self.service = service
        self.actor = actor
        self.bodies: list[str] = []
        self.sizes: list[int] = []
        self.stamps: list[int] = []
        self.start = 0  # rows[start:] wait to be written (the ones before it are, and go in bulk)
        self.first_n = 0  # the number of rows[start]
        self.closed = False
        self.generations: deque[list[int]] = deque()  # [generation, rows] of rows[start:]

    def written(self, count: int, outstanding: dict[int, int]) -> None:
        """``count`` more rows are in the ledger (``outstanding`` per journal generation)."""
        left = count
        generations = self.generations
        while left:
            head = generations[0]
            step = min(left, head[1])
            head[1] -= step
            outstanding[head[0]] -= step
            left -= step
            if not head[1]:
                generations.popleft()
        self.start += count
        self.first_n += count
        if self.start == len(self.bodies):
            self.bodies.clear()
            self.sizes.clear()
            self.stamps.clear()
            self.start = 0
        elif self.start > 4096 and 2 * self.start > len(self.bodies):
            del self.bodies[: self.start]
            del self.sizes[: self.start]
            del self.stamps[: self.start]
            self.start = 0

    @property
    def waiting(self) -> int:
        return len(self.bodies) - self.start


def take_queue(
    queue: deque[Queued],
    connections: dict[str, Rows],
    outstanding: dict[int, int],
    sealed: set[int],
    close: tuple[str, ...],
    seal: tuple[str, ...],
) -> None:
    """The writer: move what the add side queued into the per-connection rows. ``close`` and
    ``seal`` are the pieces (compared by identity) of a channel's end and a journal's rotation."""
    while queue:
        connection_id, grant_id, service, actor, first, at_us, bodies, sizes, generation = queue.popleft()
        if bodies is seal:
            sealed.add(generation)
            continue
        conn = connections.get(connection_id)
        if bodies is close:
            if conn is not None:
                if conn.waiting:
                    conn.closed = True
                else:
                    del connections[connection_id]
            continue
        if conn is None:
            conn = Rows(connection_id, grant_id, service, actor)
            connections[connection_id] = conn
            conn.first_n = first
        conn.closed = False
        count = len(bodies)
        conn.bodies.extend(bodies)
        conn.sizes.extend(sizes)
        stamps = conn.stamps
        for _ in range(count):
            stamps.append(at_us)  # one time per turn: the same object
        outstanding[generation] = outstanding.get(generation, 0) + count
        generations = conn.generations
        if generations and generations[-1][0] == generation:
            generations[-1][1] += count
        else:
            generations.append([generation, count])
