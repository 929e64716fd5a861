"""The engine (SQLite or PostgreSQL through psycopg 3) and migrations (alembic)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

__all__ = ["PoolSettings", "create_engine", "migrate", "ping"]


@dataclass(frozen=True)
class PoolSettings:
    """Connection pool bounds (``db_pool_*`` settings). Every wait for a connection is bounded."""

    size: int = 10
    max_overflow: int = 10
    timeout: float = 10.0


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy, not pysqlite, decide when transactions begin, so we can BEGIN IMMEDIATE.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    # IMMEDIATE takes the write lock at BEGIN: two processes (the broker, an admin command)
    # can never read the same ledger head and both append after it.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(url: str, pool: PoolSettings | None = None) -> Engine:
    """Create an engine for ``url`` (``sqlite:///path`` or ``postgresql://...``).

    PostgreSQL URLs are driven by psycopg 3 whatever driver the URL names; ``pool`` bounds its
    pool. A SQLite file always has one pooled connection (below), waited for ``pool.timeout``.

    Raises:
        ValueError: the URL names another database.
    """
    pool = pool or PoolSettings()
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
            connect_args={"check_same_thread": False, "timeout": 10},
            hide_parameters=True,
            **pooling,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
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
