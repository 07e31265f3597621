"""compare against `git diff --name-status`, and create_branch against `git rev-parse`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from makima.server.git import (
    BranchExistsError,
    FileChange,
    InvalidRefNameError,
    RefNotFoundError,
    compare,
    create_branch,
    head_commit,
)
from tests.git.gitcli import checkpoint, git, write

KINDS = {"A": "added", "D": "deleted", "M": "modified", "T": "modified"}


def git_name_status(worktree: Path, *args: str, env: dict[str, str] | None = None) -> list[FileChange]:
    out = git(worktree, "diff", "--name-status", "--no-renames", "-z", *args, env=env)
    fields = [f for f in out.split("\0") if f]
    return [FileChange(path, KINDS[status]) for status, path in zip(fields[::2], fields[1::2], strict=True)]  # type: ignore[arg-type]


@pytest.fixture
def history(worktree: Path) -> tuple[Path, str, str]:
    write(worktree / "same.txt", "same\n")
    write(worktree / "edit.txt", "one\n")
    write(worktree / "gone.txt", "gone\n")
    write(worktree / "mode.sh", "#!/bin/sh\n")
    write(worktree / "kind", "a file first\n")
    write(worktree / "f-to-dir", "a file first\n")
    write(worktree / "dir" / "x.txt", "x\n")
    base = checkpoint(worktree).commit_sha
    write(worktree / "edit.txt", "two\n")
    (worktree / "gone.txt").unlink()
    (worktree / "mode.sh").chmod(0o755)
    (worktree / "kind").unlink()
    os.symlink("same.txt", worktree / "kind")
    (worktree / "f-to-dir").unlink()
    write(worktree / "f-to-dir" / "inner.txt", "now a directory\n")
    write(worktree / "dir" / "y z ü.txt", "new\n")
    target = checkpoint(worktree).commit_sha
    return worktree, base, target


def test_compare_two_commits_matches_git_diff(history: tuple[Path, str, str]) -> None:
    worktree, base, target = history

    changes = compare(worktree, base_sha=base, target_sha=target)

    assert changes == sorted(git_name_status(worktree, base, target), key=lambda c: c.path)
    assert [c.change for c in changes].count("modified") == 3  # content, mode, file to symlink
    assert FileChange("f-to-dir", "deleted") in changes
    assert FileChange("f-to-dir/inner.txt", "added") in changes
    assert compare(worktree, base_sha=target, target_sha=target) == []


def test_compare_against_the_live_worktree_matches_git_add_all(history: tuple[Path, str, str], tmp_path: Path) -> None:
    worktree, base, _ = history
    write(worktree / ".gitignore", "*.log\n")
    write(worktree / "noise.log", "ignored\n")
    write(worktree / "edit.txt", "three\n")
    write(worktree / "brand-new.txt", "new\n")
    (worktree / "same.txt").unlink()
    index = {"GIT_INDEX_FILE": str(tmp_path / "scratch-index")}
    git(worktree, "read-tree", "HEAD", env=index)
    git(worktree, "add", "-A", env=index)

    changes = compare(worktree, base_sha=base, target_sha=None)

    assert changes == sorted(git_name_status(worktree, "--cached", base, env=index), key=lambda c: c.path)
    assert FileChange("noise.log", "added") not in changes
    assert FileChange("brand-new.txt", "added") in changes


def test_compare_with_an_unknown_commit_is_refused(history: tuple[Path, str, str]) -> None:
    worktree, base, _ = history
    with pytest.raises(RefNotFoundError):
        compare(worktree, base_sha=base, target_sha="2" * 40)
    with pytest.raises(RefNotFoundError):
        compare(worktree, base_sha="abc", target_sha=None)


def test_create_branch_points_at_the_commit(history: tuple[Path, str, str]) -> None:
    worktree, base, _ = history

    ref = create_branch(worktree, name="experiments/try-1", commit_sha=base)

    assert ref == "refs/heads/experiments/try-1"
    assert git(worktree, "rev-parse", "refs/heads/experiments/try-1").strip() == base
    assert head_commit(worktree, branch="experiments/try-1") == base
    assert git(worktree, "symbolic-ref", "HEAD").strip() == "refs/heads/main"  # HEAD stays
    assert git(worktree, "fsck", "--strict", "--no-dangling") == ""


def test_create_branch_refuses_an_existing_or_clashing_name(history: tuple[Path, str, str]) -> None:
    worktree, base, target = history
    create_branch(worktree, name="topic", commit_sha=base)

    with pytest.raises(BranchExistsError):
        create_branch(worktree, name="topic", commit_sha=target)
    with pytest.raises(BranchExistsError):
        create_branch(worktree, name="main", commit_sha=base)
    with pytest.raises(BranchExistsError):
        create_branch(worktree, name="topic/sub", commit_sha=base)
    with pytest.raises(BranchExistsError):
        create_branch(worktree, name="main/x", commit_sha=base)

    assert git(worktree, "rev-parse", "topic").strip() == base
    assert git(worktree, "rev-parse", "main").strip() == target


@pytest.mark.parametrize("name", ["", "a..b", "-x", "HEAD", "a b", "x.lock", "../../../etc/passwd", "a//b", "@"])
def test_create_branch_refuses_invalid_names(history: tuple[Path, str, str], name: str) -> None:
    worktree, base, _ = history
    refs_before = git(worktree, "for-each-ref")

    with pytest.raises(InvalidRefNameError):
        create_branch(worktree, name=name, commit_sha=base)

    assert git(worktree, "for-each-ref") == refs_before


def test_create_branch_at_an_unknown_commit_or_a_non_commit_is_refused(history: tuple[Path, str, str]) -> None:
    worktree, base, _ = history
    tree = git(worktree, "rev-parse", f"{base}^{{tree}}").strip()

    for sha in ("3" * 40, tree, "HEAD"):
        with pytest.raises(RefNotFoundError):
            create_branch(worktree, name="nope", commit_sha=sha)

    assert "nope" not in git(worktree, "branch", "--list")
