"""Alembic environment: runs on the connection that ``access.broker.store.engine.migrate`` hands over."""

from __future__ import annotations

from alembic import context

from access.broker.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - alembic CLI use
    raise RuntimeError("run migrations through `access-broker migrate`, which supplies the connection")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
