"""The engine (SQLite or PostgreSQL through psycopg 3) and migrations (alembic).

Every wait for the database is bounded (``DatabaseTimeouts``), so a database that hangs (frozen,
unplugged, behind a dead network) costs a request a few seconds and a 503, never a hung thread:
connecting (``connect_timeout``), each statement and each COMMIT (the server's
``statement_timeout`` and ``lock_timeout``, and on our side a deadline on every wait for an
answer, which a frozen server cannot miss), a connection from the pool (``PoolSettings.timeout``),
a dead TCP peer (keepalives and ``tcp_user_timeout``), and SQLite's lock (``busy_timeout``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

__all__ = ["DatabaseTimeouts", "PoolSettings", "connect_params", "create_engine", "migrate", "ping"]


@dataclass(frozen=True)
class PoolSettings:
    """Connection pool bounds (``db_pool_*`` settings). Every wait for a connection is bounded."""

    size: int = 10
    max_overflow: int = 10
    timeout: float = 5.0


@dataclass(frozen=True)
class DatabaseTimeouts:
    """How long the broker waits for the database, in seconds (``db_*_timeout`` settings).

    ``connect``: to open a PostgreSQL connection (libpq counts whole seconds, at least 2).
    ``statement``: for a statement's or a COMMIT's answer; the server cancels a statement at this
    age, and we stop waiting ``ANSWER_GRACE`` later if the server says nothing at all.
    ``lock``: for a row or advisory lock held by another transaction (PostgreSQL).
    ``tcp``: for a TCP peer that stopped acknowledging (keepalives probe idle connections).
    ``busy``: for SQLite's write lock held by another process.
    """

    connect: float = 3.0
    statement: float = 5.0
    lock: float = 2.0
    tcp: float = 10.0
    busy: float = 5.0

    # The server's own statement_timeout error should win over our deadline when it can answer.
    ANSWER_GRACE = 0.5

    @property
    def answer(self) -> float:
        """Our deadline for any one answer from PostgreSQL."""
        return self.statement + self.ANSWER_GRACE

    @property
    def ping(self) -> float:
        """Our deadline for the check of a pooled connection before it is used: an idle
        connection slower to answer than a new one is to open is taken for dead."""
        return min(self.connect, self.answer)

    def libpq_params(self) -> dict[str, Any]:
        """libpq connection parameters that bound connecting and a dead peer."""
        probe = max(1, round(self.tcp / 3))
        return {
            "connect_timeout": max(2, round(self.connect)),
            "keepalives": 1,
            "keepalives_idle": probe,
            "keepalives_interval": probe,
            "keepalives_count": 2,
            "tcp_user_timeout": round(self.tcp * 1000),
        }

    def server_options(self) -> str:
        """``options`` for the server: its statement and lock timeouts, in milliseconds."""
        statement, lock = round(self.statement * 1000), round(self.lock * 1000)
        return f"-c statement_timeout={statement} -c lock_timeout={lock}"


class _BoundedConnection(psycopg.Connection[Any]):
    """A psycopg connection whose every wait for the server ends after ``answer_timeout``.

    The server's ``statement_timeout`` cannot fire while the server is frozen (SIGSTOP, a VM
    paused) and TCP keepalives go on being answered by its kernel, so only a deadline on our side
    bounds that. When it passes the connection is closed (its state is unknown) and the wait
    raises ``psycopg.OperationalError``; SQLAlchemy sees a closed connection and drops it from
    the pool.
    """

    answer_timeout: float | None = None

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        bound = self.answer_timeout if timeout is None else timeout
        try:
            return super().wait(gen, interval=interval, timeout=bound)
        except psycopg.errors._WaitTimeout as exc:
            self.close()
            raise psycopg.OperationalError(
                f"the database did not answer within {bound:g} s; the connection was closed"
            ) from exc


def _sqlite_pragmas(busy_ms: int) -> Any:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin, so we can BEGIN IMMEDIATE.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    return on_connect


def _bounded_params(timeouts: DatabaseTimeouts, cparams: dict[str, Any]) -> dict[str, Any]:
    # What the URL says wins: its libpq parameters, and its own options, which come after
    # ours (a later -c wins).
    options = " ".join(filter(None, [timeouts.server_options(), cparams.get("options")]))
    return {**timeouts.libpq_params(), **cparams, "options": options}


def connect_params(url: str, timeouts: DatabaseTimeouts) -> dict[str, Any]:
    """psycopg's keyword arguments for a connection of its own to the PostgreSQL of ``url``,
    bounded as the pool's are (connecting, statements, locks, a dead peer): the replicas' LISTEN
    connection (``store.signals``), which is no pooled connection.

    Raises:
        ValueError: ``url`` names another database.
    """
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"not a PostgreSQL URL: {parsed.get_backend_name()!r}")
    parsed = parsed.set(drivername="postgresql+psycopg")
    _cargs, cparams = parsed.get_dialect()().create_connect_args(parsed)
    return _bounded_params(timeouts, dict(cparams))


def _postgres_connect(timeouts: DatabaseTimeouts) -> Any:
    def do_connect(_dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        conn = _BoundedConnection.connect(*cargs, **_bounded_params(timeouts, cparams))
        conn.answer_timeout = timeouts.answer
        return conn

    return do_connect


def _bound_pings(engine: Engine, timeouts: DatabaseTimeouts) -> None:
    """The pool's check of a connection waits ``timeouts.ping``, not a statement's time."""
    dialect = engine.dialect
    check = dialect.do_ping

    def do_ping(dbapi_conn: Any) -> bool:
        dbapi_conn.answer_timeout = timeouts.ping
        try:
            return check(dbapi_conn)
        finally:
            dbapi_conn.answer_timeout = timeouts.answer

    setattr(dialect, "do_ping", do_ping)  # noqa: B010 - this engine's dialect only


def _sqlite_begin(conn: sa.Connection) -> None:
    # IMMEDIATE takes the write lock at BEGIN: two processes (the broker, an admin command)
    # can never read the same ledger head and both append after it.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(
    url: str, pool: PoolSettings | None = None, timeouts: DatabaseTimeouts | None = None
) -> Engine:
    """Create an engine for ``url`` (``sqlite:///path`` or ``postgresql://...``).

    PostgreSQL URLs are driven by psycopg 3 whatever driver the URL names; ``pool`` bounds its
    pool. A SQLite file always has one pooled connection (below), waited for ``pool.timeout``.
    ``timeouts`` bound every other wait (see the module's text).

    Raises:
        ValueError: the URL names another database.
    """
    pool = pool or PoolSettings()
    timeouts = timeouts or DatabaseTimeouts()
    parsed = sa.engine.make_url(url)
    # Bound values (password and secret hashes, names) stay out of SQLAlchemy's logs and error texts.
    if parsed.get_backend_name() == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
        engine = sa.create_engine(
            parsed,
            pool_pre_ping=True,
            pool_size=pool.size,
            max_overflow=pool.max_overflow,
            pool_timeout=pool.timeout,
            hide_parameters=True,
        )
        event.listen(engine, "do_connect", _postgres_connect(timeouts))
        _bound_pings(engine, timeouts)
    elif parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # Every transaction takes SQLite's one write lock (BEGIN IMMEDIATE, below), so a process
        # gains nothing from a second connection: with one, threads queue in the pool and start
        # the moment it is free, instead of sleep-polling in SQLite's busy handler (1 ms, then
        # 2, 5, ... ms per try). The busy timeout still covers other processes (admin commands).
        pooling: dict[str, Any] = {}
        if parsed.database and parsed.database != ":memory:":
            pooling = {"pool_size": 1, "max_overflow": 0, "pool_timeout": pool.timeout}
        engine = sa.create_engine(
            parsed,
            connect_args={"check_same_thread": False, "timeout": timeouts.busy},
            hide_parameters=True,
            **pooling,
        )
        event.listen(engine, "connect", _sqlite_pragmas(round(timeouts.busy * 1000)))
        event.listen(engine, "begin", _sqlite_begin)
    else:
        raise ValueError(
            f"unsupported database {parsed.get_backend_name()!r}: use sqlite:/// or postgresql://"
        )
    return engine


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest alembic revision."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "access.broker.store:migrations")
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def ping(conn: sa.Connection) -> None:
    """Ask the database for an answer (readiness). Raises what the driver raises."""
    conn.execute(sa.text("SELECT 1"))
