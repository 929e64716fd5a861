"""Statements sent to PostgreSQL together and answered in one round trip (psycopg's pipeline mode).

A batch of grant requests (``grants.batch``) runs statements that each need the one before to
have run in the database, but not its answer in Python: hold the locks' targets, read the locks
in force, take the ledger's lock, read its head; then insert the batch's ledger entries and its
grants. Sent one by one, each is a round trip the writer waits for; in a ``Pipeline`` they go
in one message and their answers come back in one, in order, and nothing changes in the
database: PostgreSQL runs them one after the other, each under READ COMMITTED with a snapshot
of its own taken when it starts, so a read queued after a lock still reads after the lock is
held (what one statement doing both could not promise).

On SQLite (and on any other connection that is not psycopg's) each statement runs through
SQLAlchemy, in order, when the block ends: the same answers, one call each.

Statements are SQLAlchemy Core statements with named bound parameters (no expanding ``IN``):
on PostgreSQL each is compiled once, its parameters and result columns converted by their
column types (``UTCDateTime``'s aware UTC times) as SQLAlchemy would. A database error is
raised as SQLAlchemy raises it (``sqlalchemy.exc.DBAPIError`` and its kinds), a connection found
dead is invalidated, so ``Broker.transaction`` tells the database being down from a refusal.
"""

from __future__ import annotations

import collections
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import sqlalchemy as sa

__all__ = ["Answer", "Pipeline", "Statement"]

# What may be pipelined: a query, an insert, a statement written as text (with named parameters).
Statement = sa.Select[Any] | sa.Insert | sa.TextClause


@dataclass
class Answer:
    """What one queued statement answered (after the pipeline has run)."""

    _rows: list[Any] | None = None

    @property
    def rows(self) -> list[Any]:
        """The rows, converted by their columns' types: tuples whose fields are also attributes
        named after the columns, as SQLAlchemy's rows.

        Raises:
            RuntimeError: the pipeline has not run (its block has not ended, or it raised).
        """
        if self._rows is None:
            raise RuntimeError("a pipelined statement's answer is read once its pipeline has run")
        return self._rows


@dataclass(frozen=True)
class _Compiled:
    """One statement compiled for psycopg's raw cursor: its SQL as ``pieces`` between its
    parameters (``$1``, ``$2``, ... once numbered: no query conversion per call, whatever its
    length), the parameters' ``names`` in order, and how to convert parameters and rows."""

    pieces: tuple[str, ...]  # len(names) + 1 pieces of SQL text
    names: tuple[str, ...]
    defaults: Mapping[str, Any]
    binds: Mapping[str, Callable[[Any], Any]]
    results: tuple[Callable[[Any], Any] | None, ...]
    make: Callable[..., tuple[Any, ...]]  # a row from its fields

    @functools.cached_property
    def sql(self) -> str:
        return _numbered(self.pieces, 0)

    def params(self, given: Mapping[str, Any]) -> list[Any]:
        values = {**self.defaults, **given} if self.defaults else given
        binds = self.binds
        return [binds[name](values[name]) if name in binds else values[name] for name in self.names]

    def row(self, raw: Sequence[Any]) -> tuple[Any, ...]:
        if not any(self.results):
            return self.make(*raw)
        return self.make(
            *(value if f is None else f(value) for f, value in zip(self.results, raw, strict=True))
        )

    def many(self, count: int) -> str:
        """An insert's SQL for ``count`` rows in one statement (``VALUES (...), (...)``)."""
        return _many(self.pieces, count)


def _numbered(pieces: Sequence[str], first: int) -> str:
    """``pieces`` joined by parameters ``$first+1``, ``$first+2``, ..."""
    out = [pieces[0]]
    for i, piece in enumerate(pieces[1:], start=first + 1):
        out.append(f"${i}")
        out.append(piece)
    return "".join(out)


@functools.lru_cache(maxsize=256)
def _many(pieces: tuple[str, ...], count: int) -> str:
    head, values, first = pieces[0].rpartition(" VALUES ")
    if not values or not first.startswith("(") or not pieces[-1].endswith(")"):
        raise ValueError(f"not a one-row insert: {_numbered(pieces, 0)}")
    group = (first, *pieces[1:])  # one row's "(...)" with its parameters
    each = len(pieces) - 1
    return head + values + ", ".join(_numbered(group, each * i) for i in range(count))


# A bound parameter as SQLAlchemy writes it for psycopg (``pyformat``; a literal % is ``%%``).
_PARAM = re.compile(r"%\((\w+)\)s")


def _plain(*values: Any) -> tuple[Any, ...]:
    return values


@functools.lru_cache(maxsize=256)
def _compiled(statement: Statement, dialect: sa.Dialect, keys: tuple[str, ...] | None) -> _Compiled:
    compiled = statement.compile(dialect=dialect, column_keys=list(keys) if keys is not None else None)
    if compiled.escaped_bind_names:  # names the SQL spells otherwise: not worth supporting here
        raise ValueError(f"no pipelining of a statement with escaped parameter names: {compiled.string}")
    split = _PARAM.split(compiled.string)  # text, name, text, name, ..., text
    pieces, names = tuple(text.replace("%%", "%") for text in split[::2]), tuple(split[1::2])
    binds: dict[str, Callable[[Any], Any]] = {}
    for name, bind in compiled.binds.items():
        process = bind.type.bind_processor(dialect)
        if process is not None:
            binds[name] = process
    # A parameter with a value of its own (a LIMIT's): the caller gives the others.
    defaults = {name: bind.effective_value for name, bind in compiled.binds.items() if not bind.required}
    columns: Sequence[Any] = getattr(statement, "selected_columns", ())
    results = tuple(column.type.result_processor(dialect, None) for column in columns)
    make: Callable[..., tuple[Any, ...]] = (
        collections.namedtuple("Row", [column.key for column in columns], rename=True) if columns else _plain
    )
    return _Compiled(pieces, names, defaults, binds, results, make)


# Rows in one insert statement at most: PostgreSQL takes up to 65,535 parameters in one.
_MANY_ROWS = 1000


@dataclass
class _Queued:
    statement: Statement
    params: list[dict[str, Any]]  # one set for a statement, several for an insert of many rows
    answer: Answer = field(default_factory=Answer)


class Pipeline:
    """Statements queued in a ``with`` block and run, in order, when it ends (see the module's
    text): on PostgreSQL in one round trip.

    Raises (when the block ends):
        sqlalchemy.exc.SQLAlchemyError: a statement failed (those after it did not run); the
            caller's transaction must fail.
    """

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        self._queued: list[_Queued] = []

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, kind: object, _exc: object, _tb: object) -> None:
        if kind is None and self._queued:
            self.run()

    def add(self, statement: Statement, params: Mapping[str, Any] | None = None) -> Answer:
        """Queue ``statement`` with ``params``: its ``Answer`` has its rows once the block ends."""
        queued = _Queued(statement, [dict(params or {})])
        self._queued.append(queued)
        return queued.answer

    def add_many(self, statement: sa.Insert, rows: Sequence[Mapping[str, Any]]) -> None:
        """Queue an insert of ``rows`` (dicts with the same keys): on PostgreSQL one statement
        (``INSERT ... VALUES (...), (...)``), on SQLite one executemany."""
        if rows:
            self._queued.append(_Queued(statement, [dict(row) for row in rows]))

    def run(self) -> None:
        """Run what is queued (``__exit__`` does). Raises: as the class says."""
        queued, self._queued = self._queued, []
        dbapi: Any = self.conn.connection.dbapi_connection
        if not isinstance(dbapi, psycopg.Connection):
            for one in queued:
                result = self.conn.execute(
                    one.statement, one.params[0] if len(one.params) == 1 else one.params
                )
                one.answer._rows = list(result) if result.returns_rows else []
            return
        self._run_pipelined(dbapi, queued)

    def _run_pipelined(self, dbapi: psycopg.Connection[Any], queued: list[_Queued]) -> None:
        dialect = self.conn.dialect
        work: list[tuple[_Queued, _Compiled, str, list[Any]]] = []
        for one in queued:
            if isinstance(one.statement, sa.Insert):
                compiled = _compiled(one.statement, dialect, tuple(one.params[0]))
                for start in range(0, len(one.params), _MANY_ROWS):
                    rows = one.params[start : start + _MANY_ROWS]
                    params = [value for row in rows for value in compiled.params(row)]
                    work.append((one, compiled, compiled.many(len(rows)), params))
            else:
                compiled = _compiled(one.statement, dialect, None)
                work.append((one, compiled, compiled.sql, compiled.params(one.params[0])))
        cursors: list[psycopg.RawCursor[Any]] = []
        current = None
        try:
            with dbapi.pipeline():
                for _one, _compiled_one, sql, params in work:
                    current = sql
                    cursor = psycopg.RawCursor(dbapi)
                    cursors.append(cursor)
                    cursor.execute(sql, params)
            for (one, compiled, _sql, _params), cursor in zip(work, cursors, strict=True):
                if cursor.description is not None:
                    one.answer._rows = [compiled.row(row) for row in cursor.fetchall()]
                elif one.answer._rows is None:
                    one.answer._rows = []
        except psycopg.Error as exc:
            raise self._wrapped(exc, dbapi, current) from exc
        finally:
            for cursor in cursors:
                cursor.close()

    def _wrapped(
        self, exc: psycopg.Error, dbapi: psycopg.Connection[Any], statement: str | None
    ) -> sa.exc.StatementError:
        """``exc`` as SQLAlchemy would raise it; a connection it finds dead is invalidated (the
        pool drops it), as SQLAlchemy does for the statements it runs itself."""
        dialect: Any = self.conn.dialect  # typed for DBAPI errors and connections in general
        dead = dbapi.closed or dbapi.broken or dialect.is_disconnect(exc, dbapi, None)
        error = sa.exc.DBAPIError.instance(
            statement, None, exc, psycopg.Error, hide_parameters=True, connection_invalidated=dead
        )
        if dead:
            self.conn.invalidate(exc)
        return error
