"""Apply the Alembic migrations programmatically on an async engine (both backends)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection

from makima.server.store.engine import Database

# Any fixed number: serializes concurrent migrations of several server processes on PostgreSQL.
_MIGRATION_LOCK = 0x6D616B696D61


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic configuration pointing at the packaged migrations, without an alembic.ini."""
    cfg = Config()
    cfg.set_main_option("script_location", "makima.server.store:migrations")
    cfg.attributes["connection"] = connection
    return cfg


async def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the database schema to `revision` (idempotent; safe with several processes)."""

    def _upgrade(connection: Connection) -> None:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
        command.upgrade(alembic_config(connection), revision)

    async with db.engine.begin() as conn:
        await conn.run_sync(_upgrade)
