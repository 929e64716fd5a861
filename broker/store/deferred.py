"""Inserts held back to the end of a block of one transaction, then made in one statement.

A batch of grant requests (``grants.batch``) appends two ledger entries and stores one grant per
request; in a ``DeferredInsert.block`` those rows are inserted together when the block ends, as
one executemany (one round trip on PostgreSQL, one pass through SQLAlchemy), still in the same
transaction, before it commits. Nothing inside the block may read those rows back from the
database, and no savepoint may be opened in it (its rollback could not take them back).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

__all__ = ["DeferredInsert"]


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
        """Rows given to ``insert`` on ``conn`` inside the block are inserted when it ends
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
        try:
            yield
        finally:
            with self._lock:
                self._rows.pop(trans, None)
        if rows:
            conn.execute(self.statement, rows[0] if len(rows) == 1 else rows)

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
