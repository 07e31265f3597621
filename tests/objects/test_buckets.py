"""The pack bucket protocol on both backends, caches of several processes, and the start-up wiring."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path

import pytest
from sqlalchemy import text

from makima.server.app import App
from makima.server.domain.objects import BUCKET_POOL_SIZE, ObjectStores, PostgresBucket
from makima.server.git.errors import InvalidPackError
from makima.server.git.objects import LocalDirBucket, OwnerObjectStore, check_pack_name
from makima.server.store.engine import Database
from tests.objects.helpers import History, blob, git_pack, pack_files, push, push_first, rev_list_objects


def small_pack(store: OwnerObjectStore) -> tuple[str, bytes, bytes]:
    """A real pack of three blobs and its index, as the store writes them: (name, pack, index)."""
    pack = store.add_objects([(blob(b"one\n"), None), (blob(b"two\n"), None), (blob(b"three\n"), None)])
    assert pack is not None
    name = pack.name().decode()
    pack_out, index_out = BytesIO(), BytesIO()
    store.bucket.get_pack(name, pack_out, index_out)
    return name, pack_out.getvalue(), index_out.getvalue()


async def test_put_list_get_remove(stores: ObjectStores, owner_id: uuid.UUID) -> None:
    def scenario(store: OwnerObjectStore) -> None:
        bucket = store.bucket
        name, pack, index = small_pack(store)
        bucket.remove_pack(name)
        assert bucket.list_packs() == []

        bucket.put_pack(name, BytesIO(pack), BytesIO(index))
        bucket.put_pack(name, BytesIO(pack), BytesIO(index))  # a second put of the same name is a no-op
        (info,) = bucket.list_packs()
        assert (info.name, info.object_count, info.byte_size) == (name, 3, len(pack))
        assert timedelta(0) <= datetime.now(UTC) - info.create_time < timedelta(minutes=1)
        pack_out, index_out = BytesIO(), BytesIO()
        bucket.get_pack(name, pack_out, index_out)
        assert (pack_out.getvalue(), index_out.getvalue()) == (pack, index)

        bucket.remove_pack(name)
        assert bucket.list_packs() == []
        with pytest.raises(KeyError):
            bucket.get_pack(name, BytesIO(), BytesIO())
        bucket.remove_pack(name)  # removing what is gone is not an error

    await stores.run(owner_id, scenario)


async def test_owners_never_see_each_others_packs(stores: ObjectStores, owner_id: uuid.UUID, history: History) -> None:
    other = uuid.uuid4()
    await stores.run(owner_id, lambda store: push_first(store, history))
    assert await stores.run(other, lambda store: store.bucket.list_packs()) == []
    assert await stores.run(other, lambda store: store.lacking([history.first])) == [history.first]

    # Nor build on them: a thin pack against the first owner's objects has no base for the other.
    thin = git_pack(history.path, [history.second, f"^{history.first}"], thin=True)

    def build_on_foreign_objects(store: OwnerObjectStore) -> str:
        with pytest.raises(InvalidPackError) as caught:
            push(store, thin, history.second)
        return caught.value.metadata["problem"]

    assert await stores.run(other, build_on_foreign_objects) == "missing_object"


async def test_two_processes_with_their_own_caches_share_one_bucket(
    objects_db: Database, owner_id: uuid.UUID, history: History, tmp_path: Path
) -> None:
    """Two server processes (two machines: two cache directories) over one bucket see each other's packs."""
    a = ObjectStores.for_database(objects_db, workspace_root=tmp_path / "ws-a", cache_dir=tmp_path / "cache-a")
    b = ObjectStores.for_database(objects_db, workspace_root=tmp_path / "ws-b", cache_dir=tmp_path / "cache-b")
    stored = await a.run(owner_id, lambda store: push_first(store, history))
    assert stored.name is not None

    assert await b.run(owner_id, lambda store: store.lacking([history.first])) == []
    assert len(await b.run(owner_id, lambda store: store.missing(wants=[history.first], haves=[]))) > 1000
    local = objects_db.dialect == "sqlite"
    if not local:  # b copied the pack into its own cache to read it
        assert pack_files(tmp_path / "cache-b" / str(owner_id)) == [
            f"pack-{stored.name}.idx",
            f"pack-{stored.name}.pack",
        ]

    # b stores the second commit; a sees it too.
    second = git_pack(history.path, [history.second, f"^{history.first}"], thin=True)
    await b.run(owner_id, lambda store: push(store, second, history.second))
    assert await a.run(owner_id, lambda store: store.lacking([history.second, history.first])) == []

    # a collects everything (no roots, no grace): b forgets the packs, and its cache drops them.
    removed = await a.run(owner_id, lambda store: store.collect_garbage([], grace=timedelta(0)).removed)
    assert len(removed) == 2
    assert await b.run(owner_id, lambda store: store.lacking([history.first])) == [history.first]
    assert pack_files(tmp_path / "cache-b" / str(owner_id)) == []


async def test_a_store_reads_packs_put_after_it_listed(
    stores: ObjectStores, owner_id: uuid.UUID, history: History
) -> None:
    """A lookup miss lists the bucket again, as git rescans its pack directory."""

    def scenario(store: OwnerObjectStore) -> None:
        assert store.packs == []
        with stores.open(owner_id) as writer:
            push_first(writer, history)
        assert store.lacking([history.first]) == []

    await stores.run(owner_id, scenario)


async def test_start_up_picks_the_bucket_from_the_database_url(
    server: App, objects_db: Database, owner_id: uuid.UUID, tmp_path: Path
) -> None:
    bucket = await server.objects.run(owner_id, lambda store: store.bucket)
    if objects_db.dialect == "sqlite":
        assert isinstance(bucket, LocalDirBucket)
        database = Path(str(server.runtime.db.url.database)).resolve()
        assert bucket.directory == database.parent / f"{database.name}.objects" / str(owner_id)
    else:
        assert isinstance(bucket, PostgresBucket)
        # Without a cache directory configured, the cache is under the workspace root.
        stores = ObjectStores.for_database(objects_db, workspace_root=tmp_path / "ws")
        await stores.run(owner_id, lambda store: store.add_objects([(blob(b"cached\n"), None)]))
        assert len(pack_files(tmp_path / "ws" / ".object-cache" / str(owner_id))) == 2


@pytest.mark.postgresql_only
async def test_postgres_bucket_refuses_the_event_loop_thread(objects_db: Database, owner_id: uuid.UUID) -> None:
    """A call from the loop thread would wait for the loop it blocks: refused instead of hanging."""
    import asyncio

    bucket = PostgresBucket(objects_db, owner_id, loop=asyncio.get_running_loop())
    with pytest.raises(RuntimeError, match="event loop"):
        bucket.list_packs()
    assert await asyncio.to_thread(bucket.list_packs) == []


def test_pack_names_cannot_be_paths() -> None:
    for bad in ("../" + "0" * 37, "0" * 39, "A" * 40, "0" * 40 + "/x", ""):
        with pytest.raises(ValueError):
            check_pack_name(bad)
    assert check_pack_name("0123456789abcdef0123456789abcdef01234567")


async def test_more_store_operations_than_connections_all_finish(
    objects_db: Database, owner_id: uuid.UUID, history: History, tmp_path: Path
) -> None:
    """Store work at once on three times as many threads as the buckets have connections, while use
    cases hold every connection of the main pool: each bucket call waits its turn and none deadlocks."""
    main = Database(objects_db.url.render_as_string(hide_password=False), pool_size=4)
    seeded = ObjectStores.for_database(main, workspace_root=tmp_path / "ws", cache_dir=tmp_path / "seed")
    await seeded.run(owner_id, lambda store: push_first(store, history))
    # Every operation as if on a process of its own (its own cache), so each one reads the bucket.
    processes = [
        ObjectStores.for_database(main, workspace_root=tmp_path / "ws", cache_dir=tmp_path / f"cache-{i}")
        for i in range(3 * BUCKET_POOL_SIZE)
    ]
    try:
        async with contextlib.AsyncExitStack() as held:
            for _ in range(4):
                session = await held.enter_async_context(main.read())
                await session.execute(text("SELECT 1"))  # the connection is taken
            counts = await asyncio.wait_for(
                asyncio.gather(
                    *(
                        process.run(owner_id, lambda store: len(store.missing(wants=[history.first], haves=[])))
                        for process in processes
                    )
                ),
                timeout=120,
            )
    finally:
        for process in [seeded, *processes]:
            await process.close()
        await main.dispose()

    assert counts == [len(rev_list_objects(history.path, history.first))] * len(processes)
