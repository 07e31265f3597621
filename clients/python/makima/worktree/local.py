"""A worktree a daemon owns on its own machine: the daemon side of DESIGN.md section 5.

The directory is a normal git repository (`<dir>/.git`, objects in its own `.git/objects`), so the
agent and the git command line work in it as in any clone. The daemon checkpoints it with the same
snapshot rules as the service (`repository.read_worktree`), pushes only what the service lacks
(`outgoing`), receives what it lacks to start a task (`apply_pack`, verified as the service
verifies uploads) and makes the directory hold the commit a claim names (`materialize`).

Calls are synchronous and not thread-safe: a daemon drives one worktree from one thread at a time.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from dulwich.object_store import DiskObjectStore
from dulwich.objects import Commit
from dulwich.refs import Ref
from dulwich.repo import Repo

from makima.worktree.errors import BranchExistsError, ConcurrentUpdateError, GitError, NotARepositoryError
from makima.worktree.repository import (
    PACK_MODE,
    branch_ref,
    checkout,
    consolidate_packs,
    init_worktree,
    move_ref,
    open_repository,
    read_ref,
    read_worktree,
    replace_index,
    store_objects,
)
from makima.worktree.transfer import DEFAULT_CHUNK_SIZE, find_missing, is_object_id, pack_of, path_bases
from makima.worktree.trees import FileChange, commit_of, new_commit, object_id, path_text
from makima.worktree.verify import PackLimits, StoredPack, receive_pack_file, verify_pack

_HEADS = b"refs/heads/"


class OutgoingObjects(NamedTuple):
    """What a push sends: the ids of the objects the receiver lacks, and their pack in chunks."""

    object_ids: list[str]
    # Consecutive slices of one pack, each at most the chunk size asked for.
    chunks: Iterator[bytes]


class LocalWorktree:
    """A daemon's worktree at `path`, on `branch`; made by `init` or `open`, closed by `close`."""

    def __init__(self, path: Path, repo: Repo, branch: str) -> None:
        assert isinstance(repo.object_store, DiskObjectStore)
        self.path = path
        self.branch = branch
        self._repo = repo
        self._store = repo.object_store
        self._ref: Ref = branch_ref(branch)

    @classmethod
    def init(cls, path: str | os.PathLike[str], *, branch: str) -> LocalWorktree:
        """Create an empty worktree at `path` (missing or an empty directory) on the unborn `branch`."""
        init_worktree(Path(path), branch=branch)
        return cls.open(path)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> LocalWorktree:
        """Open the worktree at `path`, on the branch its HEAD names.

        `.git` must be a directory of its own, not a link nor a `gitdir:` file, so no write of the
        worktree's repository is led outside `path`. NotARepositoryError otherwise; GitError if HEAD
        is detached (a worktree always works on its branch).
        """
        root = Path(path)
        try:
            dot_git = os.lstat(root / ".git")
        except (FileNotFoundError, NotADirectoryError):
            raise NotARepositoryError(f"{os.fspath(root)!r} has no .git directory", path=os.fspath(root)) from None
        if not stat.S_ISDIR(dot_git.st_mode):
            raise NotARepositoryError(
                f"{os.fspath(root)!r} has a .git that is not a directory", path=os.fspath(root)
            ) from None
        repo = open_repository(root)
        try:
            head = repo.refs.read_ref(Ref(b"HEAD")) or b""
            if not head.startswith(b"ref: " + _HEADS):
                raise GitError(f"the HEAD of {os.fspath(root)!r} is not on a branch", path=os.fspath(root))
            return cls(root, repo, head[len(b"ref: " + _HEADS) :].decode("utf-8", "surrogateescape"))
        except BaseException:
            repo.close()
            raise

    def close(self) -> None:
        self._repo.close()

    def __enter__(self) -> LocalWorktree:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def head(self) -> str | None:
        """The commit the branch points at, or None while it is unborn."""
        sha = read_ref(self._repo, self._ref)
        return None if sha is None else sha.decode("ascii")

    def has_object(self, sha: str) -> bool:
        """Whether the local store holds `sha`; a commit it holds comes with everything it reaches."""
        return is_object_id(sha) and object_id(sha) in self._store

    def apply_pack(
        self, chunks: Iterable[bytes], *, commit: str | None = None, limits: PackLimits | None = None
    ) -> StoredPack:
        """Add a pack received from the service (FetchObjects) to the local store, once verified.

        The checks are the service's own for uploads: limits, object syntax, safe tree names and
        modes, and completeness (`commit`, if given, and everything the pack refers to must be in
        the pack or already here; a thin pack is completed from the local store). InvalidPackError
        leaves nothing behind. A pack of objects all present adds nothing (`name` None).
        """
        store = self._store
        limits = limits or PackLimits()
        with tempfile.TemporaryDirectory(prefix="makima-incoming-", dir=self._repo.controldir()) as scratch:
            path = os.path.join(scratch, "incoming.pack")
            with open(path, "w+b") as f:
                receive_pack_file(f, chunks, limits)
                verified = verify_pack(
                    f, path, store, commit=None if commit is None else object_id(commit), limits=limits
                )
            if all(sha in store for sha in verified.object_ids):
                return StoredPack(name=None, object_count=verified.object_count, byte_size=0)
            byte_size = os.path.getsize(path)
            base = os.path.join(os.fspath(store.pack_dir), f"pack-{verified.name}")
            # The index last: git and dulwich consider a pack only once its index is there.
            for source, target in ((path, f"{base}.pack"), (verified.index_path, f"{base}.idx")):
                os.chmod(source, PACK_MODE)
                os.replace(source, target)
        consolidate_packs(store)
        return StoredPack(name=verified.name, object_count=verified.object_count, byte_size=byte_size)

    def materialize(self, commit_sha: str) -> list[FileChange]:
        """Make the worktree, the index and the branch hold `commit_sha` ("" for the empty tree, unborn).

        Only the differences are written: files of the current content that differ or are absent
        from the commit are replaced or removed (untracked ones too, as a claim starts from the
        commit alone); ignored files stay unless they stand where the commit has something else, as
        with `git reset --hard`: the daemon's directory is its scratch copy of the task. Nothing is
        written outside the directory and no symlink is followed. The commit's objects must be in
        the local store (RefNotFoundError, nothing changed); afterwards `git status` is clean.
        Returns what changed.
        """
        target = None if commit_sha == "" else object_id(commit_sha)
        old = read_ref(self._repo, self._ref)
        tree = None if target is None else commit_of(self._store, target).tree
        result = checkout(self._repo, self.path, tree, force=True)
        move_ref(self._repo, self._ref, old=old, new=target, message=b"makima: materialize " + (target or b"empty"))
        return [FileChange(path_text(p), kind) for p, kind in result.changes]

    def add_branch(self, name: str, commit_sha: str) -> bool:
        """Create branch `name` at `commit_sha` (a commit in the local store) unless a branch of that
        name, or one that clashes with it (`a` versus `a/b`), exists: that one is left as it is.
        Returns whether the branch was created."""
        sha = commit_of(self._store, object_id(commit_sha)).id
        try:
            move_ref(self._repo, branch_ref(name), old=None, new=sha, message=b"makima: branch at " + sha)
        except (ConcurrentUpdateError, BranchExistsError):
            return False
        return True

    def checkpoint(self, message: str, *, parent: str | None = None) -> Commit:
        """Commit what `git add -A` would stage and make it the branch's head; returns the commit.

        Its parent is the branch's head (none while unborn), or `parent` if given (a commit in the
        local store). The rules are the service's snapshot rules, from the same code. The index then
        describes the commit, so `git status` is clean.
        """
        old = read_ref(self._repo, self._ref)
        base = old if parent is None else commit_of(self._store, object_id(parent)).id
        shot = read_worktree(self._repo, self.path)
        commit = new_commit(shot.tree, base, message)
        store_objects(self._store, [*shot.objects, commit])
        move_ref(self._repo, self._ref, old=old, new=commit.id, message=b"makima: checkpoint " + commit.id)
        replace_index(self._repo, shot.index, tree=shot.tree)
        return commit

    def outgoing(
        self, commit_sha: str, *, known: Iterable[str] = (), chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> OutgoingObjects:
        """The objects of `commit_sha` not reachable from `known`, as a pack in chunks of `chunk_size`.

        `known` are the commits the service is known to have (the start commit materialized, the
        checkpoints already pushed, or what it answered in a have/want exchange); ones unknown here
        are ignored. Deltas may be against objects of `known` (a thin pack), which the service
        completes from its store. RefNotFoundError if `commit_sha` is not in the local store.
        """
        wants, haves = [object_id(commit_sha).decode()], list(known)
        missing = find_missing(self._store, wants=wants, haves=haves)
        bases = path_bases(self._store, wants=wants, haves=haves, missing=set(missing.objects))
        pack = pack_of(
            self._store, missing.objects, other_haves=missing.remote_has, delta_bases=bases, chunk_size=chunk_size
        )
        return OutgoingObjects([sha.decode("ascii") for sha in missing.objects], pack.chunks)
