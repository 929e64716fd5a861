"""The audit ledger: append-only, hash-chained, with signed checkpoints.

Each entry's ``hash`` is SHA-256 over the RFC 8785 canonical JSON of
``{seq, at, actor, action, target, details, prev_hash}``; ``prev_hash`` is the previous entry's
hash (64 zeros for the first). Appends happen inside the caller's transaction, so the action
and its record commit together or not at all: if the ledger cannot be written, the action
fails (fail closed).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from access.broker.audit import canonical
from access.broker.audit.actions import WHILE_UNSAFE, Action
from access.broker.clock import Clock, utc
from access.broker.errors import LedgerUnsafe
from access.broker.observe.metrics import for_engine
from access.broker.store import audit as store
from access.broker.store.pipeline import Pipeline

if TYPE_CHECKING:
    from access.broker.runtime import Broker

__all__ = [
    "GENESIS",
    "LedgerEntry",
    "append",
    "append_canonical",
    "deferred",
    "entry_hash",
    "format_time",
    "record",
    "set_unsafe",
    "stored_hash",
    "take_chain",
    "unsafe",
]

GENESIS = "0" * 64
# Details must never carry secrets. Keys that look like they would are refused outright.
_SECRET_WORDS = ("password", "secret", "token", "credential", "private_key", "passfile")

# Engines whose ledger this process found unsafe (guards gone, or the tail fails verification):
# what was found. Set and cleared by the checkpoint loop (``audit.checkpoints``).
_unsafe: weakref.WeakKeyDictionary[sa.Engine, str] = weakref.WeakKeyDictionary()


def set_unsafe(engine: sa.Engine, why: str | None) -> None:
    """Mark the ledger behind ``engine`` unsafe (``why``: what is wrong), or safe again (None)."""
    if why is None:
        _unsafe.pop(engine, None)
    else:
        _unsafe[engine] = why


def unsafe(engine: sa.Engine) -> str | None:
    """What is wrong with the ledger behind ``engine``, as this process last found; None if nothing."""
    return _unsafe.get(engine)


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    at: datetime
    actor: str
    action: str
    target: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


def format_time(at: datetime) -> str:
    return utc(at).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_hash(
    *,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    target: str,
    details: Mapping[str, Any],
    prev_hash: str,
) -> str:
    """SHA-256 (hex) of the canonical JSON form of one entry."""
    return _digest(seq, format_time(at), actor, action, target, canonical.dumps(dict(details)), prev_hash)


def _digest(seq: int, at: str, actor: str, action: str, target: str, details: bytes, prev_hash: str) -> str:
    """SHA-256 (hex) of the canonical JSON of ``{seq, at, actor, action, target, details,
    prev_hash}``, given ``details`` already in canonical form (``append`` stores that text too,
    so a batch of statements is encoded once, not twice)."""
    digest = stored_hash(seq, at, actor, action, target, details.decode("utf-8"), prev_hash)
    if digest is not None:
        return digest
    # A string with no UTF-8 form (a lone surrogate): rfc8785 says what is wrong with it.
    head = canonical.dumps({"action": action, "actor": actor, "at": at})
    tail = canonical.dumps({"prev_hash": prev_hash, "seq": seq, "target": target})
    return hashlib.sha256(head[:-1] + b',"details":' + details + b"," + tail[1:]).hexdigest()


# The C string encoder: escapes exactly what RFC 8785 escapes, as RFC 8785 does (``canonical``).
_string = json.encoder.encode_basestring
_SEQ_LIMIT = 2**53 - 1
_FORM = '{"action":%s,"actor":%s,"at":%s,"details":%s,"prev_hash":%s,"seq":%d,"target":%s}'


def stored_hash(
    seq: int, at: str, actor: str, action: str, target: str, details: str, prev_hash: str
) -> str | None:
    """SHA-256 (hex) of an entry given ``at`` as ``format_time`` writes it and ``details`` as the
    ledger stores it (its canonical JSON text), hashed as it is; None when a string has no UTF-8
    form or ``seq`` is past JSON's exact integers (``_digest`` then goes through rfc8785).

    RFC 8785 sorts the members by name (action, actor, at, details, prev_hash, seq, target) and
    writes strings as the C encoder does; tests/broker/audit/test_ledger.py checks this against
    rfc8785 over the whole object. Since every string is escaped, the text is parsed back one way
    only: a hash that matches means each field, ``details`` included, is the one hashed.
    """
    if not 0 <= seq <= _SEQ_LIMIT:
        return None
    text = _FORM % (
        _string(action),
        _string(actor),
        _string(at),
        details,
        _string(prev_hash),
        seq,
        _string(target),
    )
    try:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()
    except UnicodeEncodeError:
        return None


def _check_details(details: Mapping[str, Any]) -> None:
    for key in details:
        lowered = key.lower()
        if any(word in lowered for word in _SECRET_WORDS) and not lowered.endswith(("_id", "_kind")):
            raise ValueError(f"audit details must not carry secrets (key {key!r})")


def append(
    conn: sa.Connection,
    clock: Clock,
    *,
    actor: str,
    action: Action,
    target: str,
    details: Mapping[str, Any] | None = None,
) -> LedgerEntry:
    """Append one entry inside the caller's transaction on ``conn`` and return it.

    ``action`` is one of ``audit.actions.Action``: the ledger records nothing else.

    Appenders are serialised by the database (PostgreSQL: a transaction-scoped advisory lock;
    SQLite: BEGIN IMMEDIATE), so concurrent processes extend one chain.

    While the ledger is unsafe (``set_unsafe``) only ends and refusals (``WHILE_UNSAFE``) are
    recorded: anything else fails, and with it the action that gives access (fail closed).

    Raises:
        ValueError: ``details`` has a key that looks like a secret.
        LedgerUnsafe: the ledger is unsafe and ``action`` is not an end or a refusal.
        sqlalchemy.exc.SQLAlchemyError: the ledger could not be written; the caller's
            transaction must then fail, and with it the action.
    """
    action = _allowed(conn, action)
    details = dict(details or {})
    _check_details(details)
    started = time.perf_counter()
    target = target[:200]
    seq, at, prev, digest = _chain(conn, clock, actor, action, target, canonical.dumps(details), started)
    return LedgerEntry(seq, at, actor, action.value, target, details, prev, digest)


def append_canonical(
    conn: sa.Connection, clock: Clock, *, actor: str, action: Action, target: str, details: str
) -> None:
    """``append`` for details its caller wrote as canonical JSON text already (RFC 8785: the
    statement log's batches, ``audit.turn.details_json``), with no key that looks like a secret:
    stored and hashed as they are, not built as objects and encoded again.

    Raises:
        LedgerUnsafe, sqlalchemy.exc.SQLAlchemyError: as ``append``.
        rfc8785.CanonicalizationError: a string in ``details`` has no UTF-8 form (a lone surrogate).
    """
    action = _allowed(conn, action)
    started = time.perf_counter()
    try:
        details_text = details.encode("utf-8")
    except UnicodeEncodeError:  # say what is wrong as rfc8785 does; nothing is written
        canonical.dumps(details)
        raise
    _chain(conn, clock, actor, action, target[:200], details_text, started)


def _allowed(conn: sa.Connection, action: Action) -> Action:
    """``action`` as an Action, if the ledger may record it now (see ``append``)."""
    action = Action(action)  # a plain string that is no action fails here, before anything is written
    why = unsafe(conn.engine)
    if why is not None and action not in WHILE_UNSAFE:
        raise LedgerUnsafe(
            f"the broker gives no new access while its audit ledger is unsafe: {why}",
            hint="operators: see the broker's log, run `access-broker audit verify` and "
            "`access-broker migrate`",
        )
    return action


def _chain(
    conn: sa.Connection,
    clock: Clock,
    actor: str,
    action: Action,
    target: str,
    details_text: bytes,
    started: float,
) -> tuple[int, datetime, str, str]:
    """Append one entry with ``details_text`` (canonical JSON) at the chain's head: (seq, at,
    prev_hash, hash)."""
    head = _own_head(conn)
    if head is None:
        store.lock_chain(conn)
        head = store.chain_head(conn)
    seq = 1 if head is None else head[0] + 1
    prev = GENESIS if head is None else head[1]
    at = clock.now()
    digest = _digest(seq, format_time(at), actor, action.value, target, details_text, prev)
    row = store.entry_row(
        seq=seq,
        at=at,
        actor=actor,
        action=action.value,
        target=target,
        details_json=details_text.decode("utf-8"),  # canonical: sorted, no spaces, UTF-8
        prev_hash=prev,
        digest=digest,
    )
    store.ENTRIES.insert(conn, row)
    _remember_head(conn, seq, digest)
    metrics = for_engine(conn.engine)
    if metrics is not None:  # admin commands keep no metrics
        metrics.ledger_append_seconds.observe(time.perf_counter() - started)
    return seq, at, prev, digest


# The entry each open transaction appended last, by its root transaction: a second append in the
# same transaction (a grant request makes two or three) already holds the chain's lock, so no
# other appender can have moved the head since, and needs neither the lock nor the head's read
# again. Not inside a savepoint (its rollback would take the remembered entry back): there the
# memo is forgotten and the head read from the database.
_heads: weakref.WeakKeyDictionary[sa.RootTransaction, tuple[int, str]] = weakref.WeakKeyDictionary()
_heads_lock = threading.Lock()


def _own_head(conn: sa.Connection) -> tuple[int, str] | None:
    """The head this transaction appended last, if it may be trusted without a read; else None."""
    trans = conn.get_transaction()
    if trans is None or not trans.is_active:
        return None
    with _heads_lock:
        if conn.in_nested_transaction():
            _heads.pop(trans, None)
            return None
        return _heads.get(trans)


def _remember_head(conn: sa.Connection, seq: int, digest: str) -> None:
    trans = conn.get_transaction()
    if trans is None or conn.in_nested_transaction():
        return
    with _heads_lock:
        _heads[trans] = (seq, digest)


def take_chain(pipeline: Pipeline) -> Callable[[], None]:
    """The chain's lock and its head for ``pipeline``'s transaction, queued on it after what is
    queued already (the locks' holds: the ledger's lock is always taken last). Call what it
    returns once the pipeline has run: the transaction then holds the chain, and its appends
    start at that head with no lock or read of their own (as a transaction's second append does).

    Raises (the pipeline, when it runs):
        sqlalchemy.exc.SQLAlchemyError: the database failed; the caller's transaction must fail.
    """
    head = store.lock_chain_and_head(pipeline)
    conn = pipeline.conn

    def taken() -> None:
        found = head()
        seq, digest = (0, GENESIS) if found is None else found  # the first append is seq 1 after GENESIS
        _remember_head(conn, seq, digest)

    return taken


@contextmanager
def deferred(conn: sa.Connection) -> Iterator[None]:
    """Appends on ``conn`` inside the block are chained at once (seq, hash and head as
    ``append`` gives them) and inserted together when the block ends, in one statement (one
    round trip for a batch of grant requests: ``grants.batch``), still in the caller's
    transaction, before it commits. If the block raises, nothing is inserted (the transaction
    must fail). Inside it nothing may read the ledger from the database or open a savepoint.

    Raises:
        RuntimeError: no transaction, or inside a savepoint.
        sqlalchemy.exc.SQLAlchemyError: the entries could not be written; the transaction must fail.
    """
    with store.ENTRIES.block(conn):
        yield


def record(
    broker: Broker, *, actor: str, action: Action, target: str, details: Mapping[str, Any] | None = None
) -> LedgerEntry:
    """Append one entry in a transaction of its own (for entries that go with no other change).

    Raises:
        ValueError: ``details`` has a key that looks like a secret.
        Unavailable: the database could not be reached (see ``Broker.transaction``).
    """
    with broker.transaction() as conn:
        return append(conn, broker.clock, actor=actor, action=action, target=target, details=details)
