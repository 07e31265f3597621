"""Fixtures: a real server on an ephemeral port per backend, called through the generated stubs.

Every test runs on SQLite and on PostgreSQL (MAKIMA_TEST_POSTGRES_URL). Each backend gets a fresh
database for the session; each test gets a fresh owner with its own API key, and since every row and
query is owner-scoped, a test sees an empty service. With CI set, an unreachable PostgreSQL fails the
run instead of skipping it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc import aio

from makima.server.app import App, start
from makima.server.config import Settings
from makima.server.domain.auth import create_api_key
from tests.helpers import Api

POSTGRES_ENV = "MAKIMA_TEST_POSTGRES_URL"


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _fresh_postgres_database(base_url: str) -> str:
    """Create an empty database next to the one in `base_url`; returns its SQLAlchemy URL."""
    name = f"makima_test_{uuid.uuid4().hex[:12]}"
    try:
        conn = await asyncpg.connect(_asyncpg_dsn(base_url), timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        message = f"PostgreSQL at {base_url} is unreachable: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return base_url.rsplit("/", 1)[0] + "/" + name


async def drop_postgres_database(base_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(_asyncpg_dsn(base_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def postgres_base_url() -> str:
    url = os.environ.get(POSTGRES_ENV, "")
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"{POSTGRES_ENV} must be set in CI")
        pytest.skip(f"{POSTGRES_ENV} not set")
    return url


@pytest.fixture(scope="session")
async def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A fresh, empty database of the backend under test."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'makima.db'}"
        return
    base = postgres_base_url()
    url = await _fresh_postgres_database(base)
    yield url
    await drop_postgres_database(base, url)


@pytest.fixture
async def empty_database_url(database_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """Another fresh database of the backend under test, that no server uses."""
    if database_url.startswith("sqlite"):
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    base = postgres_base_url()
    url = await _fresh_postgres_database(base)
    yield url
    await drop_postgres_database(base, url)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgresql_only: the behaviour exists on PostgreSQL only")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "database_url" in metafunc.fixturenames:
        backends = (
            ["postgresql"] if metafunc.definition.get_closest_marker("postgresql_only") else ["sqlite", "postgresql"]
        )
        metafunc.parametrize("database_url", backends, indirect=True, scope="session")


@pytest.fixture(scope="session")
async def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[App]:
    """The real server, migrated and listening on an ephemeral port."""
    settings = Settings(
        listen="127.0.0.1:0",
        database_url=database_url,
        workspace_root=tmp_path_factory.mktemp("workspace"),
        shutdown_grace=1.0,
    )
    app = await start(settings)
    yield app
    await app.stop(1.0)


@pytest.fixture(scope="session")
async def channel(server: App) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


async def new_api(server: App, channel: aio.Channel) -> Api:
    owner_id = uuid.uuid4()
    key = await create_api_key(server.runtime, owner_id=owner_id, name="test")
    return Api(channel=channel, owner_id=owner_id, key=key.secret)


@pytest.fixture
async def api(server: App, channel: aio.Channel) -> Api:
    """Stubs authenticated as a brand-new owner."""
    return await new_api(server, channel)


@pytest.fixture
async def other_api(server: App, channel: aio.Channel) -> Api:
    """Stubs of a second owner, to check that owners never see each other's resources."""
    return await new_api(server, channel)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


__all__ = ["grpc"]
