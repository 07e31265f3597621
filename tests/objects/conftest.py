"""Fixtures of the object store conformance suite: every test runs on both buckets.

On SQLite the stores use the LocalDirBucket beside the database file; on PostgreSQL the
PostgresBucket over `object_packs` in the fresh test database, with a local cache per store. Each
test gets a new owner, so it starts from an empty store. Store work runs in worker threads, as in
the server, while the event loop serves the PostgreSQL bucket.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from makima.server.domain.objects import ObjectStores
from makima.server.store import migrate, owners
from makima.server.store.engine import Database
from tests.objects.helpers import History, build_history


@pytest.fixture(scope="session")
async def objects_db(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url)
    await migrate.upgrade(db)
    yield db
    await db.dispose()


@pytest.fixture
async def owner_id(objects_db: Database) -> uuid.UUID:
    owner = uuid.uuid4()
    async with objects_db.write() as session:
        await owners.ensure_owner(session, owner_id=owner)
    return owner


@pytest.fixture
async def stores(objects_db: Database, tmp_path: Path) -> ObjectStores:
    """The stores one server process would open, with its own cache directory."""
    return ObjectStores.for_database(objects_db, workspace_root=tmp_path / "workspace", cache_dir=tmp_path / "cache")


@pytest.fixture(scope="session")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    return build_history(tmp_path_factory.mktemp("history") / "repo")
