"""Apply the Alembic migrations programmatically on an async engine (both backends)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
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


async def upgrade(db: Database, revision: str = "head") -> list[str]:
    """Bring the database schema to `revision` (idempotent; safe with several processes).

    Returns the migrations applied, oldest first, each as its revision and the first line of its
    description ("0007 Branches of daemon-held tasks, …"); none when the schema was up to date.
    """

    def _upgrade(connection: Connection) -> list[str]:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
        before = MigrationContext.configure(connection).get_current_revision()
        config = alembic_config(connection)
        command.upgrade(config, revision)
        after = MigrationContext.configure(connection).get_current_revision()
        if after == before or after is None:
            return []
        applied = ScriptDirectory.from_config(config).iterate_revisions(after, before or "base")
        return [f"{rev.revision} {(rev.doc or '').splitlines()[0]}".strip() for rev in reversed(list(applied))]

    async with db.engine.begin() as conn:
        return await conn.run_sync(_upgrade)
