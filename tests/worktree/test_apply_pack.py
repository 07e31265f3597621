"""apply_pack takes a pack from the service only after the checks the service applies to uploads.

The hostile cases are those of the object store's suite (tests/objects/test_hostile_packs.py): the
daemon refuses them for the same reason, and its `.git` is left exactly as it was.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from dulwich.objects import Blob

from makima.worktree import InvalidPackError, LocalWorktree, PackLimits
from tests.git.gitcli import git, status
from tests.objects.helpers import History, blob, commit, git_pack, pack_bytes, tree
from tests.objects.test_hostile_packs import DIR, FILE, HOSTILE_NAMES, inflated_size, one_commit


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[LocalWorktree]:
    with LocalWorktree.init(tmp_path / "daemon", branch="main") as worktree:
        yield worktree


def git_dir_listing(worktree: LocalWorktree) -> list[tuple[str, int]]:
    """Every file under .git with its size: what a refused pack must leave as it was."""
    git_dir = worktree.path / ".git"
    return sorted(
        (os.path.relpath(os.path.join(d, f), git_dir), os.lstat(os.path.join(d, f)).st_size)
        for d, _dirs, files in os.walk(git_dir)
        for f in files
    )


def refused(
    worktree: LocalWorktree, pack: bytes, declared: str | None, *, limits: PackLimits | None = None
) -> InvalidPackError:
    before = git_dir_listing(worktree)
    with pytest.raises(InvalidPackError) as caught:
        worktree.apply_pack([pack[i : i + 4096] for i in range(0, len(pack), 4096)], commit=declared, limits=limits)
    assert git_dir_listing(worktree) == before
    return caught.value


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=repr)
def test_unsafe_names_are_refused(daemon: LocalWorktree, name: bytes) -> None:
    pack, sha = one_commit((name, FILE, blob(b"payload\n")))
    error = refused(daemon, pack, sha)
    assert error.metadata["problem"] == "unsafe_path" and error.metadata["path"] == name.decode()


def test_a_dot_git_below_the_root_is_refused(daemon: LocalWorktree) -> None:
    config = blob(b"[core]\n")
    dotgit = tree((b"config", FILE, config))
    inner = tree((b".git", DIR, dotgit))
    pack, sha = one_commit((b"sub", DIR, inner), extra=(dotgit, config))
    error = refused(daemon, pack, sha)
    assert error.metadata["problem"] == "unsafe_path" and error.metadata["path"] == ".git"


@pytest.mark.parametrize("mode", [0o100664, 0o100777, 0o040755, 0o020000])
def test_modes_other_than_gits_five_are_refused(daemon: LocalWorktree, mode: int) -> None:
    pack, sha = one_commit((b"file", mode, blob(b"payload\n")))
    assert refused(daemon, pack, sha).metadata["problem"] == "bad_mode"


def test_missing_objects_and_a_missing_commit_are_refused(daemon: LocalWorktree) -> None:
    present, absent = blob(b"present\n"), blob(b"absent\n")
    root = tree((b"a", FILE, present), (b"b", FILE, absent))
    top = commit(root)
    error = refused(daemon, pack_bytes([top, root, present]), top.id.decode())
    assert error.metadata == {"problem": "missing_object", "object": absent.id.decode()}
    pack, _sha = one_commit((b"a", FILE, present))
    assert refused(daemon, pack, "0" * 40).metadata == {"problem": "missing_commit", "object": "0" * 40}


def test_bad_hashes_and_corrupt_bytes_are_refused(daemon: LocalWorktree) -> None:
    pack, sha = one_commit((b"a", FILE, blob(b"x" * 5000)))
    broken = bytearray(pack)
    broken[len(pack) // 2] ^= 0xFF
    assert refused(daemon, bytes(broken), sha).metadata["problem"] == "corrupt"
    body = bytes(broken[:-20])
    assert refused(daemon, body + hashlib.sha1(body).digest(), sha).metadata["problem"] == "corrupt"
    assert refused(daemon, pack[:-30], sha).metadata["problem"] == "corrupt"
    assert refused(daemon, pack + b"junk", sha).metadata["problem"] == "corrupt"
    # An object whose declared size lies about its stream.
    data = zlib.compress(b"y" * 5000)
    lie = b"PACK" + (2).to_bytes(4, "big") + (1).to_bytes(4, "big") + bytes([(Blob.type_num << 4) | 4]) + data
    assert refused(daemon, lie + hashlib.sha1(lie).digest(), None).metadata["problem"] == "corrupt"


def test_limits_are_enforced(daemon: LocalWorktree) -> None:
    pack, sha = one_commit((b"a", FILE, blob(b"z" * 100_000)), (b"b", FILE, blob(b"small\n")))
    error = refused(daemon, pack, sha, limits=PackLimits(max_pack_bytes=len(pack) - 1))
    assert error.metadata["problem"] == "too_large"
    error = refused(daemon, pack, sha, limits=PackLimits(max_objects=3))
    assert error.metadata == {"problem": "too_many_objects", "value": "4", "limit": "3"}
    error = refused(daemon, pack, sha, limits=PackLimits(max_inflated_bytes=50_000))
    assert error.metadata["problem"] == "too_large"
    exact = PackLimits(max_pack_bytes=len(pack), max_objects=4, max_inflated_bytes=inflated_size(pack))
    assert daemon.apply_pack([pack], commit=sha, limits=exact).name is not None


def test_a_thin_pack_is_completed_from_local_bases_and_refused_without_them(
    daemon: LocalWorktree, history: History
) -> None:
    thin = git_pack(history.path, [history.second, f"^{history.first}"], thin=True)
    assert refused(daemon, thin, history.second).metadata["problem"] == "missing_object"

    daemon.apply_pack([git_pack(history.path, [history.first])], commit=history.first)
    stored = daemon.apply_pack([thin], commit=history.second)
    daemon.materialize(history.second)

    assert stored.name is not None
    assert git(daemon.path, "rev-parse", "HEAD^{tree}") == git(history.path, "rev-parse", f"{history.second}^{{tree}}")
    assert status(daemon.path) == "" and git(daemon.path, "fsck", "--strict", "--no-dangling") == ""
    # Every pack stands alone: git can read each one without the others.
    for index in (daemon.path / ".git" / "objects" / "pack").glob("*.idx"):
        git(daemon.path, "verify-pack", str(index))


def test_a_pack_already_held_adds_nothing(daemon: LocalWorktree, history: History) -> None:
    pack = git_pack(history.path, [history.first])
    assert daemon.apply_pack([pack], commit=history.first).name is not None
    before = git_dir_listing(daemon)
    assert daemon.apply_pack([pack], commit=history.first).name is None
    assert git_dir_listing(daemon) == before
