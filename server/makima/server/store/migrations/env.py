"""Alembic environment: runs on the connection handed over by makima.server.store.migrate."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from makima.server.store.models import metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `makima-server migrate`, not the alembic command line")
_run(connection)
