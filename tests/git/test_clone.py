"""clone_worktree: a new worktree at a ref of another repository, sharing its objects."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from dulwich.repo import Repo

from makima.server.git import (
    FileChange,
    GitError,
    InvalidRefNameError,
    RefNotFoundError,
    head_commit,
    resolve_repository,
    restore,
)
from makima.server.git import clone_worktree as clone_checked
from makima.worktree.trees import new_commit
from tests.git.gitcli import checkpoint, files_on_disk, git, git_ok, ls_files, ls_tree, status, write


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A repository made by the git command line: main with two commits, a side branch and tags."""
    repo = tmp_path / "source"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    write(repo / "README.md", "v1\n")
    write(repo / "bin" / "run", "#!/bin/sh\n", mode=0o755)
    os.symlink("README.md", repo / "readme-link")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "one")
    git(repo, "tag", "-a", "-m", "release 1", "v1")
    git(repo, "tag", "light")
    git(repo, "branch", "side")
    write(repo / "README.md", "v2\n")
    write(repo / "src" / "main.py", "print('v2')\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "two")
    return repo


def clone_worktree(source: Path, dest: Path, *, ref: str | None, branch: str) -> str:
    """Clone from `source`, checked with the directory holding it as the workspace root."""
    return clone_checked(resolve_repository(source.parent, source), dest, ref=ref, branch=branch)


def sha_of(repo: Path, rev: str) -> str:
    return git(repo, "rev-parse", f"{rev}^{{commit}}").strip()


def loose_and_packed_objects(repo: Path) -> list[str]:
    objects = repo / ".git" / "objects"
    return [str(p.relative_to(objects)) for p in objects.rglob("*") if p.is_file() and p.parts[-2] not in ("info",)]


def assert_sound_clone(dest: Path, *, branch: str, commit: str) -> None:
    assert (dest / ".git" / "objects" / "info" / "alternates").is_file()
    assert git(dest, "rev-parse", f"refs/heads/{branch}").strip() == commit
    assert git(dest, "symbolic-ref", "HEAD").strip() == f"refs/heads/{branch}"
    assert git(dest, "log", "-1", "--format=%H").strip() == commit
    assert git(dest, "fsck", "--strict", "--no-dangling") == ""
    assert ls_files(dest) == ls_tree(dest, commit)
    assert status(dest) == ""


@pytest.mark.parametrize(("ref", "rev"), [("side", "side"), ("v1", "v1"), ("light", "light"), (None, "HEAD")])
def test_clone_at_a_branch_tag_or_head_shares_objects(source: Path, tmp_path: Path, ref: str | None, rev: str) -> None:
    dest = tmp_path / "workspace" / "task-1"

    commit = clone_worktree(source, dest, ref=ref, branch="task/1")

    assert commit == sha_of(source, rev)
    assert_sound_clone(dest, branch="task/1", commit=commit)
    assert loose_and_packed_objects(dest) == []  # nothing copied: all through the alternates


def test_clone_at_a_sha_checks_out_files_modes_and_links(source: Path, tmp_path: Path) -> None:
    commit = sha_of(source, "main")
    dest = tmp_path / "dest"
    dest.mkdir()  # an existing empty directory is fine

    assert clone_worktree(source, dest, ref=commit, branch="fork") == commit

    assert_sound_clone(dest, branch="fork", commit=commit)
    assert files_on_disk(dest) == {
        "README.md": b"v2\n",
        "bin/run": b"#!/bin/sh\n",
        "readme-link": b"link:README.md",
        "src/main.py": b"print('v2')\n",
    }
    assert os.access(dest / "bin" / "run", os.X_OK)


def test_checkpoint_in_a_clone_writes_only_to_the_clone(source: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    start = clone_worktree(source, dest, ref="main", branch="fork")
    source_objects = sorted(loose_and_packed_objects(source))
    write(dest / "README.md", "changed in the fork\n")

    shot = checkpoint(dest, branch="fork")

    assert shot.parent_sha == start
    assert sorted(loose_and_packed_objects(source)) == source_objects
    assert git(dest, "fsck", "--strict", "--no-dangling") == ""
    assert git(source, "fsck", "--strict") == ""
    assert status(dest) == ""
    assert restore(dest, commit_sha=start) == [FileChange("README.md", "modified")]


def test_a_long_chain_of_forks_stays_readable_by_git(source: Path, tmp_path: Path) -> None:
    previous, ref = source, "main"
    for n in range(8):  # git stops following alternates nested more than five deep
        dest = tmp_path / f"fork{n}"
        clone_worktree(previous, dest, ref=ref, branch=f"fork{n}")
        write(dest / f"fork{n}.txt", f"{n}\n")
        shot = checkpoint(dest, branch=f"fork{n}")
        previous, ref = dest, shot.commit_sha

    assert git(previous, "rev-list", "--count", "HEAD").strip() == str(2 + 8)
    assert git(previous, "fsck", "--strict", "--no-dangling") == ""
    assert sorted(p.name for p in previous.glob("fork*.txt")) == [f"fork{n}.txt" for n in range(8)]


def test_clone_of_an_unknown_ref_leaves_nothing_behind(source: Path, tmp_path: Path) -> None:
    for ref in ("no-such-branch", "0" * 40, "../../etc", "refs/heads/../../x"):
        with pytest.raises(RefNotFoundError):
            clone_worktree(source, tmp_path / "dest", ref=ref, branch="b")
        assert not (tmp_path / "dest").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(RefNotFoundError):
        clone_worktree(source, tmp_path / "kept", ref="nope", branch="b")
    assert list((tmp_path / "kept").iterdir()) == []


def test_clone_of_a_tree_sha_is_refused(source: Path, tmp_path: Path) -> None:
    tree = git(source, "rev-parse", "main^{tree}").strip()
    with pytest.raises(RefNotFoundError):
        clone_worktree(source, tmp_path / "dest", ref=tree, branch="b")


def test_clone_into_a_non_empty_directory_or_with_a_bad_branch_is_refused(source: Path, tmp_path: Path) -> None:
    busy = write(tmp_path / "busy" / "mine.txt", "do not touch\n").parent
    with pytest.raises(GitError):
        clone_worktree(source, busy, ref=None, branch="b")
    assert files_on_disk(busy) == {"mine.txt": b"do not touch\n"}
    with pytest.raises(InvalidRefNameError):
        clone_worktree(source, tmp_path / "dest", ref=None, branch="bad..name")
    assert not (tmp_path / "dest").exists()


def test_clone_of_an_empty_repository_has_no_head_to_clone(tmp_path: Path, worktree: Path) -> None:
    with pytest.raises(RefNotFoundError):
        clone_worktree(worktree, tmp_path / "dest", ref=None, branch="b")
    assert head_commit(worktree, branch="main") is None


def test_submodule_entries_survive_clone_checkpoint_and_restore(source: Path, tmp_path: Path) -> None:
    pinned = sha_of(source, "main")
    git(source, "update-index", "--add", "--cacheinfo", f"160000,{pinned},vendor/lib")
    git(source, "commit", "-q", "-m", "add a submodule entry")
    dest = tmp_path / "dest"

    start = clone_worktree(source, dest, ref="main", branch="fork")
    assert (dest / "vendor" / "lib").is_dir()  # checked out empty, as git does without --recurse
    write(dest / "README.md", "edited\n")
    shot = checkpoint(dest, branch="fork")

    assert f"160000 commit {pinned}\tvendor/lib" in git(dest, "ls-tree", "-r", shot.commit_sha)
    assert status(dest) == ""
    restore(dest, commit_sha=start)
    assert ls_files(dest) == ls_tree(dest, start)


def test_clone_of_a_bare_repository_or_a_linked_worktree(source: Path, tmp_path: Path) -> None:
    git(tmp_path, "clone", "-q", "--bare", str(source), str(tmp_path / "bare.git"))
    git(source, "worktree", "add", "-q", str(tmp_path / "linked"), "side")

    from_bare = clone_worktree(tmp_path / "bare.git", tmp_path / "a", ref="v1", branch="a")
    from_linked = clone_worktree(tmp_path / "linked", tmp_path / "b", ref=None, branch="b")

    assert from_bare == sha_of(source, "v1")
    assert from_linked == sha_of(source, "side")  # the linked worktree's own HEAD
    assert_sound_clone(tmp_path / "a", branch="a", commit=from_bare)
    assert_sound_clone(tmp_path / "b", branch="b", commit=from_linked)


def test_a_clone_lists_the_whole_alternates_chain_of_its_source(source: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference.git"
    git(tmp_path, "clone", "-q", "--bare", str(source), str(reference))
    middle = tmp_path / "middle"
    git(tmp_path, "clone", "-q", "--shared", str(reference), str(middle))  # middle borrows from reference
    dest = tmp_path / "dest"

    clone_worktree(middle, dest, ref="main", branch="fork")

    listed = (dest / ".git" / "objects" / "info" / "alternates").read_text().splitlines()
    assert listed == [str((middle / ".git" / "objects").resolve()), str((reference / "objects").resolve())]
    assert_sound_clone(dest, branch="fork", commit=sha_of(source, "main"))


def test_a_fork_reads_only_the_alternates_checked_when_it_was_made(source: Path, tmp_path: Path) -> None:
    """A source's alternates file edited after the fork cannot lead the fork's reads anywhere else."""
    dest = tmp_path / "dest"
    clone_worktree(source, dest, ref="main", branch="fork")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    git(elsewhere, "init", "-q", "-b", "main")
    write(elsewhere / "secret.txt", "not for the fork\n")
    git(elsewhere, "add", "-A")
    git(elsewhere, "commit", "-q", "-m", "secret")
    write(source / ".git" / "objects" / "info" / "alternates", f"{elsewhere / '.git' / 'objects'}\n")

    with pytest.raises(RefNotFoundError):
        restore(dest, commit_sha=sha_of(elsewhere, "main"))
    assert not (dest / "secret.txt").exists()


@pytest.mark.parametrize(
    "ref", ["HEAD~1", "main^", "main~0", "v1^{}", "v1^{commit}", "HEAD^1~0", "refs/tags/v1^{}", "short", "SHORT"]
)
def test_clone_resolves_what_git_rev_parse_resolves(source: Path, tmp_path: Path, ref: str) -> None:
    """The `git rev-parse` of the same spec is the oracle; 'short' stands for an abbreviated sha."""
    if ref in ("short", "SHORT"):
        full = sha_of(source, "HEAD~1")
        ref = full[:7].upper() if ref == "SHORT" else git(source, "rev-parse", "--short", "HEAD~1").strip()
    expected = sha_of(source, ref)

    commit = clone_worktree(source, tmp_path / "dest", ref=ref, branch="b")

    assert commit == expected
    assert_sound_clone(tmp_path / "dest", branch="b", commit=commit)


@pytest.mark.parametrize(
    "ref", ["HEAD~2", "main^2", "v1^{tree}", "main:README.md", "main@{0}", "main..side", "abc", "main~x", ""]
)
def test_clone_refuses_what_git_refuses_or_what_names_no_commit(source: Path, tmp_path: Path, ref: str) -> None:
    """git fails to read each of these as one commit, or reads a file or a reflog that is no ref of ours."""
    with pytest.raises(RefNotFoundError):
        clone_worktree(source, tmp_path / "dest", ref=ref, branch="b")
    assert not (tmp_path / "dest").exists()


def test_an_ambiguous_abbreviated_sha_is_refused(source: Path, tmp_path: Path) -> None:
    """Commits are written until two share a 4-digit prefix, which git also refuses to pick from."""
    tree = git(source, "rev-parse", "HEAD^{tree}").strip()
    seen: dict[str, str] = {}
    with Repo(str(source)) as repo:
        for n in range(100_000):
            commit = new_commit(tree.encode(), None, f"candidate {n}")
            repo.object_store.add_object(commit)
            prefix = commit.id.decode()[:4]
            if prefix in seen:
                break
            seen[prefix] = commit.id.decode()
    assert not git_ok(source, "rev-parse", "--verify", "-q", f"{prefix}^{{commit}}")

    with pytest.raises(RefNotFoundError, match="ambiguous"):
        clone_worktree(source, tmp_path / "dest", ref=prefix, branch="b")
    assert clone_worktree(source, tmp_path / "dest", ref=seen[prefix][:12], branch="b") == seen[prefix]
