"""A daemon's worktree and the service's object store speak the same packs, both ways, on both backends.

Daemon A checkpoints and pushes only what the service lacks; daemon B, in another directory,
fetches from the service what it lacks and materializes exactly A's tree. The gRPC streams carry
these same chunks; here the two ends meet directly.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from makima.server.domain.objects import ObjectStores
from makima.server.git.objects import OwnerObjectStore, StoredPack
from makima.worktree import LocalWorktree, PackLimits
from tests.git.gitcli import git, status, write
from tests.git.test_restore import assert_worktree_is


def push(worktree: LocalWorktree, commit: str, offered: list[str]) -> Callable[[OwnerObjectStore], Pushed]:
    """What a push does: offer commits, learn which the service has, send only what those do not reach."""

    def exchange(store: OwnerObjectStore) -> Pushed:
        lacking = store.lacking(offered)
        outgoing = worktree.outgoing(commit, known=[sha for sha in offered if sha not in lacking])
        stored = store.receive_pack(outgoing.chunks, commit=commit, limits=PackLimits())
        return Pushed(sent=len(outgoing.object_ids), stored=stored)

    return exchange


class Pushed(NamedTuple):
    sent: int
    stored: StoredPack


async def test_push_and_fetch_between_two_daemons_through_the_service(
    stores: ObjectStores, owner_id: uuid.UUID, tmp_path: Path
) -> None:
    with LocalWorktree.init(tmp_path / "a", branch="main") as a, LocalWorktree.init(tmp_path / "b", branch="main") as b:
        for i in range(30):
            write(a.path / f"dir{i % 3}" / f"file{i}.txt", f"{i}\n" * (i + 1))
        write(a.path / "run.sh", "#!/bin/sh\n", mode=0o755)
        os.symlink("run.sh", a.path / "link")
        first = a.checkpoint("first").id.decode()

        sent, stored = await stores.run(owner_id, push(a, first, offered=[first]))
        assert stored.name is not None and sent == stored.object_count

        write(a.path / "dir1" / "file1.txt", "changed\n")
        second = a.checkpoint("second").id.decode()
        sent, stored = await stores.run(owner_id, push(a, second, offered=[second, first]))
        # The commit, the root tree, dir1's tree and one blob; a thin pack, completed by the service.
        assert sent == 4 and stored.name is not None

        # B fetches what it lacks for `first`, then only the difference to `second`.
        async def fetch(want: str, haves: list[str]) -> bytes:
            return await stores.run(owner_id, lambda s: b"".join(s.outgoing_pack(wants=[want], haves=haves).chunks))

        b.apply_pack([await fetch(first, [])], commit=first)
        b.materialize(first)
        assert git(b.path, "rev-parse", "HEAD^{tree}") == git(a.path, "rev-parse", f"{first}^{{tree}}")

        incremental = await fetch(second, [first])
        assert b.apply_pack([incremental], commit=second).object_count >= 3
        b.materialize(second)

        assert git(b.path, "rev-parse", "HEAD^{tree}") == git(a.path, "rev-parse", "HEAD^{tree}")
        assert status(b.path) == "" and git(b.path, "fsck", "--strict", "--no-dangling") == ""
        assert_worktree_is(b.path, second)


async def test_incremental_push_sends_deltas_against_what_the_service_has(
    stores: ObjectStores, owner_id: uuid.UUID, tmp_path: Path
) -> None:
    """One line changed in one of 200 files: the pack carries the change, not the directory nor the file."""
    with LocalWorktree.init(tmp_path / "a", branch="main") as a, LocalWorktree.init(tmp_path / "b", branch="main") as b:
        for i in range(200):
            write(a.path / "src" / f"module_{i:03}.py", "".join(f"value_{i}_{j} = {i * j}\n" for j in range(100)))
        first = a.checkpoint("first").id.decode()
        await stores.run(owner_id, push(a, first, offered=[first]))
        with (a.path / "src" / "module_007.py").open("a") as f:
            f.write("changed = True\n")
        second = a.checkpoint("second").id.decode()

        pack = b"".join(a.outgoing(second, known=[first]).chunks)
        # Whole, the 200-entry tree and the 2 KB file compress to about 5.5 KB; as deltas, about 350 bytes.
        assert len(pack) < 1000
        stored = await stores.run(owner_id, lambda s: s.receive_pack([pack], commit=second, limits=PackLimits()))
        assert stored.name is not None

        fetched = await stores.run(owner_id, lambda s: b"".join(s.outgoing_pack(wants=[second], haves=[]).chunks))
        b.apply_pack([fetched], commit=second)
        b.materialize(second)
        assert git(b.path, "rev-parse", "HEAD^{tree}") == git(a.path, "rev-parse", "HEAD^{tree}")
        assert_worktree_is(b.path, second)
