"""The statement log's event-loop side, compiled with the tunnel's hot path (``setup.py``).

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
  made once.
- ``hand_over``: the turn's statements to the writer's queue, with their time and journal
  generation.

Both threads use it: the event loop adds and counts ``added``; the writer (one at a time, under the
statement log's lock) counts ``done``. Each counter has one writing thread, and the GIL orders
them.
"""

from __future__ import annotations

import json.encoder
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Final

from access.broker.wire.base import Statement

__all__ = ["BATCH_STATEMENTS", "ROW_OVERHEAD", "AddSide", "Added", "Queued"]

BATCH_STATEMENTS: Final = 500  # statements in one ledger entry at most
ROW_OVERHEAD: Final = 96  # bytes counted per queued statement besides its text (numbers, time, kind, name)

# One add of a turn: (connection, grant, service, actor, number of the first statement, statements).
Added = tuple[str, str, str, str, int, Sequence[Statement]]
# What the writer's queue takes (``audit.statements._Item``): an add with the broker's time and
# the journal generation it is in.
Queued = tuple[str, str, str, str, int, datetime | None, Sequence[Statement], int]

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
        """The journal lines of ``turn``'s adds, stamped ``at_us`` (microseconds since the epoch)."""
        tail = "," + str(at_us) + ",["
        prefixes = self.prefixes
        lines: list[str] = []
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
            parts: list[str] = []
            for statement in statements:
                name = statement.name
                parts.append(
                    "["
                    + _quote(statement.kind)
                    + ","
                    + _quote(statement.text)
                    + ","
                    + ("null" if name is None else _quote(name))
                    + "]"
                )
            lines.append(prefix + str(first) + tail + ",".join(parts) + "]]\n")
        return "".join(lines)

    def hand_over(
        self, turn: list[Added], put: Callable[[Queued], None], at: datetime, generation: int
    ) -> None:
        """``turn``'s adds to the writer's queue (``put``), with their time and journal generation."""
        for connection_id, grant_id, service, actor, first, statements in turn:
            put((connection_id, grant_id, service, actor, first, at, statements, generation))
