"""Engine and sessions for both backends: SQLite (aiosqlite, WAL) and PostgreSQL (asyncpg)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./makima.db"
_WRITE = "makima_write"
_READ = "makima_read"
_EXPECTED = "postgresql+asyncpg://user@host/db or sqlite+aiosqlite:///path"
# URL schemes that name a backend without the async driver, and the URL scheme to use instead.
_ASYNC_DRIVER = {"postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg", "sqlite": "sqlite+aiosqlite"}


class DatabaseUrlError(ValueError):
    """A database URL that cannot work whatever the machine: unparsable, or a backend or driver we do not run on."""


class DatabaseUnreachable(Exception):
    """A well-formed database URL whose database cannot be opened: no server, no database, no writable file."""


def normalize_database_url(url: str) -> str:
    """`url` with the async driver of its backend, which is the only one the service runs on.

    `postgresql://` and `postgres://` become `postgresql+asyncpg://`, `sqlite://` becomes
    `sqlite+aiosqlite://`. DatabaseUrlError for anything else, saying what to write; the message never repeats the URL,
    which may hold a password.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseUrlError(f"is not a database URL: write {_EXPECTED}") from None
    scheme = _ASYNC_DRIVER.get(parsed.drivername, parsed.drivername)
    if scheme not in ("postgresql+asyncpg", "sqlite+aiosqlite"):
        backend, _, driver = scheme.partition("+")
        if backend in _ASYNC_DRIVER:
            raise DatabaseUrlError(f"driver {driver!r} is not supported: write {_ASYNC_DRIVER[backend]}://…")
        raise DatabaseUrlError(f"database {backend!r} is not supported: write {_EXPECTED}")
    parsed = parsed.set(drivername=scheme)
    if scheme == "sqlite+aiosqlite" and parsed.database in (None, "", ":memory:"):
        raise DatabaseUrlError(
            "an in-memory SQLite database is empty on every connection: give a file, sqlite+aiosqlite:///path"
        )
    return parsed.render_as_string(hide_password=False)


def _sqlite_file_problem(database: str) -> str | None:
    """Why SQLite could not create or write the database file `database`, found before any async connection.

    The file is opened once with the standard sqlite3 module: a failed aiosqlite connection leaves a
    thread behind that can outlive the event loop and print a traceback as the process exits.
    """
    path = os.path.abspath(database)
    directory = os.path.dirname(path)
    if not os.path.exists(directory):
        return f"directory {directory} does not exist"
    if not os.path.isdir(directory):
        return f"{directory} is not a directory"
    if os.path.isdir(path):
        return f"{path} is a directory"
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        return f"{path} is not writable"
    # SQLite also creates -wal and -shm files beside the database.
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"directory {directory} is not writable"
    try:
        sqlite3.connect(path).close()
    except sqlite3.Error as exc:
        return str(exc)
    return None


def describe_database_error(exc: BaseException) -> str:
    """One line on why a database call failed, from the driver's own message."""
    cause: BaseException = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


def _tune_sqlite(engine: AsyncEngine) -> None:
    """WAL, foreign keys and a busy timeout; writes take the lock up front (BEGIN IMMEDIATE).

    A deferred transaction that reads and then writes can fail with SQLITE_BUSY without waiting when
    another connection committed in between; BEGIN IMMEDIATE waits for the lock instead.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "foreign_keys=ON", "synchronous=NORMAL", "busy_timeout=30000"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if not options.get(_READ):  # a plain read runs each statement on its own (see Database)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get(_WRITE) else "BEGIN")


def dialect_of(session: AsyncSession) -> str:
    """'sqlite' or 'postgresql': where one statement must differ between the backends."""
    return session.get_bind().dialect.name


class Database:
    """The engine plus two session factories: one for read transactions, one for write ones."""

    # Connections each server process keeps open.
    POOL_SIZE = 20

    def __init__(self, url: str = DEFAULT_DATABASE_URL, *, pool_size: int = POOL_SIZE) -> None:
        self.url: URL = make_url(normalize_database_url(url))
        # A fixed pool: under load, overflow connections would be opened and closed on every call
        # (measured: 10x fewer calls/s); callers wait for a pooled connection instead.
        # No pool_pre_ping: it costs a round trip on every checkout (a third of a simple read). The call
        # that meets a dead connection answers UNAVAILABLE (clients retry it) and SQLAlchemy, seeing the
        # disconnect, replaces every older pooled connection on its next checkout.
        kwargs: dict[str, Any] = {"pool_size": pool_size, "max_overflow": 0}
        if self.dialect == "sqlite":
            # The sqlite3 module starts no transaction of its own: BEGIN is always ours (see _tune_sqlite),
            # and a connection keeps that mode for good (switching it per read costs two more hops).
            kwargs["isolation_level"] = "AUTOCOMMIT"
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.dialect == "sqlite":
            _tune_sqlite(self.engine)
        # A read runs without BEGIN/COMMIT: on PostgreSQL two round trips of a three-trip read, on SQLite
        # two of aiosqlite's thread hops. At PostgreSQL's READ COMMITTED every statement takes its own
        # snapshot inside a transaction too, so a read-only block sees the same rows either way; SQLite
        # reads do the same (each statement its own snapshot), so no read counts on one snapshot
        # across statements.
        # (SQLite's connections are in autocommit mode already: asking again would reset them on every
        # return to the pool, one more hop that a cancelled read can leave half done.)
        autocommit = {} if self.dialect == "sqlite" else {"isolation_level": "AUTOCOMMIT"}
        reads = self.engine.execution_options(**autocommit, **{_READ: True})
        self._reads = async_sessionmaker(reads, expire_on_commit=False, autoflush=False)
        self._locking_reads = async_sessionmaker(self.engine, expire_on_commit=False, autoflush=False)
        self._writes = async_sessionmaker(
            self.engine.execution_options(**{_WRITE: True}), expire_on_commit=False, autoflush=False
        )

    @property
    def shown_url(self) -> str:
        """The URL without its password, for messages and logs."""
        return self.url.render_as_string(hide_password=True)

    async def ping(self) -> None:
        """Open one connection, so a database that cannot work is reported before anything starts.

        DatabaseUnreachable says why: no server, no such database, no writable SQLite file.
        """
        if self.dialect == "sqlite":
            problem = _sqlite_file_problem(self.url.database or "")
            if problem is not None:
                raise DatabaseUnreachable(f"cannot open {self.shown_url}: {problem}")
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except (DBAPIError, OSError, TimeoutError) as exc:
            raise DatabaseUnreachable(f"cannot connect to {self.shown_url}: {describe_database_error(exc)}") from exc

    @property
    def dialect(self) -> str:
        """'sqlite' or 'postgresql'."""
        return self.url.get_backend_name()

    @asynccontextmanager
    async def read(self, *, holds_locks: bool = False) -> AsyncIterator[AsyncSession]:
        """A read-only block: a transaction on SQLite, autocommit statements on PostgreSQL (see __init__).

        `holds_locks` makes it a transaction on PostgreSQL too, for a block whose transaction-scoped
        locks (pg_try_advisory_xact_lock) must last until it ends.
        """
        async with (self._locking_reads if holds_locks else self._reads)() as session, session.begin():
            yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A write transaction, committed when the block ends without error."""
        async with self._writes() as session, session.begin():
            yield session

    async def dispose(self) -> None:
        await self.engine.dispose()
