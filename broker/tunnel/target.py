"""The broker's end of a channel, compiled with the tunnel's hot path: relay, or login then tap.

``TargetChannel`` is what ``protocol.BrokerChannel`` (and so every broker channel) builds on. A
``tcp`` channel relays as ``shared.mux.Channel`` does. A channel the broker logs in for
(``protocol.WireChannel``) first hands every byte to its login machine (``login_running``:
``client_login_bytes``, ``target_login_bytes``), then relays with a statement tap on the client's
bytes: each chunk goes through the tap, and the statements it found to the statement log
(``hand_off``) before the chunk is forwarded; a malformed stream goes to ``tap_failed`` and
nothing of it is forwarded. The hand-off goes straight to the log's compiled side
(``audit.turn.AddSide``, set by the subclass as ``log_side`` once logged in), or, without one,
to ``statements_tapped``.

Why here and compiled (``setup.py``): this runs once per message. With the tap, the relay and
this class and the log's side compiled, a logged-in PostgreSQL channel runs no Python per message
(docs/tunnel.md). The other kinds' taps are Python, called from here.
"""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from access.broker.audit.turn import AddSide
from access.broker.wire.base import Statement, Tap, WireError
from access.broker.wire.pgtap import PostgresTap
from access.shared.mux import Channel, MuxSession

__all__ = ["TargetChannel"]


@mypyc_attr(allow_interpreted_subclasses=True)
class TargetChannel(Channel):
    """A channel to a target: its TCP peer is the target, its session the CLI's WebSocket."""

    def __init__(self, session: MuxSession, channel_id: int) -> None:
        super().__init__(session, channel_id)
        self.login_running = False  # a login machine takes every byte, both ways
        self.pg_tap: PostgresTap | None = None  # PostgreSQL's tap (compiled: called natively)
        self.other_tap: Tap | None = None  # another kind's tap
        self.statements = 0  # statements the tap found, handed off
        self.log_side: AddSide | None = None  # the statement log's side, once logged in
        self.log_ids: tuple[str, str, str, str] = ("", "", "", "")  # connection, grant, service, actor

    def set_tap(self, tap: Tap | None) -> None:
        """The tap the client's bytes go through once the login is done."""
        if isinstance(tap, PostgresTap):
            self.pg_tap, self.other_tap = tap, None
        else:
            self.pg_tap, self.other_tap = None, tap

    @property
    def tap(self) -> Tap | None:
        pg = self.pg_tap
        return pg if pg is not None else self.other_tap

    # -- target -> client --------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.login_running:
            self.target_login_bytes(data)
        else:
            super().data_received(data)

    # -- client -> target --------------------------------------------------------------------

    def deliver(self, data: bytes) -> None:
        if self.login_running:
            self.client_login_bytes(data)
            return
        pg = self.pg_tap
        if pg is not None:  # ``tap_client``, inlined: a method call here is a Python one
            try:
                pg.feed(data)
            except WireError as exc:
                self.tap_failed(exc)
                return
            if pg.waiting and not self.hand_off(pg.take()):
                return
        elif self.other_tap is not None and not self.tap_client(data):
            return
        super().deliver(data)

    def tap_client(self, data: bytes) -> bool:
        """Whether ``data`` may go on to the target: the tap saw it (if there is one) and its
        statements were handed off."""
        pg = self.pg_tap
        if pg is not None:
            try:
                pg.feed(data)
            except WireError as exc:
                self.tap_failed(exc)
                return False
            if not pg.waiting:
                return True
            return self.hand_off(pg.take())
        other = self.other_tap
        if other is None:
            return True
        try:
            other.client_bytes(data)
        except WireError as exc:
            self.tap_failed(exc)
            return False
        batch = other.take()
        return not batch or self.hand_off(batch)

    def hand_off(self, batch: list[Statement]) -> bool:
        """The statements of one client chunk, before it is forwarded; False: it is not (the
        log refused them, and the channel is ending)."""
        self.statements += len(batch)
        side = self.log_side
        if side is None:
            return self.statements_tapped(batch)
        connection_id, grant_id, service, actor = self.log_ids
        if side.add(connection_id, grant_id, service, actor, batch):
            return True
        self.statements_refused()
        return False

    # -- for subclasses ----------------------------------------------------------------------

    def target_login_bytes(self, data: bytes) -> None:
        """Bytes from the target while ``login_running``."""

    def client_login_bytes(self, data: bytes) -> None:
        """DATA from the client while ``login_running``."""

    def statements_tapped(self, batch: list[Statement]) -> bool:
        """Without ``log_side``: the statements of one client chunk, before it is forwarded;
        False: it is not."""
        return True

    def statements_refused(self) -> None:
        """The statement log refused a chunk's statements: end the channel (fail closed)."""
        self.end("refused", flush=False)

    def tap_failed(self, exc: WireError) -> None:
        """The tap found the client's stream malformed: the chunk is not forwarded."""
        self.end("refused", flush=False)
