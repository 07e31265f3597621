"""The git object store of every owner, on the backend the database URL calls for (DESIGN.md section 5).

With SQLite (the embedded setup) packs are files beside the database, `<db file>.objects/<owner>/`.
With PostgreSQL they are rows of `object_packs`, so every server process on every machine serves
every checkpoint and there is one system to run and back up; each process keeps the packs it reads
in a local cache, `<cache dir>/<owner>/` (by default under the workspace root).

Store work is synchronous and runs in worker threads (`ObjectStores.run`). The PostgreSQL bucket
hands each of its calls to the event loop as one short transaction and waits for the answer, so
store work must never run on the event loop thread.

Use cases store objects while they hold their own transaction (objects first, then the rows that
name them, committed together; a failed transaction leaves only unreferenced objects, which garbage
collection removes). On the main pool that could deadlock: every pooled connection held by a use
case whose store work waits for another pooled connection. So the PostgreSQL buckets run on an engine
of their own (`BUCKET_POOL_SIZE` connections, `ObjectStores.close` disposes of it): a bucket call holds
one of those connections for one short transaction and waits for nothing else, so it always
finishes, whatever the use cases hold on the main pool.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import BinaryIO, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from makima.server.git.objects import (
    LocalDirBucket,
    OwnerObjectStore,
    PackBucket,
    PackInfo,
    PackLimits,
    index_object_count,
)
from makima.server.store import packs
from makima.server.store.engine import Database
from makima.server.store.types import utcnow

T = TypeVar("T")
log = logging.getLogger(__name__)

# Seconds one bucket call may take, transfer of a large pack included.
BUCKET_CALL_TIMEOUT = 300.0
# Connections of the PostgreSQL buckets' own engine, shared by every owner's store of the process.
BUCKET_POOL_SIZE = 4
# An owner's packs are merged once there are more than this many: a few packs cost lookups little,
# and merging less often spares the work of checkpoints that follow each other closely.
MERGE_ABOVE_PACKS = 8


class PostgresBucket:
    """The packs of one owner as rows of `object_packs`, for store code running in a worker thread."""

    def __init__(
        self,
        db: Database,
        owner_id: uuid.UUID,
        *,
        loop: asyncio.AbstractEventLoop,
        timeout: float = BUCKET_CALL_TIMEOUT,
    ) -> None:
        self._db = db
        self._owner_id = owner_id
        self._loop = loop
        self._timeout = timeout

    @property
    def local_dir(self) -> Path | None:
        return None

    def list_packs(self) -> list[PackInfo]:
        rows = self._call(lambda s: packs.list_packs(s, owner_id=self._owner_id), write=False)
        return [
            PackInfo(name=r.name, object_count=r.object_count, byte_size=r.byte_size, create_time=r.create_time)
            for r in rows
        ]

    def get_pack(self, name: str, pack_out: BinaryIO, index_out: BinaryIO) -> None:
        found = self._call(lambda s: packs.get_pack(s, owner_id=self._owner_id, name=name), write=False)
        if found is None:
            raise KeyError(name)
        pack_out.write(found[0])
        index_out.write(found[1])

    def put_pack(self, name: str, pack: BinaryIO, index: BinaryIO) -> None:
        pack.seek(0)
        index.seek(0)
        count = index_object_count(index)
        index.seek(0)
        pack_bytes, index_bytes = pack.read(), index.read()
        self._call(
            lambda s: packs.put_pack(
                s,
                owner_id=self._owner_id,
                name=name,
                pack=pack_bytes,
                index=index_bytes,
                object_count=count,
                now=utcnow(),
            ),
            write=True,
        )

    def remove_pack(self, name: str) -> None:
        self._call(lambda s: packs.remove_pack(s, owner_id=self._owner_id, name=name), write=True)

    def _call(self, query: Callable[[AsyncSession], Awaitable[T]], *, write: bool) -> T:
        """Run `query` in its own transaction on the event loop and wait for its result."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            raise RuntimeError("the PostgreSQL pack bucket was called on the event loop: run store work in a thread")

        async def transaction() -> T:
            async with self._db.write() if write else self._db.read() as session:
                return await query(session)

        future = asyncio.run_coroutine_threadsafe(transaction(), self._loop)
        try:
            return future.result(self._timeout)
        except FutureTimeout:
            future.cancel()
            raise


class ObjectStores:
    """Opens the object store of any owner; one per server process."""

    def __init__(
        self,
        bucket_for: Callable[[uuid.UUID], PackBucket],
        *,
        cache_root: Path | None,
        limits: PackLimits,
        bucket_db: Database | None = None,
    ) -> None:
        self._bucket_for = bucket_for
        self._cache_root = cache_root
        self.limits = limits
        self._bucket_db = bucket_db
        # Background merges of packs (see `run`), by owner; an owner in _consolidate_again merges once more.
        self._consolidating: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._consolidate_again: set[uuid.UUID] = set()

    @classmethod
    def for_database(
        cls, db: Database, *, workspace_root: Path, cache_dir: Path | None = None, limits: PackLimits | None = None
    ) -> ObjectStores:
        """The stores that go with `db`; call it on the event loop that runs `db` (PostgreSQL).

        On PostgreSQL the buckets get an engine of their own on the same database (see the module).
        """
        limits = limits or PackLimits()
        if db.dialect == "postgresql":
            loop = asyncio.get_running_loop()
            root = (cache_dir or workspace_root / ".object-cache").resolve()
            own = Database(db.url.render_as_string(hide_password=False), pool_size=BUCKET_POOL_SIZE)
            return cls(
                lambda owner_id: PostgresBucket(own, owner_id, loop=loop), cache_root=root, limits=limits, bucket_db=own
            )
        database = db.url.database
        if database and database != ":memory:":
            beside = Path(database).resolve()
            directory = beside.with_name(beside.name + ".objects")
        else:
            directory = workspace_root.resolve() / ".objects"
        return cls(lambda owner_id: LocalDirBucket(directory / str(owner_id)), cache_root=None, limits=limits)

    def open(self, owner_id: uuid.UUID) -> OwnerObjectStore:
        """The store of `owner_id`, for one operation in the calling (worker) thread; close it after."""
        cache_dir = None if self._cache_root is None else self._cache_root / str(owner_id)
        return OwnerObjectStore(self._bucket_for(owner_id), cache_dir=cache_dir, limits=self.limits)

    async def run(self, owner_id: uuid.UUID, work: Callable[[OwnerObjectStore], T], *, consolidate: bool = False) -> T:
        """Run `work` on the owner's store in a worker thread, and close the store afterwards.

        With `consolidate`, a `work` that added a pack beyond MERGE_ABOVE_PACKS is followed, in the
        background, by a merge of the owner's small packs (`OwnerObjectStore.consolidate`): use
        cases that store checkpoints ask for it, so that the number of packs, which every lookup
        pays for, stays logarithmic.
        """

        def in_thread() -> tuple[T, int]:
            with self.open(owner_id) as store:
                result = work(store)
                return result, len(store.packs) if store.packs_added else 0

        result, packs = await asyncio.to_thread(in_thread)
        if consolidate and packs > MERGE_ABOVE_PACKS:
            self._consolidate_soon(owner_id)
        return result

    def _consolidate_soon(self, owner_id: uuid.UUID) -> None:
        """Start merging the owner's packs unless that is under way; then it runs once more after."""
        if owner_id in self._consolidating:
            self._consolidate_again.add(owner_id)
            return
        self._consolidating[owner_id] = asyncio.get_running_loop().create_task(self._consolidate(owner_id))

    async def _consolidate(self, owner_id: uuid.UUID) -> None:
        def merge() -> None:
            with self.open(owner_id) as store:
                store.consolidate()

        try:
            while True:
                self._consolidate_again.discard(owner_id)
                await asyncio.to_thread(merge)
                if owner_id not in self._consolidate_again:
                    break
        except Exception:
            # Nothing is lost: the packs stay as they were, and the next checkpoint tries again.
            log.exception("merging the packs of owner %s failed", owner_id)
        finally:
            self._consolidating.pop(owner_id, None)

    async def settle(self) -> None:
        """Wait until no pack merge is under way (one asked for meanwhile included)."""
        while self._consolidating:
            await asyncio.gather(*self._consolidating.values(), return_exceptions=True)

    async def close(self) -> None:
        """Wait for pack merges under way, then release the buckets' own connections (PostgreSQL)."""
        await self.settle()
        if self._bucket_db is not None:
            await self._bucket_db.dispose()
