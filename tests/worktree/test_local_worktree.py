"""LocalWorktree, the daemon's worktree, with the git command line as the oracle."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest
from dulwich.objects import Blob, Commit, ShaFile, Tree
from dulwich.repo import Repo

from makima.worktree import FileChange, GitError, LocalWorktree, NotARepositoryError, RefNotFoundError
from makima.worktree.trees import IDENTITY
from tests.git.gitcli import age, files_on_disk, git, git_add_all_tree, git_ok, ls_files, ls_tree, status, write
from tests.git.test_restore import assert_worktree_is
from tests.objects.helpers import rev_list_objects

NOT_UTF8 = b"caf\xe9 \xff.txt"


def write_everything(root: Path) -> None:
    """Binary, executable, symlinks, an empty directory, unicode and non-UTF-8 names, ignored files."""
    write(root / ".gitignore", "*.log\nbuild/\n")
    write(root / "README.md", "# readme\n")
    write(root / "data.bin", bytes(range(256)) + b"\x00\xff" * 100)
    write(root / "run.sh", "#!/bin/sh\necho hi\n", mode=0o755)
    write(root / "src" / "deep" / "module.py", "x = 1\n")
    write(root / "héllo wörld.txt", "unicode\n")
    with open(os.path.join(os.fsencode(root), NOT_UTF8), "wb") as f:
        f.write(b"latin-1 name\n")
    os.symlink("README.md", root / "link")
    os.symlink("../outside/nowhere", root / "dangling")
    (root / "empty-dir").mkdir()
    write(root / "debug.log", "ignored\n")
    write(root / "build" / "out.o", b"\x7fELF ignored")


def expected_listing(root: Path) -> list[str]:
    """`git ls-tree -r` lines (mode, sha, path) of what write_everything made, hashed by git itself."""
    entries = [
        ("100644", ".gitignore"),
        ("100644", "README.md"),
        ("100644", "data.bin"),
        ("100755", "run.sh"),
        ("100644", "src/deep/module.py"),
        ("100644", "héllo wörld.txt"),
        ("100644", os.fsdecode(NOT_UTF8)),
    ]
    lines = [f"{mode} {git(root, 'hash-object', '--', path).strip()} {path}" for mode, path in entries]
    # A symlink is stored as a blob of its target.
    for link, target in (("link", b"README.md"), ("dangling", b"../outside/nowhere")):
        lines.append(f"120000 {Blob.from_string(target).id.decode()} {link}")
    return sorted(lines)


def test_checkpoint_commits_what_git_add_all_would(tmp_path: Path) -> None:
    with LocalWorktree.init(tmp_path / "wt", branch="task/1") as wt:
        write_everything(wt.path)

        commit = wt.checkpoint("first")

        assert status(wt.path) == ""
        assert git(wt.path, "rev-parse", "HEAD").strip() == commit.id.decode() == wt.head
        assert git(wt.path, "symbolic-ref", "HEAD").strip() == "refs/heads/task/1"
        assert ls_tree(wt.path, "HEAD") == expected_listing(wt.path)
        assert commit.tree.decode() == git_add_all_tree(wt.path, tmp_path)
        assert commit.parents == [] and commit.author == IDENTITY and commit.message == b"first\n"
        assert git(wt.path, "fsck", "--strict", "--no-dangling") == ""

        write(wt.path / "README.md", "# changed\n")
        (wt.path / "run.sh").unlink()
        second = wt.checkpoint("second")

        assert status(wt.path) == ""
        assert second.parents == [commit.id]
        assert second.tree.decode() == git_add_all_tree(wt.path, tmp_path)
        assert git(wt.path, "diff", "--name-status", commit.id.decode(), second.id.decode()).split() == [
            "M",
            "README.md",
            "D",
            "run.sh",
        ]


def test_checkpoint_on_a_given_parent(tmp_path: Path) -> None:
    with LocalWorktree.init(tmp_path / "wt", branch="main") as wt:
        write(wt.path / "a.txt", "1\n")
        one = wt.checkpoint("one")
        write(wt.path / "a.txt", "2\n")
        wt.checkpoint("two")
        write(wt.path / "a.txt", "3\n")

        three = wt.checkpoint("three on one", parent=one.id.decode())

        assert three.parents == [one.id]
        assert wt.head == three.id.decode() and status(wt.path) == ""
        with pytest.raises(RefNotFoundError):
            wt.checkpoint("on nothing", parent="0" * 40)
        assert wt.head == three.id.decode()


def test_outgoing_sends_only_what_the_known_commits_lack(tmp_path: Path) -> None:
    with LocalWorktree.init(tmp_path / "wt", branch="main") as wt:
        for i in range(20):
            write(wt.path / f"pkg{i % 4}" / f"f{i}.txt", random.Random(i).randbytes(2000).hex())
        first = wt.checkpoint("first").id.decode()
        write(wt.path / "pkg1" / "f1.txt", "changed\n")
        write(wt.path / "pkg1" / "f5.txt", "changed too\n")
        write(wt.path / "pkg1" / "new.txt", "new\n")
        second = wt.checkpoint("second").id.decode()

        incremental = wt.outgoing(second, known=[first])
        incremental_bytes = b"".join(incremental.chunks)
        full = wt.outgoing(second)
        full_bytes = b"".join(full.chunks)

        # The commit, the root tree, pkg1's tree and three blobs: nothing else crosses.
        assert len(incremental.object_ids) == 6
        assert set(incremental.object_ids) == rev_list_objects(wt.path, second, f"^{first}")
        assert set(full.object_ids) == rev_list_objects(wt.path, second)
        assert len(incremental_bytes) < len(full_bytes) / 5  # bytes grow with the change
        # A commit the local store does not hold is no help and no harm.
        assert wt.outgoing(second, known=[first, "1" * 40]).object_ids == incremental.object_ids
        assert wt.outgoing(second, known=[second]).object_ids == []
        with pytest.raises(RefNotFoundError):
            wt.outgoing("2" * 40)


def test_chunks_are_bounded(tmp_path: Path) -> None:
    with LocalWorktree.init(tmp_path / "wt", branch="main") as wt:
        write(wt.path / "big.bin", os.urandom(200_000))
        sha = wt.checkpoint("big").id.decode()
        chunks = list(wt.outgoing(sha, chunk_size=65536).chunks)
        assert len(chunks) >= 4 and all(len(c) == 65536 for c in chunks[:-1]) and 0 < len(chunks[-1]) <= 65536


def test_a_pack_applied_in_another_directory_materializes_the_same_tree(tmp_path: Path) -> None:
    """Daemon A checkpoints; daemon B, elsewhere, receives only the objects and gets the same tree."""
    with LocalWorktree.init(tmp_path / "a", branch="main") as a, LocalWorktree.init(tmp_path / "b", branch="b") as b:
        write_everything(a.path)
        first = a.checkpoint("first").id.decode()

        stored = b.apply_pack(a.outgoing(first).chunks, commit=first)
        changes = b.materialize(first)

        assert stored.name is not None and stored.object_count == len(a.outgoing(first).object_ids)
        assert git(b.path, "rev-parse", "HEAD^{tree}") == git(a.path, "rev-parse", "HEAD^{tree}")
        assert git(b.path, "rev-parse", "HEAD").strip() == first == b.head
        assert status(b.path) == ""
        assert_worktree_is(b.path, first)
        assert FileChange(os.fsdecode(NOT_UTF8), "added") in changes and FileChange("link", "added") in changes
        assert git(b.path, "fsck", "--strict", "--no-dangling") == ""

        # Incremental both ways: a thin pack against what B has, and only changed files rewritten.
        age(b.path)
        kept_inode = os.lstat(b.path / "data.bin").st_ino
        write(a.path / "src" / "deep" / "module.py", "x = 2\n")
        (a.path / "link").unlink()
        second = a.checkpoint("second").id.decode()
        outgoing = a.outgoing(second, known=[first])
        b.apply_pack(outgoing.chunks, commit=second)
        changes = b.materialize(second)

        assert changes == [FileChange("link", "deleted"), FileChange("src/deep/module.py", "modified")]
        assert os.lstat(b.path / "data.bin").st_ino == kept_inode
        assert git(b.path, "rev-parse", "HEAD^{tree}") == git(a.path, "rev-parse", "HEAD^{tree}")
        assert status(b.path) == "" and git(b.path, "fsck", "--strict", "--no-dangling") == ""
        assert_worktree_is(b.path, second)


def test_materialize_an_older_commit_removes_and_restores_files(tmp_path: Path) -> None:
    with LocalWorktree.init(tmp_path / "wt", branch="main") as wt:
        write(wt.path / ".gitignore", "*.log\n")
        write(wt.path / "a.txt", "a1\n")
        write(wt.path / "dir" / "b.txt", "b1\n")
        write(wt.path / "tool.sh", "#!/bin/sh\n", mode=0o644)
        os.symlink("a.txt", wt.path / "link")
        first = wt.checkpoint("first").id.decode()
        write(wt.path / "a.txt", "a2\n")
        shutil.rmtree(wt.path / "dir")
        write(wt.path / "new" / "deep" / "c.txt", "c2\n")
        (wt.path / "tool.sh").chmod(0o755)
        (wt.path / "link").unlink()
        write(wt.path / "link", "now a file\n")
        second = wt.checkpoint("second").id.decode()
        write(wt.path / "untracked.txt", "never checkpointed\n")
        write(wt.path / "debug.log", "ignored\n")

        changes = wt.materialize(first)

        assert changes == [
            FileChange("a.txt", "modified"),
            FileChange("dir/b.txt", "added"),
            FileChange("link", "modified"),
            FileChange("new/deep/c.txt", "deleted"),
            FileChange("tool.sh", "modified"),
            FileChange("untracked.txt", "deleted"),
        ]
        assert not (wt.path / "new").exists()
        assert wt.head == first and status(wt.path) == ""
        assert_worktree_is(wt.path, first, ignored={"debug.log": b"ignored\n"})

        wt.materialize(second)
        assert wt.head == second and status(wt.path) == ""
        assert_worktree_is(wt.path, second, ignored={"debug.log": b"ignored\n"})


def test_materialize_the_empty_commit_sha_empties_the_worktree(tmp_path: Path) -> None:
    with LocalWorktree.init(tmp_path / "wt", branch="main") as wt:
        # Ignored through .git/info/exclude, which outlives the tree's own .gitignore.
        write(wt.path / ".git" / "info" / "exclude", "*.log\n")
        write(wt.path / ".gitignore", "*.tmp\n")
        write(wt.path / "a" / "b.txt", "b\n")
        write(wt.path / "debug.log", "ignored\n")
        wt.checkpoint("one")

        wt.materialize("")

        assert wt.head is None and not git_ok(wt.path, "rev-parse", "--verify", "-q", "HEAD")
        assert files_on_disk(wt.path) == {"debug.log": b"ignored\n"}
        assert status(wt.path) == "" and ls_files(wt.path) == []


def test_materialize_a_commit_that_is_not_here_changes_nothing(tmp_path: Path) -> None:
    with LocalWorktree.init(tmp_path / "wt", branch="main") as wt:
        write(wt.path / "a.txt", "a\n")
        head = wt.checkpoint("one").id.decode()
        write(wt.path / "a.txt", "uncheckpointed\n")
        before = files_on_disk(wt.path)
        # A commit whose tree names a blob the store lacks: found before any file is touched.
        blob = Blob.from_string(b"absent\n")
        root = Tree()
        root.add(b"z.txt", 0o100644, blob.id)
        partial = _commit(root)
        add_objects(wt.path, root, partial)

        with pytest.raises(RefNotFoundError):
            wt.materialize("3" * 40)
        with pytest.raises(RefNotFoundError):
            wt.materialize(partial.id.decode())

        assert files_on_disk(wt.path) == before and wt.head == head


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        (b".git", 0o040000),
        (b".GIT", 0o040000),
        (b"git~1", 0o040000),
        (b".git.", 0o040000),
        (".g\u200cit".encode(), 0o040000),
        (b".gitmodules", 0o120000),
    ],
    ids=repr,
)
def test_materialize_refuses_what_the_intake_refuses(tmp_path: Path, name: bytes, mode: int) -> None:
    """One tree-name rule: a commit that reached the store another way still cannot write into .git."""
    with LocalWorktree.init(tmp_path / "wt", branch="main") as wt:
        write(wt.path / "a.txt", "a\n")
        head = wt.checkpoint("one").id.decode()
        blob = Blob.from_string(b"[core]\n\thooksPath = /tmp\n")
        inner = Tree()
        inner.add(b"config", 0o100644, blob.id)
        root = Tree()
        root.add(name, mode, inner.id if mode == 0o040000 else blob.id)
        hostile = _commit(root)
        add_objects(wt.path, blob, inner, root, hostile)
        before = files_on_disk(wt.path)
        config = (wt.path / ".git" / "config").read_bytes()

        with pytest.raises(GitError) as caught:
            wt.materialize(hostile.id.decode())

        assert caught.value.metadata["path"].startswith(name.decode("utf-8", "surrogateescape"))
        assert files_on_disk(wt.path) == before and wt.head == head
        assert (wt.path / ".git" / "config").read_bytes() == config


def test_materialize_never_writes_through_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    with LocalWorktree.init(tmp_path / "wt", branch="main") as wt:
        write(wt.path / "dir" / "file.txt", "inside\n")
        write(wt.path / "top.txt", "top\n")
        first = wt.checkpoint("one").id.decode()
        # The agent swaps the directory and a file for links that lead outside.
        shutil.rmtree(wt.path / "dir")
        os.symlink(outside, wt.path / "dir")
        (wt.path / "top.txt").unlink()
        os.symlink(outside / "victim.txt", wt.path / "top.txt")

        wt.materialize(first)

        assert list(outside.iterdir()) == []
        assert not (wt.path / "dir").is_symlink() and (wt.path / "dir" / "file.txt").read_text() == "inside\n"
        assert status(wt.path) == ""


def test_open_finds_the_branch_and_refuses_what_is_not_a_worktree(tmp_path: Path) -> None:
    with LocalWorktree.init(tmp_path / "wt", branch="feature/x") as wt:
        write(wt.path / "a.txt", "a\n")
        head = wt.checkpoint("one").id.decode()
    with LocalWorktree.open(tmp_path / "wt") as reopened:
        assert reopened.branch == "feature/x" and reopened.head == head and reopened.has_object(head)
        assert not reopened.has_object("4" * 40) and not reopened.has_object("not a sha")

    (tmp_path / "plain").mkdir()
    with pytest.raises(NotARepositoryError):
        LocalWorktree.open(tmp_path / "plain")
    (tmp_path / "linked").mkdir()
    os.symlink(tmp_path / "wt" / ".git", tmp_path / "linked" / ".git")
    with pytest.raises(NotARepositoryError):
        LocalWorktree.open(tmp_path / "linked")
    with pytest.raises(GitError):
        LocalWorktree.init(tmp_path / "wt", branch="main")  # not empty: never taken over

    git(tmp_path / "wt", "checkout", "-q", "--detach")
    with pytest.raises(GitError):
        LocalWorktree.open(tmp_path / "wt")


def add_objects(worktree: Path, *objects: ShaFile) -> None:
    """Put objects straight into a worktree's store, bypassing every check of an incoming pack."""
    with Repo(str(worktree)) as repo:
        for obj in objects:
            repo.object_store.add_object(obj)


def _commit(root: Tree) -> Commit:
    commit = Commit()
    commit.tree, commit.parents = root.id, []
    commit.author = commit.committer = b"x <x@x>"
    commit.author_time = commit.commit_time = 0
    commit.author_timezone = commit.commit_timezone = 0
    commit.message = b"hand-made\n"
    return commit
