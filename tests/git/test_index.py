"""The index codec reads what git writes (versions 2, 3 and 4) and writes what git reads."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from makima.server.git import snapshot
from makima.worktree._index import IndexEntry, load_index, read_index, write_index
from tests.git.gitcli import checkpoint, git, status, write


def git_view(worktree: Path) -> dict[bytes, tuple[int, int, int, bytes]]:
    """What `git ls-files --debug` says of every entry: mode, size, inode and sha."""
    found = {}
    out = git(worktree, "ls-files", "-s", "--debug", "-z")
    for mode, sha, path, stats in re.findall(r"(\d{6}) ([0-9a-f]{40}) \d\t([^\0]*)\0((?:  [^\n]*\n)*)", out):
        fields = dict(re.findall(r"(\w+): (\d+)", stats))
        found[path.encode()] = (int(mode, 8), int(fields["size"]), int(fields["ino"]), sha.encode())
    return found


@pytest.mark.parametrize("version", ["2", "3", "4"])
def test_read_index_written_by_git(worktree: Path, version: str) -> None:
    write(worktree / "a.txt", "a\n")
    write(worktree / "dir" / "b ü.txt", "b\n", mode=0o755)
    os.symlink("a.txt", worktree / "link")
    write(worktree / (("d" * 50 + "/") * 6 + "long.txt"), "a long path\n")
    git(worktree, "add", "-A")
    write(worktree / "later.txt", "intent to add\n")
    git(worktree, "add", "-N", "later.txt")  # an extended flag: version 3 at least
    git(worktree, "update-index", "--index-version", version)
    index_path = worktree / ".git" / "index"

    entries = read_index(str(index_path))

    assert {name: (e.mode, e.size, e.ino, e.sha) for name, e in entries.items()} == git_view(worktree)
    assert len(entries) == 5
    assert all(e.mtime_ns > 0 for name, e in entries.items() if name != b"later.txt")


def test_written_index_is_read_back_and_accepted_by_git(worktree: Path) -> None:
    write(worktree / "a.txt", "a\n")
    write(worktree / (("e" * 200 + "/") * 10 + "deep.txt"), "a path longer than 2,000 bytes\n")
    checkpoint(worktree)
    index_path = worktree / ".git" / "index"
    entries = read_index(str(index_path))

    write_index(str(index_path), entries)

    assert read_index(str(index_path)) == entries
    assert git(worktree, "ls-files", "-s").count("\n") == 2
    assert status(worktree) == ""


def test_corrupt_index_is_read_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "index"
    sha = b"e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    write_index(str(path), {b"f": IndexEntry(1, 2, 3, 4, 0o100644, 5, 6, 0, sha)})  # type: ignore[arg-type]
    data = bytearray(path.read_bytes())
    data[20] ^= 0xFF
    path.write_bytes(bytes(data))

    assert read_index(str(path)) == {}
    assert read_index(str(tmp_path / "missing")) == {}


def test_an_index_this_process_wrote_is_loaded_from_memory_until_another_writer_replaces_it(worktree: Path) -> None:
    write(worktree / "a.txt", "a\n")
    write(worktree / "b.txt", "b\n")
    shot = checkpoint(worktree)  # writes the index for its tree
    index_path = str(worktree / ".git" / "index")

    loaded = load_index(index_path)
    assert loaded.tree == shot.tree_sha.encode() and loaded.entries == read_index(index_path)
    git(worktree, "update-index", "--force-remove", "b.txt")  # git's own write: a new file renamed in place
    after_git = load_index(index_path)

    assert after_git.tree is None and set(after_git.entries) == {b"a.txt"}


def test_a_snapshot_sees_what_git_tracked_since_the_index_was_written(worktree: Path) -> None:
    write(worktree / ".gitignore", "*.log\n")
    write(worktree / "a.txt", "a\n")
    write(worktree / "kept.log", "ignored, then tracked by git add -f\n")
    first = checkpoint(worktree)
    git(worktree, "add", "-f", "kept.log")

    second = snapshot(worktree, branch="main", message="again")

    assert second.tree_sha != first.tree_sha
    assert git(worktree, "show", f"{second.commit_sha}:kept.log") == "ignored, then tracked by git add -f\n"
