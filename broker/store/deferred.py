"""Inserts held back to the end of a block of one transaction, then made together.

A batch of grant requests (``grants.batch``) appends two ledger entries and stores one grant per
request; in a ``DeferredInsert.block`` those rows are inserted when the block ends, as one
executemany per table, still in the same transaction, before it commits. Blocks of several
tables opened one inside the other on the same transaction are inserted together when the
outermost ends, the inner block's rows first: in one ``store.pipeline.Pipeline``, so one round
trip on PostgreSQL for all of them. Nothing inside a block may read those rows back from the
database, and no savepoint may be opened in it (its rollback could not take them back).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from access.broker.store.pipeline import Pipeline

__all__ = ["DeferredInsert"]

# The rows of every block ended inside a block still open, by the root transaction: the
# outermost block inserts them all when it ends (each table's in the order their blocks ended).
_held: weakref.WeakKeyDictionary[sa.RootTransaction, list[tuple[sa.Insert, list[dict[str, Any]]]]] = (
    weakref.WeakKeyDictionary()
)
_held_lock = threading.Lock()


class DeferredInsert:
    """One table's insert statement, made at once or at the end of the transaction's block."""

    def __init__(self, statement: sa.Insert) -> None:
        self.statement = statement
        self._rows: weakref.WeakKeyDictionary[sa.RootTransaction, list[dict[str, Any]]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    @contextmanager
    def block(self, conn: sa.Connection) -> Iterator[None]:
        """Rows given to ``insert`` on ``conn`` inside the block are inserted when it ends, or
        when the outermost block of another table open around it on the same transaction ends
        (nothing if it raises: the transaction must then fail).

        Raises:
            RuntimeError: no transaction, or inside a savepoint.
            sqlalchemy.exc.SQLAlchemyError: the rows could not be written.
        """
        trans = conn.get_transaction()
        if trans is None or conn.in_nested_transaction():
            raise RuntimeError("a deferred insert needs a transaction and no savepoint")
        rows: list[dict[str, Any]] = []
        with self._lock:
            self._rows[trans] = rows
        with _held_lock:
            outermost = trans not in _held
            if outermost:
                _held[trans] = []
        try:
            yield
        except BaseException:
            if outermost:
                with _held_lock:
                    _held.pop(trans, None)
            raise
        finally:
            with self._lock:
                self._rows.pop(trans, None)
        with _held_lock:
            held = _held.pop(trans) if outermost else _held[trans]
            held.append((self.statement, rows))
        if outermost:
            with Pipeline(conn) as pipeline:
                for statement, some in held:
                    pipeline.add_many(statement, some)

    def insert(self, conn: sa.Connection, row: dict[str, Any]) -> None:
        """Insert ``row`` now, or at the end of the block ``conn``'s transaction is in.

        Raises:
            RuntimeError: inside a savepoint in a block.
            sqlalchemy.exc.SQLAlchemyError: the row could not be written (now).
        """
        trans = conn.get_transaction()
        rows = None
        if trans is not None:
            with self._lock:
                rows = self._rows.get(trans)
        if rows is None:
            conn.execute(self.statement, row)
            return
        if conn.in_nested_transaction():
            raise RuntimeError("no deferred insert inside a savepoint")
        rows.append(row)
