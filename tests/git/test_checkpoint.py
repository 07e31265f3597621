"""snapshot + publish, checked against the git command line (and against `git add -A` as an oracle)."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from makima.server.git import (
    ConcurrentUpdateError,
    GitError,
    InvalidRefNameError,
    Snapshot,
    head_commit,
    publish,
    snapshot,
)
from makima.worktree import _worktree
from tests.git.gitcli import age, checkpoint, git, git_add_all_tree, git_ok, ls_files, ls_tree, status, write


def test_init_worktree_has_an_unborn_branch(worktree: Path) -> None:
    assert git(worktree, "symbolic-ref", "HEAD").strip() == "refs/heads/main"
    assert not git_ok(worktree, "rev-parse", "--verify", "-q", "refs/heads/main")
    assert head_commit(worktree, branch="main") is None


def test_init_worktree_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    from makima.server.git import init_worktree

    write(tmp_path / "busy" / "file.txt", "x")
    with pytest.raises(GitError):
        init_worktree(tmp_path / "busy", branch="main")
    assert not (tmp_path / "busy" / ".git").exists()


def test_snapshot_and_publish_make_the_branch_head_and_leave_status_clean(worktree: Path) -> None:
    write(worktree / "README.md", "hello\n")
    write(worktree / "src" / "app.py", "print('hi')\n")

    shot = snapshot(worktree, branch="main", message="first checkpoint")
    publish(worktree, branch="main", snapshot=shot)

    assert git(worktree, "rev-parse", "refs/heads/main").strip() == shot.commit_sha
    assert git(worktree, "rev-parse", "HEAD^{tree}").strip() == shot.tree_sha
    assert git(worktree, "symbolic-ref", "HEAD").strip() == "refs/heads/main"
    assert shot.parent_sha is None
    assert status(worktree) == ""
    assert git(worktree, "log", "-1", "--format=%an <%ae>|%cn <%ce>|%s").strip() == (
        "makima <makima@localhost>|makima <makima@localhost>|first checkpoint"
    )
    assert head_commit(worktree, branch="main") == shot.commit_sha


def test_snapshot_alone_moves_no_ref_and_leaves_the_index_alone(worktree: Path) -> None:
    write(worktree / "a.txt", "one\n")
    first = checkpoint(worktree)
    index = worktree / ".git" / "index"
    index_before = index.read_bytes()
    write(worktree / "a.txt", "two\n")

    shot = snapshot(worktree, branch="main", message="not published")

    assert git(worktree, "rev-parse", "refs/heads/main").strip() == first.commit_sha
    assert index.read_bytes() == index_before
    assert git(worktree, "cat-file", "-t", shot.commit_sha).strip() == "commit"
    assert shot.parent_sha == first.commit_sha
    assert status(worktree) == " M a.txt\n"


def test_second_checkpoint_records_modified_new_and_deleted_files(worktree: Path) -> None:
    write(worktree / "keep.txt", "same\n")
    write(worktree / "change.txt", "before\n")
    write(worktree / "gone" / "old.txt", "bye\n")
    first = checkpoint(worktree)
    write(worktree / "change.txt", "after\n")
    write(worktree / "fresh" / "new.txt", "hi\n")
    os.remove(worktree / "gone" / "old.txt")

    second = checkpoint(worktree, message="second")

    assert second.parent_sha == first.commit_sha
    diff = git(worktree, "diff", "--name-status", "--no-renames", first.commit_sha, second.commit_sha)
    assert sorted(diff.splitlines()) == ["A\tfresh/new.txt", "D\tgone/old.txt", "M\tchange.txt"]
    assert status(worktree) == ""
    assert git(worktree, "rev-list", "--count", "main").strip() == "2"


def test_unchanged_worktree_still_makes_a_new_commit_with_the_same_tree(worktree: Path) -> None:
    write(worktree / "a.txt", "x\n")
    first = checkpoint(worktree)

    second = checkpoint(worktree, message="again")

    assert second.commit_sha != first.commit_sha
    assert second.tree_sha == first.tree_sha
    assert second.parent_sha == first.commit_sha


def test_snapshot_reusing_the_head_writes_nothing_for_an_unchanged_worktree(worktree: Path) -> None:
    write(worktree / "a.txt", "x\n")
    first = checkpoint(worktree)
    second = checkpoint(worktree, message="second")
    objects = git(worktree, "count-objects", "-v")

    same = snapshot(worktree, branch="main", message="unused", reuse_head=True)
    unwritten = git(worktree, "count-objects", "-v")
    write(worktree / "a.txt", "y\n")
    changed = snapshot(worktree, branch="main", message="changed", reuse_head=True)

    assert same.reused and same.commit_sha == second.commit_sha and same.parent_sha == first.commit_sha
    assert same.tree_sha == second.tree_sha
    assert unwritten == objects
    assert not changed.reused and changed.parent_sha == second.commit_sha and changed.tree_sha != second.tree_sha
    assert git(worktree, "rev-parse", "main").strip() == second.commit_sha
    assert git(worktree, "cat-file", "-t", changed.commit_sha).strip() == "commit"


def test_gitignore_rules_at_every_depth_are_respected(worktree: Path, tmp_path: Path) -> None:
    write(worktree / ".gitignore", "*.log\n!keep.log\nbuild/\n/top-only.txt\n")
    write(worktree / "debug.log", "noise")
    write(worktree / "keep.log", "wanted")
    write(worktree / "top-only.txt", "ignored at the root only")
    write(worktree / "sub" / "top-only.txt", "kept")
    write(worktree / "build" / "out.bin", b"\x00\x01")
    write(worktree / "sub" / "build" / "x.o", "ignored too")
    write(worktree / "sub" / ".gitignore", "*.tmp\n!important.log\n")
    write(worktree / "sub" / "scratch.tmp", "ignored by the nested file")
    write(worktree / "sub" / "important.log", "re-included by the nested file")
    write(worktree / "sub" / "other.log", "still ignored by the root file")
    write(worktree / "other" / "scratch.tmp", "not ignored outside sub/")

    shot = checkpoint(worktree)

    assert shot.tree_sha == git_add_all_tree(worktree, tmp_path)
    tracked = {line.split(" ", 2)[2] for line in ls_files(worktree)}
    assert tracked == {
        ".gitignore",
        "keep.log",
        "sub/top-only.txt",
        "sub/.gitignore",
        "sub/important.log",
        "other/scratch.tmp",
    }
    assert status(worktree) == ""


def test_info_exclude_is_respected(worktree: Path) -> None:
    write(worktree / ".git" / "info" / "exclude", "secret.txt\n")
    write(worktree / "secret.txt", "x")
    write(worktree / "public.txt", "y")

    checkpoint(worktree)

    assert [line.split(" ", 2)[2] for line in ls_files(worktree)] == ["public.txt"]
    assert status(worktree) == ""


def test_tracked_file_stays_tracked_after_it_becomes_ignored(worktree: Path) -> None:
    write(worktree / "cache" / "data.txt", "v1")
    checkpoint(worktree)
    write(worktree / ".gitignore", "cache/\n")
    write(worktree / "cache" / "data.txt", "v2")
    write(worktree / "cache" / "untracked.txt", "never added")

    shot = checkpoint(worktree)

    assert git(worktree, "show", f"{shot.commit_sha}:cache/data.txt") == "v2"
    assert "cache/untracked.txt" not in git(worktree, "ls-tree", "-r", "--name-only", shot.commit_sha)
    assert status(worktree) == ""


def test_binary_files_are_stored_byte_for_byte(worktree: Path) -> None:
    payload = bytes(range(256)) * 64 + b"\r\n\x00end"
    write(worktree / "blob.bin", payload)
    write(worktree / "empty.bin", b"")

    shot = checkpoint(worktree)

    sha = git(worktree, "rev-parse", f"{shot.commit_sha}:blob.bin").strip()
    result = subprocess.run(["git", "cat-file", "blob", sha], cwd=worktree, capture_output=True, check=True)
    assert result.stdout == payload
    assert git(worktree, "cat-file", "-s", f"{shot.commit_sha}:empty.bin").strip() == "0"
    assert status(worktree) == ""


def test_empty_directories_are_skipped(worktree: Path, tmp_path: Path) -> None:
    (worktree / "empty" / "nested").mkdir(parents=True)
    write(worktree / "full" / "f.txt", "x")

    shot = checkpoint(worktree)

    assert git(worktree, "ls-tree", "-r", "-t", "--name-only", shot.commit_sha).split() == ["full", "full/f.txt"]
    assert shot.tree_sha == git_add_all_tree(worktree, tmp_path)
    assert status(worktree) == ""


def test_executable_bit_is_recorded_and_its_removal_too(worktree: Path) -> None:
    write(worktree / "run.sh", "#!/bin/sh\necho hi\n", mode=0o755)
    write(worktree / "plain.txt", "x", mode=0o644)

    checkpoint(worktree)
    modes = {line.split(" ", 2)[2]: line.split(" ")[0] for line in ls_files(worktree)}
    assert modes == {"run.sh": "100755", "plain.txt": "100644"}

    (worktree / "run.sh").chmod(0o644)
    (worktree / "plain.txt").chmod(0o700)
    shot = checkpoint(worktree)
    modes = {line.split(" ", 2)[2]: line.split(" ")[0] for line in ls_tree(worktree, shot.commit_sha)}
    assert modes == {"run.sh": "100644", "plain.txt": "100755"}
    assert status(worktree) == ""


def test_symlinks_are_stored_as_links_and_never_followed(worktree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside / "secret.txt", "must never enter the repository")
    write(worktree / "docs" / "guide.md", "# guide\n")
    os.symlink("docs/guide.md", worktree / "guide-link")
    os.symlink("docs", worktree / "docs-link")
    os.symlink(outside, worktree / "escape")
    os.symlink(outside / "secret.txt", worktree / "secret-link")
    os.symlink("does/not/exist", worktree / "dangling")

    shot = checkpoint(worktree)

    entries = {line.split(" ", 2)[2]: line.split(" ")[0] for line in ls_tree(worktree, shot.commit_sha)}
    assert entries == {
        "docs/guide.md": "100644",
        "guide-link": "120000",
        "docs-link": "120000",
        "escape": "120000",
        "secret-link": "120000",
        "dangling": "120000",
    }
    assert git(worktree, "cat-file", "-p", f"{shot.commit_sha}:escape") == str(outside)
    assert git(worktree, "cat-file", "-p", f"{shot.commit_sha}:dangling") == "does/not/exist"
    assert not git_ok(worktree, "grep", "-q", "must never", shot.commit_sha)
    assert shot.tree_sha == git_add_all_tree(worktree, tmp_path)
    assert status(worktree) == ""


def test_names_with_spaces_and_unicode(worktree: Path, tmp_path: Path) -> None:
    names = ["with space.txt", "ünïcödé/日本語.md", "tab\tname", "quote'\"name", "emoji 🎉/x y z"]
    for name in names:
        write(worktree / name, name)

    shot = checkpoint(worktree)

    listed = git(worktree, "ls-tree", "-r", "-z", "--name-only", shot.commit_sha).split("\0")
    assert sorted(n for n in listed if n) == sorted(names)
    assert shot.tree_sha == git_add_all_tree(worktree, tmp_path)
    assert status(worktree) == ""


def test_a_thousand_files_match_git_and_unchanged_files_are_not_read_again(
    worktree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(1000):
        write(worktree / f"pkg{i % 20}" / f"sub{i % 3}" / f"file{i}.txt", f"content {i}\n" * (i % 7 + 1))
    age(worktree)
    first = checkpoint(worktree)
    assert first.tree_sha == git_add_all_tree(worktree, tmp_path)
    assert status(worktree) == ""
    for i in (3, 500, 999):
        write(worktree / f"pkg{i % 20}" / f"sub{i % 3}" / f"file{i}.txt", "changed\n")
    reads: list[bytes] = []
    real_read = _worktree._fs.read_entry

    def counting_read(dir_fd: int, name: bytes, st: os.stat_result) -> tuple[bytes, os.stat_result] | None:
        reads.append(name)
        return real_read(dir_fd, name, st)

    monkeypatch.setattr(_worktree._fs, "read_entry", counting_read)

    second = checkpoint(worktree)

    assert sorted(reads) == [b"file3.txt", b"file500.txt", b"file999.txt"]
    assert second.tree_sha == git_add_all_tree(worktree, tmp_path)
    assert len(ls_files(worktree)) == 1000
    assert status(worktree) == ""


def test_publish_of_a_snapshot_rebuilt_from_its_shas_also_cleans_the_index(worktree: Path) -> None:
    write(worktree / "a.txt", "a")
    checkpoint(worktree)
    write(worktree / "a.txt", "b")
    write(worktree / "b.txt", "c")
    shot = snapshot(worktree, branch="main", message="m")

    publish(worktree, branch="main", snapshot=Snapshot(shot.commit_sha, shot.parent_sha, shot.tree_sha))

    assert git(worktree, "rev-parse", "main").strip() == shot.commit_sha
    assert status(worktree) == ""


def test_publish_loses_the_compare_and_swap_against_a_moved_branch(worktree: Path) -> None:
    write(worktree / "a.txt", "a")
    base = checkpoint(worktree)
    write(worktree / "a.txt", "b")
    winner = snapshot(worktree, branch="main", message="winner")
    write(worktree / "a.txt", "c")
    loser = snapshot(worktree, branch="main", message="loser")
    assert winner.parent_sha == loser.parent_sha == base.commit_sha

    publish(worktree, branch="main", snapshot=winner)
    with pytest.raises(ConcurrentUpdateError) as info:
        publish(worktree, branch="main", snapshot=loser)

    assert info.value.metadata["found"] == winner.commit_sha
    assert git(worktree, "rev-parse", "main").strip() == winner.commit_sha
    publish(worktree, branch="main", snapshot=winner)  # a retried publish is harmless
    assert git(worktree, "rev-parse", "main").strip() == winner.commit_sha


def test_publish_on_an_unborn_branch_loses_if_it_was_born_meanwhile(worktree: Path) -> None:
    write(worktree / "a.txt", "a")
    one = snapshot(worktree, branch="main", message="one")
    two = snapshot(worktree, branch="main", message="two")
    publish(worktree, branch="main", snapshot=one)

    with pytest.raises(ConcurrentUpdateError) as info:
        publish(worktree, branch="main", snapshot=two)

    assert info.value.metadata == {"ref": "refs/heads/main", "expected": "unborn", "found": one.commit_sha}
    assert git(worktree, "rev-parse", "main").strip() == one.commit_sha


def test_publish_refuses_a_snapshot_that_does_not_describe_its_commit(worktree: Path) -> None:
    write(worktree / "a.txt", "a")
    shot = snapshot(worktree, branch="main", message="m")

    with pytest.raises(GitError):
        publish(worktree, branch="main", snapshot=Snapshot(shot.commit_sha, None, "0" * 40))
    assert head_commit(worktree, branch="main") is None


def test_snapshot_on_an_invalid_branch_name_is_refused(worktree: Path) -> None:
    with pytest.raises(InvalidRefNameError):
        snapshot(worktree, branch="../../etc", message="m")


def test_checkpoints_from_several_threads_under_a_lock_keep_the_repository_sound(worktree: Path) -> None:
    lock = threading.Lock()
    errors: list[BaseException] = []

    def agent(n: int) -> None:
        try:
            for round_ in range(5):
                with lock:
                    write(worktree / f"agent{n}" / f"round{round_}.txt", f"{n}-{round_}\n")
                    checkpoint(worktree, message=f"agent {n} round {round_}")
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=agent, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert git(worktree, "rev-list", "--count", "main").strip() == "20"
    assert git(worktree, "fsck", "--strict", "--no-dangling") == ""
    assert len(ls_files(worktree)) == 20
    assert status(worktree) == ""


def test_concurrent_publishers_without_a_lock_never_lose_a_commit(worktree: Path) -> None:
    write(worktree / "base.txt", "x")
    checkpoint(worktree)
    shots = []
    for n in range(6):
        write(worktree / "base.txt", f"version {n}")
        shots.append(snapshot(worktree, branch="main", message=f"candidate {n}"))
    outcomes: list[str] = []
    barrier = threading.Barrier(len(shots))

    def race(shot: Snapshot) -> None:
        barrier.wait()
        try:
            publish(worktree, branch="main", snapshot=shot)
            outcomes.append(shot.commit_sha)
        except ConcurrentUpdateError:
            outcomes.append("lost")

    threads = [threading.Thread(target=race, args=(shot,)) for shot in shots]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    winners = [o for o in outcomes if o != "lost"]
    assert len(winners) == 1
    assert git(worktree, "rev-parse", "main").strip() == winners[0]
    assert git(worktree, "fsck", "--strict", "--no-dangling") == ""


def test_packs_stay_few_and_sound_over_many_checkpoints(worktree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from makima.worktree import repository as git_repo

    monkeypatch.setattr(git_repo, "_PACK_THRESHOLD", 1)  # every checkpoint writes a pack
    monkeypatch.setattr(git_repo, "_MAX_PACKS", 4)
    shots = []
    for n in range(12):
        write(worktree / f"file{n}.txt", f"{n}\n")
        shots.append(checkpoint(worktree, message=f"n{n}"))

    packs = sorted((worktree / ".git" / "objects" / "pack").glob("*.pack"))
    assert 1 <= len(packs) <= 4
    assert all(p.with_suffix(".idx").exists() for p in packs)
    assert not [p for p in (worktree / ".git" / "objects").iterdir() if p.name not in ("pack", "info")]  # no loose
    assert git(worktree, "fsck", "--strict", "--no-dangling") == ""
    assert git(worktree, "rev-list", "main").split() == [s.commit_sha for s in reversed(shots)]
    assert git(worktree, "show", f"{shots[0].commit_sha}:file0.txt") == "0\n"
