"""The data layer on SQLite and PostgreSQL: times go in as any aware time, come back as UTC."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import sqlalchemy as sa

from access.broker.runtime import Broker
from access.broker.store.tables import principals


def test_times_are_stored_and_read_back_in_utc(make_broker: Callable[..., Broker], db_url: str) -> None:
    broker = make_broker(db_url=db_url)
    berlin_summer = timezone(timedelta(hours=2))
    local = datetime(2026, 6, 1, 14, 30, 5, tzinfo=berlin_summer)
    with broker.transaction() as conn:
        if broker.engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SET TIME ZONE 'America/New_York'")  # the session's zone must not matter
        conn.execute(
            principals.insert().values(id="p1", name="alice", kind="user", groups=[], created_at=local)
        )
        stored = conn.execute(sa.select(principals.c.created_at)).scalar_one()
        earlier = conn.execute(
            sa.select(sa.func.count())
            .select_from(principals)
            .where(principals.c.created_at < datetime(2026, 6, 1, 12, 30, 6, tzinfo=UTC))
        ).scalar_one()
    assert stored == local and stored.tzinfo == UTC
    assert stored.hour == 12
    assert earlier == 1  # comparisons happen in UTC too


def test_migrations_build_exactly_the_tables_of_the_metadata(
    make_broker: Callable[..., Broker], db_url: str
) -> None:
    """``tables.py`` and ``migrations/versions`` describe one schema: a table or column added to
    one without the other (the outbox of 0002, say) fails here."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from access.broker.store.tables import metadata

    broker = make_broker(db_url=db_url)  # migrated to head
    with broker.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []
        assert "outbox" in sa.inspect(conn).get_table_names()
