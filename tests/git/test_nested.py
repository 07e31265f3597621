"""Nested repositories and `.git` files: a snapshot holds what `git add -A` stages, the git CLI as the oracle."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from makima.server.git import UntrackedInTheWayError, restore
from tests.git.gitcli import checkpoint, git, git_add_all_tree, ls_files, ls_tree, status, write


def nested_repository(path: Path, files: dict[str, str]) -> str:
    """A repository at `path` with one commit of `files`; returns the commit."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q")
    for name, content in files.items():
        write(path / name, content)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "nested")
    return git(path, "rev-parse", "HEAD").strip()


def test_a_git_file_naming_no_repository_hides_only_itself(worktree: Path, tmp_path: Path) -> None:
    write(worktree / "sub" / ".git", "gitdir: ../nowhere\n")
    write(worktree / "sub" / "other.txt", "kept\n")
    write(worktree / "top.txt", "top\n")

    shot = checkpoint(worktree)

    assert git(worktree, "ls-tree", "-r", "--name-only", shot.commit_sha).split() == ["sub/other.txt", "top.txt"]
    assert shot.tree_sha == git_add_all_tree(worktree, tmp_path)
    assert status(worktree) == ""
    assert git(worktree, "fsck", "--strict") == ""


def test_a_nested_repository_with_a_commit_is_a_gitlink_to_its_head(worktree: Path, tmp_path: Path) -> None:
    first = nested_repository(worktree / "vendor" / "lib", {"code.py": "x = 1\n"})
    write(worktree / "app.py", "y\n")

    shot = checkpoint(worktree)

    assert ls_tree(worktree, shot.commit_sha) == sorted(
        [f"160000 {first} vendor/lib", f"100644 {git(worktree, 'hash-object', 'app.py').strip()} app.py"]
    )
    assert shot.tree_sha == git_add_all_tree(worktree, tmp_path)
    assert status(worktree) == ""

    write(worktree / "vendor" / "lib" / "code.py", "x = 2\n")
    git(worktree / "vendor" / "lib", "commit", "-q", "-am", "second")
    second = git(worktree / "vendor" / "lib", "rev-parse", "HEAD").strip()
    assert status(worktree) == " M vendor/lib\n"  # git sees the gitlink move

    moved = checkpoint(worktree)

    assert f"160000 {second} vendor/lib" in ls_tree(worktree, moved.commit_sha)
    assert moved.tree_sha == git_add_all_tree(worktree, tmp_path)
    assert status(worktree) == ""
    assert git(worktree, "diff", "--name-only", shot.commit_sha, moved.commit_sha).split() == ["vendor/lib"]
    assert git(worktree, "fsck", "--strict") == ""


def test_a_submodule_style_git_file_inside_the_worktree_is_followed(worktree: Path, tmp_path: Path) -> None:
    """`.git` files as `git submodule absorbgitdirs` leaves them: the repository under the outer `.git`."""
    head = nested_repository(worktree / "mod", {"m.txt": "m\n"})
    (worktree / "mod" / ".git").rename(worktree / ".git" / "modules-mod")
    write(worktree / "mod" / ".git", "gitdir: ../.git/modules-mod\n")
    git(worktree / "mod", "config", "core.worktree", str(worktree / "mod"))

    shot = checkpoint(worktree)

    assert ls_tree(worktree, shot.commit_sha) == [f"160000 {head} mod"]
    assert shot.tree_sha == git_add_all_tree(worktree, tmp_path)
    assert status(worktree) == ""


def test_a_nested_repository_without_a_commit_is_left_out_as_git_does(worktree: Path) -> None:
    (worktree / "fresh").mkdir()
    git(worktree / "fresh", "init", "-q")
    write(worktree / "fresh" / "draft.txt", "not committed in its own repository\n")
    write(worktree / "app.py", "y\n")

    shot = checkpoint(worktree)

    assert git(worktree, "ls-tree", "-r", "--name-only", shot.commit_sha).split() == ["app.py"]
    # git refuses `add -A` here; with --ignore-errors it stages the rest and skips the nested repository.
    oracle = subprocess.run(["git", "add", "-A", "--dry-run"], cwd=worktree, capture_output=True, text=True)
    assert "'fresh/' does not have a commit checked out" in oracle.stderr
    assert status(worktree) == "?? fresh/\n"


def test_a_git_file_leading_outside_the_worktree_is_not_followed(worktree: Path, tmp_path: Path) -> None:
    """Nothing outside the worktree is read: the directory is then scanned like any other."""
    outside = tmp_path / "outside"
    nested_repository(outside, {"o.txt": "o\n"})
    write(worktree / "sub" / ".git", f"gitdir: {outside / '.git'}\n")
    write(worktree / "sub" / "mine.txt", "mine\n")

    shot = checkpoint(worktree)

    assert git(worktree, "ls-tree", "-r", "--name-only", shot.commit_sha).split() == ["sub/mine.txt"]


def test_restoring_a_tree_with_a_gitlink_makes_an_empty_directory(worktree: Path) -> None:
    head = nested_repository(worktree / "vendor" / "lib", {"code.py": "x\n"})
    with_link = checkpoint(worktree).commit_sha
    subprocess.run(["rm", "-rf", str(worktree / "vendor")], check=True)
    without = checkpoint(worktree).commit_sha

    restore(worktree, commit_sha=with_link)

    assert (worktree / "vendor" / "lib").is_dir() and not any((worktree / "vendor" / "lib").iterdir())
    assert ls_files(worktree) == [f"160000 {head} vendor/lib"]
    assert git(worktree, "diff", "--cached", with_link) == ""
    assert git(worktree, "diff") == ""  # an empty directory is a submodule not checked out
    restore(worktree, commit_sha=without)
    assert not (worktree / "vendor").exists()
    assert ls_files(worktree) == []


def test_restore_refuses_to_destroy_what_no_commit_holds(worktree: Path) -> None:
    """Each blocker git's `reset --hard` would delete: the restore names it and changes nothing."""
    write(worktree / ".gitignore", "*.log\nbuild\n")
    write(worktree / "build" / "out.txt", "tracked in A\n")
    write(worktree / "notes.log", "tracked in A, though ignored\n")
    git(worktree, "add", "-f", "notes.log", "build/out.txt")  # git keeps tracking files added with force
    a = checkpoint(worktree).commit_sha
    assert git(worktree, "ls-tree", "-r", "--name-only", a).split() == [".gitignore", "build/out.txt", "notes.log"]
    git(worktree, "rm", "-q", "--cached", "notes.log", "build/out.txt")
    subprocess.run(["rm", "-rf", str(worktree / "build")], check=True)
    write(worktree / "build", "an ignored file where A has a directory\n")
    write(worktree / "notes.log", "ignored, different from A\n")
    checkpoint(worktree)
    before = (worktree / "build").read_text(), (worktree / "notes.log").read_text()

    with pytest.raises(UntrackedInTheWayError) as refused:
        restore(worktree, commit_sha=a)

    assert refused.value.metadata["paths"].split("\n") == ["build", "notes.log"]
    assert ((worktree / "build").read_text(), (worktree / "notes.log").read_text()) == before
    write(worktree / "notes.log", "tracked in A, though ignored\n")  # the same content is no loss
    with pytest.raises(UntrackedInTheWayError) as refused:
        restore(worktree, commit_sha=a)
    assert refused.value.metadata["paths"] == "build"

    restore(worktree, commit_sha=a, force=True)

    assert ls_files(worktree) == ls_tree(worktree, a)
    assert git(worktree, "diff", "--cached", a) == "" and git(worktree, "diff") == ""
