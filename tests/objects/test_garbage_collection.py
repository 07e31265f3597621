"""Garbage collection: orphans go after the grace period; what checkpoints or in-flight pushes reach stays."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

from makima.server.domain.objects import ObjectStores
from makima.server.git.objects import GarbageCollection, LocalDirBucket, OwnerObjectStore
from makima.server.store import commits
from makima.server.store.engine import Database
from tests.objects.helpers import (
    History,
    age_packs,
    blob,
    commit,
    git,
    git_pack,
    ls_tree,
    materialize,
    outgoing_bytes,
    pack_bytes,
    push,
    rev_list_objects,
    tree,
)

HOUR = timedelta(hours=1)


def orphan_pack() -> tuple[bytes, str]:
    """A commit nothing will refer to, as a failed transaction leaves behind."""
    content = blob(b"orphan\n")
    root = tree((b"orphan.txt", 0o100644, content))
    top = commit(root, message=b"orphan\n")
    return pack_bytes([top, root, content]), top.id.decode()


async def age(stores: ObjectStores, db: Database, owner_id: uuid.UUID, names: list[str], by: timedelta) -> None:
    local = await stores.run(owner_id, lambda store: store.bucket.local_dir)
    await age_packs(db, local, owner_id, names, by)


async def test_orphans_go_after_the_grace_period_and_referenced_packs_stay(
    stores: ObjectStores, objects_db: Database, owner_id: uuid.UUID, history: History
) -> None:
    orphan, orphan_commit = orphan_pack()

    def put(store: OwnerObjectStore) -> tuple[str | None, str | None]:
        return push(store, git_pack(history.path, [history.first]), history.first).name, push(
            store, orphan, orphan_commit
        ).name

    checkpoint_pack, orphan_name = await stores.run(owner_id, put)
    assert checkpoint_pack is not None and orphan_name is not None

    # Young: an orphan may be a push whose checkpoint is not recorded yet.
    result = await stores.run(owner_id, lambda store: store.collect_garbage([history.first], grace=HOUR))
    assert result.removed == [] and result.repacked is None

    await age(stores, objects_db, owner_id, [checkpoint_pack, orphan_name], 2 * HOUR)
    result = await stores.run(owner_id, lambda store: store.collect_garbage([history.first], grace=HOUR))
    assert result.removed == [orphan_name] and result.repacked is None and result.missing_roots == []
    assert await stores.run(owner_id, lambda store: store.lacking([history.first, orphan_commit])) == [orphan_commit]
    names = await stores.run(owner_id, lambda store: [info.name for info in store.bucket.list_packs()])
    assert names == [checkpoint_pack]


async def test_a_young_push_keeps_the_old_objects_it_builds_on(
    stores: ObjectStores, objects_db: Database, owner_id: uuid.UUID, history: History, tmp_path: Path
) -> None:
    """A thin push of the second commit leans on the first's objects before any checkpoint refers to either."""
    first_pack = await stores.run(owner_id, lambda store: push(store, git_pack(history.path, [history.first]), None))
    assert first_pack.name is not None
    await age(stores, objects_db, owner_id, [first_pack.name], 2 * HOUR)
    thin = git_pack(history.path, [history.second, f"^{history.first}"], thin=True)

    def push_then_collect(store: OwnerObjectStore) -> GarbageCollection:
        push(store, thin, history.second)  # in flight: recorded by no checkpoint yet
        return store.collect_garbage([], grace=HOUR)

    result = await stores.run(owner_id, push_then_collect)
    assert result.removed == []
    # Everything the second commit reaches is still there: it materializes.
    pack = await stores.run(
        owner_id, lambda store: outgoing_bytes(store.outgoing_pack(wants=[history.second], haves=[]))
    )
    fresh = materialize(tmp_path / "fresh", pack, branch_at=history.second)
    assert git(fresh, "fsck", "--strict", "--no-dangling") == b""
    assert ls_tree(fresh, history.second) == ls_tree(history.path, history.second)


async def test_partly_reachable_old_packs_are_repacked(
    stores: ObjectStores, objects_db: Database, owner_id: uuid.UUID, history: History, tmp_path: Path
) -> None:
    orphan, orphan_commit = orphan_pack()
    first = git_pack(history.path, [history.first])
    second = git_pack(history.path, [history.second, f"^{history.first}"], thin=True)

    def put(store: OwnerObjectStore) -> list[str]:
        # One pack holding a checkpoint and an orphan, as two pushes merged by an earlier repack would.
        with OwnerObjectStore(LocalDirBucket(tmp_path / "scratch")) as scratch:
            push(scratch, first, None)
            push(scratch, orphan, None)
            mixed = outgoing_bytes(scratch.outgoing_pack(wants=[history.first, orphan_commit], haves=[]))
        names = [push(store, mixed, history.first).name, push(store, second, history.second).name]
        return [name for name in names if name is not None]

    names = await stores.run(owner_id, put)
    assert len(names) == 2
    await age(stores, objects_db, owner_id, names, 2 * HOUR)

    without = await stores.run(
        owner_id, lambda store: store.collect_garbage([history.second], grace=HOUR, repack=False)
    )
    assert without.removed == [] and without.repacked is None

    result = await stores.run(owner_id, lambda store: store.collect_garbage([history.second], grace=HOUR))
    assert sorted(result.removed) == sorted(names) and result.repacked is not None

    def after(store: OwnerObjectStore) -> tuple[list[str], int, list[str]]:
        (info,) = store.bucket.list_packs()
        lacking = store.lacking([*sorted(rev_list_objects(history.path, history.second)), orphan_commit])
        return [info.name], info.object_count, lacking

    packs_left, count, lacking = await stores.run(owner_id, after)
    assert packs_left == [result.repacked]
    assert count == len(rev_list_objects(history.path, history.second))
    assert lacking == [orphan_commit]


async def test_an_owner_collect_lock_is_held_until_its_read_block_ends(
    objects_db: Database, owner_id: uuid.UUID
) -> None:
    """Reads run without a transaction on PostgreSQL; a block that takes the lock keeps one, so a second
    process cannot collect the same owner meanwhile (SQLite serves one process: always granted)."""
    postgres = objects_db.dialect == "postgresql"
    async with objects_db.read(holds_locks=True) as session:
        assert await commits.try_lock_owner(session, owner_id=owner_id, purpose="gc")
        async with objects_db.read(holds_locks=True) as other:
            assert await commits.try_lock_owner(other, owner_id=owner_id, purpose="gc") is not postgres
    async with objects_db.read(holds_locks=True) as session:
        assert await commits.try_lock_owner(session, owner_id=owner_id, purpose="gc")
