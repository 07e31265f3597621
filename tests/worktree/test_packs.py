"""Pack indexes shared by every operation of the process, as long as the file is the same."""

from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path

from dulwich.object_format import DEFAULT_OBJECT_FORMAT
from dulwich.objects import ObjectID

from makima.worktree.packs import shared_index
from tests.git.gitcli import git, write


def packed_repository(path: Path) -> tuple[str, ObjectID]:
    """A repository whose objects are in one pack: the index's path and the commit's id."""
    git(path.parent, "init", "-q", "-b", "main", str(path))
    write(path / "a.txt", "a\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "one")
    git(path, "repack", "-a", "-d", "-q")
    [index] = glob.glob(os.path.join(path, ".git", "objects", "pack", "*.idx"))
    return index, ObjectID(git(path, "rev-parse", "HEAD").strip().encode())


def test_an_index_is_mapped_once_and_a_closed_view_leaves_the_others_working(tmp_path: Path) -> None:
    index, commit = packed_repository(tmp_path / "repo")

    first = shared_index(index, DEFAULT_OBJECT_FORMAT)
    second = shared_index(index, DEFAULT_OBJECT_FORMAT)
    offset = first.object_offset(commit)
    first.close()

    assert first is not second and first._contents is second._contents  # type: ignore[attr-defined]
    assert second.object_offset(commit) == offset


def test_a_new_file_at_the_same_path_is_mapped_anew(tmp_path: Path) -> None:
    index, commit = packed_repository(tmp_path / "repo")
    before = shared_index(index, DEFAULT_OBJECT_FORMAT)
    shutil.copyfile(index, index + ".new")
    os.replace(index + ".new", index)

    after = shared_index(index, DEFAULT_OBJECT_FORMAT)

    assert after._contents is not before._contents  # type: ignore[attr-defined]
    assert after.object_offset(commit) == before.object_offset(commit)
