"""restore: worktree and index become exactly a commit's tree, and nothing outside is ever written."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from makima.server.git import (
    FileChange,
    GitError,
    RefNotFoundError,
    UntrackedInTheWayError,
    compare,
    publish,
    restore,
    rewind,
    snapshot,
)
from tests.git.gitcli import checkpoint, files_on_disk, git, git_ok, ls_files, ls_tree, status, write


def assert_worktree_is(worktree: Path, commit: str, *, ignored: dict[str, bytes] | None = None) -> None:
    """Index, worktree files and modes equal the commit's tree (plus the given ignored files)."""
    assert ls_files(worktree) == ls_tree(worktree, commit)
    assert git_ok(worktree, "diff", "--quiet", commit)  # worktree against the commit
    assert git_ok(worktree, "diff", "--cached", "--quiet", commit)  # index against the commit
    entries = [line.split(" ", 2) for line in ls_tree(worktree, commit)]
    contents = blobs(worktree, [sha for _, sha, _ in entries])
    expected: dict[str, bytes] = {}
    for mode, sha, path in entries:
        expected[path] = b"link:" + contents[sha] if mode == "120000" else contents[sha]
        if mode != "120000":
            assert os.access(worktree / path, os.X_OK) == (mode == "100755"), path
    assert files_on_disk(worktree) == {**expected, **(ignored or {})}


def blobs(cwd: Path, shas: list[str]) -> dict[str, bytes]:
    """Contents of the given blobs, read with one `git cat-file --batch`."""
    out = subprocess.run(
        ["git", "cat-file", "--batch"],
        cwd=cwd,
        input="".join(f"{sha}\n" for sha in shas).encode(),
        capture_output=True,
        check=True,
    ).stdout
    found: dict[str, bytes] = {}
    while out:
        header, _, out = out.partition(b"\n")
        sha, _, size = header.decode().split(" ")
        found[sha], out = out[: int(size)], out[int(size) + 1 :]
    return found


@pytest.fixture
def two_checkpoints(worktree: Path) -> tuple[Path, str, str]:
    """Checkpoint A with a bit of everything, then checkpoint B that changes all of it."""
    write(worktree / ".gitignore", "*.log\ncache/\n")
    write(worktree / "same.txt", "untouched\n")
    write(worktree / "edit.txt", "version A\n")
    write(worktree / "tool.sh", "#!/bin/sh\n", mode=0o755)
    write(worktree / "flip.sh", "#!/bin/sh\n", mode=0o644)
    write(worktree / "deep" / "er" / "file.txt", "deep A\n")
    write(worktree / "becomes-link.txt", "a file in A\n")
    write(worktree / "dir-becomes-file" / "inner.txt", "in a directory in A\n")
    os.symlink("same.txt", worktree / "link")
    write(worktree / "image.bin", bytes(range(256)))
    a = checkpoint(worktree, message="A").commit_sha

    write(worktree / "edit.txt", "version B, longer\n")
    (worktree / "tool.sh").unlink()
    (worktree / "flip.sh").chmod(0o755)
    write(worktree / "deep" / "er" / "file.txt", "deep B\n")
    write(worktree / "new" / "nested" / "dirs" / "n.txt", "new in B\n")
    write(worktree / "top-new.txt", "new in B\n")
    (worktree / "becomes-link.txt").unlink()
    os.symlink("edit.txt", worktree / "becomes-link.txt")
    for child in (worktree / "dir-becomes-file").iterdir():
        child.unlink()
    (worktree / "dir-becomes-file").rmdir()
    write(worktree / "dir-becomes-file", "now a file\n")
    (worktree / "link").unlink()
    os.symlink("edit.txt", worktree / "link")
    write(worktree / "image.bin", bytes(reversed(range(256))))
    b = checkpoint(worktree, message="B").commit_sha
    return worktree, a, b


def test_restore_makes_worktree_and_index_exactly_the_commit(two_checkpoints: tuple[Path, str, str]) -> None:
    worktree, a, b = two_checkpoints

    restore(worktree, commit_sha=a)

    assert_worktree_is(worktree, a)
    assert not (worktree / "new").exists()  # directories left empty are removed
    assert git(worktree, "rev-parse", "main").strip() == b  # refs do not move
    assert status(worktree) == git(worktree, "diff", "--cached", "--name-status", "--no-renames", b).replace("\t", "  ")


def test_restore_forward_again_and_to_the_same_commit(two_checkpoints: tuple[Path, str, str]) -> None:
    worktree, a, b = two_checkpoints
    restore(worktree, commit_sha=a)

    restore(worktree, commit_sha=b)
    assert_worktree_is(worktree, b)
    assert status(worktree) == ""

    assert restore(worktree, commit_sha=b) == []
    assert_worktree_is(worktree, b)


def test_restore_reports_what_compare_against_the_worktree_showed(two_checkpoints: tuple[Path, str, str]) -> None:
    worktree, a, _ = two_checkpoints
    write(worktree / "uncommitted.txt", "will be removed\n")
    before = compare(worktree, base_sha=a, target_sha=None)
    inverse = {"added": "deleted", "deleted": "added", "modified": "modified"}

    changes = restore(worktree, commit_sha=a)

    assert changes == [FileChange(c.path, inverse[c.change]) for c in before]  # type: ignore[arg-type]
    assert FileChange("uncommitted.txt", "deleted") in changes
    assert FileChange("tool.sh", "added") in changes
    assert FileChange("flip.sh", "modified") in changes
    assert compare(worktree, base_sha=a, target_sha=None) == []


def test_restore_removes_new_files_but_keeps_ignored_ones(two_checkpoints: tuple[Path, str, str]) -> None:
    worktree, a, _ = two_checkpoints
    write(worktree / "scratch.txt", "new, not ignored\n")
    write(worktree / "newdir" / "x.txt", "new, not ignored\n")
    write(worktree / "debug.log", "ignored\n")
    write(worktree / "cache" / "blob", "ignored directory\n")
    write(worktree / "new" / "nested" / "keep.log", "ignored, inside a directory A does not have\n")

    restore(worktree, commit_sha=a)

    ignored = {
        "debug.log": b"ignored\n",
        "cache/blob": b"ignored directory\n",
        "new/nested/keep.log": b"ignored, inside a directory A does not have\n",
    }
    assert_worktree_is(worktree, a, ignored=ignored)
    assert not (worktree / "newdir").exists()


def test_restore_brings_back_deleted_files_and_leaves_unrelated_empty_dirs(worktree: Path) -> None:
    write(worktree / "a" / "b" / "c.txt", "c\n")
    write(worktree / "d.txt", "d\n")
    a = checkpoint(worktree).commit_sha
    (worktree / "a" / "b" / "c.txt").unlink()
    (worktree / "a" / "b").rmdir()
    (worktree / "d.txt").unlink()
    (worktree / "empty-by-the-user").mkdir()

    changes = restore(worktree, commit_sha=a)

    assert changes == [FileChange("a/b/c.txt", "added"), FileChange("d.txt", "added")]
    assert_worktree_is(worktree, a)
    assert (worktree / "empty-by-the-user").is_dir()


def test_restore_never_writes_through_a_symlinked_directory(worktree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside / "file.txt", "outside, must stay\n")
    write(worktree / "sub" / "file.txt", "inside\n")
    write(worktree / "ign" / "file.txt", "inside too\n")
    a = checkpoint(worktree).commit_sha
    # The agent swaps the directories for links to the outside, one visible and one it ignores,
    # so that restore does not see it as a file of the worktree to remove first.
    for name in ("sub", "ign"):
        (worktree / name / "file.txt").unlink()
        (worktree / name).rmdir()
        os.symlink(outside, worktree / name)
    write(worktree / ".gitignore", "/ign\n")
    assert [c.path for c in compare(worktree, base_sha=a, target_sha=None)] == [
        ".gitignore",
        "ign/file.txt",
        "sub",
        "sub/file.txt",
    ]
    before = files_on_disk(outside)

    # The ignored link holds nothing a commit has: only a forced restore replaces it.
    with pytest.raises(UntrackedInTheWayError):
        restore(worktree, commit_sha=a)
    assert (worktree / "ign").is_symlink()
    restore(worktree, commit_sha=a, force=True)

    assert files_on_disk(outside) == before == {"file.txt": b"outside, must stay\n"}
    for name in ("sub", "ign"):
        assert not (worktree / name).is_symlink()
        assert (worktree / name / "file.txt").read_text() == ("inside\n" if name == "sub" else "inside too\n")
    assert_worktree_is(worktree, a)


def test_restore_replaces_file_symlinks_and_hard_links_instead_of_writing_through(
    worktree: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    write(outside / "secret.txt", "outside secret\n")
    write(outside / "linked.txt", "outside linked\n")
    write(worktree / "a.txt", "inside a\n")
    write(worktree / "h.txt", "inside h\n")
    a = checkpoint(worktree).commit_sha
    (worktree / "a.txt").unlink()
    os.symlink(outside / "secret.txt", worktree / "a.txt")
    (worktree / "h.txt").unlink()
    os.link(outside / "linked.txt", worktree / "h.txt")
    before = files_on_disk(outside)

    restore(worktree, commit_sha=a)

    assert files_on_disk(outside) == before
    assert (outside / "linked.txt").stat().st_nlink == 1
    assert_worktree_is(worktree, a)


def test_restore_writes_over_a_changed_file_of_its_own_and_replaces_a_read_only_one(worktree: Path) -> None:
    write(worktree / "own.txt", "short\n")
    write(worktree / "locked.txt", "locked A\n")
    write(worktree / "tool.sh", "#!/bin/sh\n", mode=0o755)
    a = checkpoint(worktree).commit_sha
    write(worktree / "own.txt", "a much longer content than the checkpoint's\n" * 20)
    write(worktree / "locked.txt", "locked B\n", mode=0o444)
    write(worktree / "tool.sh", "#!/bin/sh\nexit 1\n", mode=0o644)
    own = (worktree / "own.txt").stat().st_ino

    restore(worktree, commit_sha=a)

    # Written where it stands (no file created), cut to the shorter content.
    assert (worktree / "own.txt").stat().st_ino == own
    assert (worktree / "locked.txt").stat().st_mode & 0o200
    assert_worktree_is(worktree, a)
    assert status(worktree) == ""


def test_rewind_from_the_safety_snapshot_restores_and_commits_on_top_of_it(
    two_checkpoints: tuple[Path, str, str],
) -> None:
    worktree, a, _b = two_checkpoints
    write(worktree / "edit.txt", "uncommitted\n")
    write(worktree / "new.txt", "untracked\n")
    (worktree / "same.txt").unlink()
    safety = snapshot(worktree, branch="main", message="safety")

    done = rewind(worktree, commit_sha=a, parent_sha=safety.commit_sha, message="rewind", worktree=safety)
    publish(worktree, branch="main", snapshot=safety, write_index=False)
    publish(worktree, branch="main", snapshot=done.commit, write_index=False)

    assert_worktree_is(worktree, a)
    assert status(worktree) == ""
    assert git(worktree, "rev-parse", "HEAD^{tree}").strip() == git(worktree, "rev-parse", f"{a}^{{tree}}").strip()
    assert git(worktree, "rev-parse", "HEAD^").strip() == safety.commit_sha
    assert git(worktree, "show", f"{safety.commit_sha}:new.txt") == "untracked\n"
    assert done.changes == compare(worktree, base_sha=safety.commit_sha, target_sha=a)


def test_restore_of_a_tree_with_a_link_to_the_outside_writes_the_link_only(worktree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, worktree / "escape")
    a = checkpoint(worktree).commit_sha
    (worktree / "escape").unlink()
    write(worktree / "escape" / "file.txt", "a directory now\n")

    restore(worktree, commit_sha=a)

    assert os.readlink(worktree / "escape") == str(outside)
    assert list(outside.iterdir()) == []
    assert_worktree_is(worktree, a)


def test_restore_of_an_unknown_commit_changes_nothing(two_checkpoints: tuple[Path, str, str]) -> None:
    worktree, _, b = two_checkpoints
    before = files_on_disk(worktree)

    with pytest.raises(RefNotFoundError):
        restore(worktree, commit_sha="1" * 40)
    with pytest.raises(RefNotFoundError):
        restore(worktree, commit_sha="not-a-sha")

    assert files_on_disk(worktree) == before
    assert_worktree_is(worktree, b)


def test_restore_of_a_thousand_files(worktree: Path) -> None:
    for i in range(1000):
        write(worktree / f"d{i % 25}" / f"f{i}.txt", f"{i}\n")
    a = checkpoint(worktree).commit_sha
    for i in range(0, 1000, 10):
        write(worktree / f"d{i % 25}" / f"f{i}.txt", "modified\n")
    for i in range(50):
        write(worktree / "added" / f"n{i}.txt", "new\n")
    for i in range(1, 1000, 50):
        (worktree / f"d{i % 25}" / f"f{i}.txt").unlink()
    checkpoint(worktree)

    changes = restore(worktree, commit_sha=a)

    assert len(changes) == 100 + 50 + 20
    assert_worktree_is(worktree, a)


@pytest.mark.parametrize("hostile", [b"..", b".git", b".GIT"])
def test_restore_refuses_a_tree_with_a_path_into_git_or_out(worktree: Path, tmp_path: Path, hostile: bytes) -> None:
    from dulwich.objects import Blob, Commit, Tree
    from dulwich.repo import Repo

    write(worktree / "a.txt", "a\n")
    a = checkpoint(worktree).commit_sha
    with Repo(str(worktree)) as repo:
        blob = Blob.from_string(b"planted\n")
        inner = Tree()
        inner.add(b"config", 0o100644, blob.id)
        root = Tree()
        root.add(hostile, 0o040000, inner.id)
        a_tree = repo[repo[a.encode()].tree]
        assert isinstance(a_tree, Tree)
        root.add(b"a.txt", 0o100644, a_tree[b"a.txt"][1])
        commit = Commit()
        commit.tree, commit.parents = root.id, []
        commit.author = commit.committer = b"x <x@x>"
        commit.author_time = commit.commit_time = 0
        commit.author_timezone = commit.commit_timezone = 0
        commit.message = b"hostile\n"
        for obj in (blob, inner, root, commit):
            repo.object_store.add_object(obj)
    before = files_on_disk(worktree)
    config_before = (worktree / ".git" / "config").read_bytes()

    with pytest.raises(GitError):
        restore(worktree, commit_sha=commit.id.decode())

    assert files_on_disk(worktree) == before
    assert (worktree / ".git" / "config").read_bytes() == config_before
    assert not (worktree.parent / "config").exists()
