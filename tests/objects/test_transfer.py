"""Have/want in both directions, packs that materialize for the git CLI, thin packs and chunking."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import NamedTuple

from dulwich.object_format import DEFAULT_OBJECT_FORMAT
from dulwich.object_store import MemoryObjectStore, OverlayObjectStore
from dulwich.objects import Commit, ObjectID
from dulwich.pack import Pack, PackInflater
from dulwich.repo import Repo

from makima.server.domain.objects import ObjectStores
from makima.server.git.objects import OwnerObjectStore, find_missing, outgoing_pack
from makima.worktree.packs import PackedObjects
from makima.worktree.trees import new_commit
from tests.objects.helpers import (
    CHANGED,
    History,
    git,
    git_fails,
    git_pack,
    ls_tree,
    materialize,
    outgoing_bytes,
    pack_files,
    push,
    push_first,
    rev_list_objects,
)


class Exchange(NamedTuple):
    """What a daemon sent (object count, bytes) and what the service would send back."""

    full: tuple[int, int]
    incremental: tuple[int, int]
    stored: int
    fetch_all: set[str]
    fetch_new: set[str]
    fetch_none: list[str]


async def test_have_want_sends_only_what_is_missing(
    stores: ObjectStores, owner_id: uuid.UUID, history: History
) -> None:
    """An incremental checkpoint of 100 changed files in a 1,000-file tree sends what changed, not the tree."""
    first, second = history.first, history.second
    daemon = Repo(str(history.path))

    def scenario(store: OwnerObjectStore) -> Exchange:
        # Upload, daemon to service: the daemon offers its commit and its parent; the service lacks both.
        assert store.lacking([second, first]) == [second, first]
        full = outgoing_pack(daemon.object_store, wants=[first], haves=[])
        full_bytes = outgoing_bytes(full)
        push(store, full_bytes, first)
        # Next checkpoint: the service has the parent, so the daemon leaves out all the parent reaches.
        haves = [sha for sha in (second, first) if sha not in store.lacking([second, first])]
        assert haves == [first]
        incremental = outgoing_pack(daemon.object_store, wants=[second], haves=haves)
        incremental_bytes = outgoing_bytes(incremental)
        stored = push(store, incremental_bytes, second)
        return Exchange(
            full=(full.object_count, len(full_bytes)),
            incremental=(incremental.object_count, len(incremental_bytes)),
            stored=stored.object_count,
            fetch_all=set(store.missing(wants=[second], haves=[])),
            fetch_new=set(store.missing(wants=[second], haves=[first])),
            fetch_none=store.missing(wants=[second], haves=[second]),
        )

    result = await stores.run(owner_id, scenario)
    new_objects = rev_list_objects(history.path, second, f"^{first}")
    # 100 blobs, the trees above them and the commit: what `git rev-list --objects C2 ^C1` lists.
    assert CHANGED < len(new_objects) < CHANGED + 60
    full_count, full_size = result.full
    incremental_count, incremental_size = result.incremental
    assert full_count == len(rev_list_objects(history.path, first))
    # The service completes the thin pack with the bases of its deltas, so it stores more.
    assert incremental_count == len(new_objects) < result.stored
    # Bytes grow with the change, not with the tree: deltas against the parent's trees and files at
    # the same paths (as git's thin pack) make it a tenth here; whole objects were a third.
    assert incremental_size < full_size / 5
    # Fetch, service to daemon, answers the same way.
    assert result.fetch_all == rev_list_objects(history.path, second)
    assert result.fetch_new == new_objects
    assert result.fetch_none == []


async def test_fetched_packs_materialize_for_git(
    stores: ObjectStores, owner_id: uuid.UUID, history: History, tmp_path: Path
) -> None:
    """A fresh repository built from the fetched pack passes `git fsck --strict` and has the same tree."""
    first, second = history.first, history.second
    full_git = git_pack(history.path, [first])
    incremental_git = git_pack(history.path, [second, f"^{first}"], thin=True)

    def scenario(store: OwnerObjectStore) -> tuple[list[bytes], bytes]:
        push(store, full_git, first)
        push(store, incremental_git, second)
        whole = store.outgoing_pack(wants=[second], haves=[], chunk_size=4096)
        chunks = list(whole.chunks)
        delta = outgoing_bytes(store.outgoing_pack(wants=[second], haves=[first]))
        return chunks, delta

    chunks, delta = await stores.run(owner_id, scenario)
    assert all(len(c) == 4096 for c in chunks[:-1]) and 0 < len(chunks[-1]) <= 4096

    fresh = materialize(tmp_path / "fresh", b"".join(chunks), branch_at=second)
    assert git(fresh, "fsck", "--strict", "--no-dangling") == b""
    assert ls_tree(fresh, second) == ls_tree(history.path, second)
    assert git(fresh, "status", "--porcelain") == b""

    # A daemon that has the first commit only fetches the difference, possibly thin against it.
    behind = materialize(tmp_path / "behind", git_pack(history.path, [first]), branch_at=first)
    materialize(behind, delta, branch_at=second)
    assert git(behind, "fsck", "--strict", "--no-dangling") == b""
    assert ls_tree(behind, second) == ls_tree(history.path, second)
    assert git(behind, "diff", "--stat", second) == b""


async def test_thin_pack_against_stored_bases_is_completed(
    stores: ObjectStores, owner_id: uuid.UUID, history: History, tmp_path: Path
) -> None:
    """A thin pack (deltas against the service's objects) is stored whole: every stored pack stands alone."""
    thin = git_pack(history.path, [history.second, f"^{history.first}"], thin=True)
    scratch = tmp_path / "scratch"
    git(tmp_path, "init", "-q", str(scratch))
    assert "unresolved delta" in git_fails(scratch, "index-pack", "--stdin", stdin=thin)  # it is thin

    def scenario(store: OwnerObjectStore) -> tuple[int, int, list[str]]:
        push_first(store, history)
        stored = push(store, thin, history.second)
        assert stored.name is not None
        with open(tmp_path / "got.pack", "wb") as pack_out, open(tmp_path / "got.idx", "wb") as index_out:
            store.bucket.get_pack(stored.name, pack_out, index_out)
        with Pack(str(tmp_path / "got"), object_format=DEFAULT_OBJECT_FORMAT) as pack:
            # No base outside the pack is needed to inflate every object of it.
            inflated = sum(1 for _ in PackInflater.for_pack_data(pack.data))
        return stored.object_count, inflated, store.lacking(sorted(rev_list_objects(history.path, history.second)))

    stored_count, inflated, lacking = await stores.run(owner_id, scenario)
    assert stored_count == inflated > len(rev_list_objects(history.path, history.second, f"^{history.first}"))
    assert lacking == []


async def test_retried_push_stores_nothing_new(stores: ObjectStores, owner_id: uuid.UUID, history: History) -> None:
    def scenario(store: OwnerObjectStore) -> tuple[str | None, str | None, int]:
        first = push_first(store, history)
        again = push_first(store, history)
        return first.name, again.name, len(store.bucket.list_packs())

    first_name, again_name, count = await stores.run(owner_id, scenario)
    assert first_name is not None and again_name is None and count == 1


async def test_fetch_of_an_unknown_commit_is_ref_not_found(stores: ObjectStores, owner_id: uuid.UUID) -> None:
    from makima.server.git import RefNotFoundError

    def scenario(store: OwnerObjectStore) -> None:
        try:
            store.missing(wants=["0" * 40], haves=[])
        except RefNotFoundError as exc:
            assert exc.metadata == {"commit": "0" * 40}
        else:
            raise AssertionError("no RefNotFoundError")

    await stores.run(owner_id, scenario)


async def test_objects_built_locally_are_stored(
    stores: ObjectStores, owner_id: uuid.UUID, history: History, tmp_path: Path
) -> None:
    """The service's own snapshot objects go in through dulwich's add_objects, checked like any pack."""
    source = Repo(str(history.path))
    commit = source[history.first.encode()]
    assert isinstance(commit, Commit)
    objects = [(source[sha], None) for sha in sorted(s.encode() for s in rev_list_objects(history.path, history.first))]

    def scenario(store: OwnerObjectStore) -> list[str]:
        assert store.add_objects(objects) is not None
        return store.lacking([history.first, commit.tree.decode()])

    assert await stores.run(owner_id, scenario) == []
    assert pack_files(tmp_path / "cache" / str(owner_id) / "incoming") == []


async def test_stored_deltas_are_copied_without_inflating_and_git_accepts_them(
    stores: ObjectStores, owner_id: uuid.UUID, tmp_path: Path
) -> None:
    """A pack git wrote (offset deltas, chains) is served by copying its entries; git indexes the result.

    Ten versions of one growing file make git store most of them as offset deltas. Served whole, those
    entries go out as ref deltas on bases sent along, never recompressed: the pack served is the size
    of git's, not of ten whole files.
    """
    repo = tmp_path / "versions"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    lines = [f"line {i}: {'x' * (i % 70)}\n" for i in range(2000)]
    for version in range(10):
        lines.insert(version * 150, f"version {version}\n")
        (repo / "big.txt").write_text("".join(lines))
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"v{version}")
    head = git(repo, "rev-parse", "HEAD").decode().strip()
    packed = git_pack(repo, [head])
    with open(tmp_path / "git.pack", "wb") as f:
        f.write(packed)
    git(tmp_path, "index-pack", "git.pack")
    verified = git(tmp_path, "verify-pack", "-v", "git.pack").decode()
    assert sum(1 for line in verified.splitlines() if " blob " in line and len(line.split()) == 7) >= 5  # deltas

    def scenario(store: OwnerObjectStore) -> bytes:
        push(store, packed, head)
        return outgoing_bytes(store.outgoing_pack(wants=[head], haves=[]))

    served = await stores.run(owner_id, scenario)
    assert len(served) < 2 * len(packed)  # ten whole versions would be several times git's pack
    fresh = materialize(tmp_path / "fresh", served, branch_at=head)
    assert git(fresh, "fsck", "--strict", "--no-dangling") == b""
    assert ls_tree(fresh, head) == ls_tree(repo, head)
    assert git(fresh, "rev-list", "--count", head) == b"10\n"


async def test_what_the_receiver_holds_is_not_sent_though_no_have_reaches_it(
    stores: ObjectStores, owner_id: uuid.UUID, history: History
) -> None:
    """A rewind commit (the first commit's tree on top of the second) sends itself alone to a store
    holding both; without `held`, the first tree's objects that the second lacks go along."""
    daemon = Repo(str(history.path))
    first = daemon.object_store[ObjectID(history.first.encode())]
    assert isinstance(first, Commit)
    rewind = new_commit(first.tree, ObjectID(history.second.encode()), "rewind")
    added = MemoryObjectStore()
    added.add_object(rewind)
    local = OverlayObjectStore([added, daemon.object_store])

    def scenario(store: OwnerObjectStore) -> tuple[list[ObjectID], int]:
        push_first(store, history)
        push(store, git_pack(history.path, [history.second, f"^{history.first}"]), history.second)
        held = PackedObjects(store)
        pruned = find_missing(local, wants=[rewind.id.decode()], haves=[history.second], held=held.packed)
        whole = find_missing(local, wants=[rewind.id.decode()], haves=[history.second])
        return pruned.objects, len(whole.objects)

    pruned, whole = await stores.run(owner_id, scenario)
    assert pruned == [rewind.id]
    assert whole > CHANGED  # the 100 files' old blobs and the trees holding them
