"""The number of an owner's packs stays logarithmic in its checkpoints, and merging loses nothing."""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path

from makima.server.domain.objects import ObjectStores
from makima.server.git.objects import OwnerObjectStore
from tests.objects.helpers import git, git_pack, ls_tree, materialize, outgoing_bytes, push, rev_list_objects


def chain_of_commits(path: Path, count: int) -> list[str]:
    """`count` commits, each changing a few of 60 files: checkpoints of an agent at work."""
    git(path.parent, "init", "-q", "-b", "main", str(path))
    shas = []
    for n in range(count):
        for i in range(60):
            if i % 7 == n % 7 or n == 0:
                file = path / f"dir{i % 6}" / f"file{i}.txt"
                file.parent.mkdir(exist_ok=True)
                file.write_text(f"file {i}, version {n}\n" * (1 + i % 13))
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", f"checkpoint {n}")
        shas.append(git(path, "rev-parse", "HEAD").decode().strip())
    return shas


async def test_merging_keeps_a_geometric_progression_and_every_object(
    stores: ObjectStores, owner_id: uuid.UUID, tmp_path: Path
) -> None:
    """Twenty pushes, each merged as a daemon's checkpoint would be: few packs, and every commit served whole."""
    repo = tmp_path / "agent"
    shas = chain_of_commits(repo, 20)
    counts: list[int] = []

    def scenario(store: OwnerObjectStore) -> tuple[list[int], bytes]:
        parent = None
        for sha in shas:
            push(store, git_pack(repo, [sha] if parent is None else [sha, f"^{parent}"], thin=True), sha)
            store.consolidate()
            counts.append(len(store.bucket.list_packs()))
            parent = sha
        sizes = sorted(info.object_count for info in store.bucket.list_packs())
        return sizes, outgoing_bytes(store.outgoing_pack(wants=[shas[-1]], haves=[]))

    sizes, served = await stores.run(owner_id, scenario)
    # Without merging there would be twenty packs; with it, each pack kept holds at least twice the
    # objects of the next smaller one, so there are at most log2(objects) of them.
    assert max(counts) <= 6 and len(sizes) == counts[-1]
    assert all(larger >= 2 * smaller for smaller, larger in itertools.pairwise(sizes))
    fresh = materialize(tmp_path / "fresh", served, branch_at=shas[-1])
    assert git(fresh, "fsck", "--strict", "--no-dangling") == b""
    assert ls_tree(fresh, shas[-1]) == ls_tree(repo, shas[-1])
    lacking = await stores.run(owner_id, lambda store: store.lacking(sorted(rev_list_objects(repo, shas[-1]))))
    assert lacking == []


async def test_nothing_to_merge_writes_nothing(stores: ObjectStores, owner_id: uuid.UUID, tmp_path: Path) -> None:
    repo = tmp_path / "agent"
    (first,) = chain_of_commits(repo, 1)

    def scenario(store: OwnerObjectStore) -> tuple[str | None, list[str]]:
        push(store, git_pack(repo, [first]), first)
        return store.consolidate(), [info.name for info in store.bucket.list_packs()]

    merged, names = await stores.run(owner_id, scenario)
    assert merged is None and len(names) == 1
