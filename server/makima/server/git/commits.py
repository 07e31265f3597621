"""Git work on an owner's object store: commits the service makes on its records, objects moved
between a service-held worktree and the store, trees compared inside the store.

Beside the worktree operations, this is what the domain needs now that every checkpoint's objects
live in the object store (DESIGN.md section 5). Functions are synchronous
dulwich code, run in a worker thread on the store (`Tx.in_store`, `ObjectStores.run`). A worktree
repository is read only through the directories `git.resolve_repository` resolved inside the
workspace root, and written only when the service has just created it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dulwich.diff_tree import CHANGE_ADD, CHANGE_DELETE, tree_changes
from dulwich.object_store import DiskObjectStore
from dulwich.objects import Commit, ObjectID, ShaFile, Tree
from dulwich.refs import Ref
from dulwich.repo import Repo

from makima.server import git
from makima.server.git.objects import OwnerObjectStore, find_missing, outgoing_pack
from makima.worktree.packs import PackedObjects
from makima.worktree.repository import ObjectDir

# The identity of every commit the service writes (the git layer's snapshots use the same).
IDENTITY = b"makima <makima@localhost>"


@dataclass(frozen=True)
class CommitInfo:
    """A commit of the store: its id, its tree and its parents (hex)."""

    sha: str
    tree_sha: str
    parent_shas: tuple[str, ...]


def read_commit(store: OwnerObjectStore, sha: str) -> CommitInfo | None:
    """The commit `sha` of the store; None if the store does not hold it, or holds another kind of object."""
    try:
        obj = store[ObjectID(sha.encode("ascii"))]
    except KeyError:
        return None
    if not isinstance(obj, Commit):
        return None
    return CommitInfo(
        sha=sha, tree_sha=obj.tree.decode("ascii"), parent_shas=tuple(p.decode("ascii") for p in obj.parents)
    )


def make_commit(store: OwnerObjectStore, *, tree_sha: str | None, parent_sha: str | None, message: str) -> CommitInfo:
    """Store a commit of the tree `tree_sha` (None: the empty tree) on `parent_sha`, both already stored.

    How the service changes the code of a task whose worktree it does not hold: the next daemon
    that claims the task materializes the commit.
    """
    new: list[ShaFile] = []
    if tree_sha is None:
        empty = Tree()
        new.append(empty)
        tree_id = empty.id
    else:
        tree_id = ObjectID(tree_sha.encode("ascii"))
    commit = Commit()
    commit.tree = tree_id
    commit.parents = [] if parent_sha is None else [ObjectID(parent_sha.encode("ascii"))]
    commit.author = commit.committer = IDENTITY
    commit.author_time = commit.commit_time = int(time.time())
    commit.author_timezone = commit.commit_timezone = 0
    commit.message = message.encode("utf-8", "surrogateescape") + (b"" if message.endswith("\n") else b"\n")
    new.append(commit)
    store.add_objects([(obj, None) for obj in new])
    return CommitInfo(
        sha=commit.id.decode("ascii"),
        tree_sha=tree_id.decode("ascii"),
        parent_shas=() if parent_sha is None else (parent_sha,),
    )


def changes_between(store: OwnerObjectStore, base: CommitInfo, target: CommitInfo) -> list[git.FileChange]:
    """Files added, modified or deleted from `base` to `target`, sorted by path, as `git.compare` reports them."""
    changes = []
    for change in tree_changes(
        store,
        ObjectID(base.tree_sha.encode("ascii")),
        ObjectID(target.tree_sha.encode("ascii")),
        change_type_same=True,
    ):
        if change.type == CHANGE_DELETE:
            assert change.old is not None and change.old.path is not None
            changes.append(git.FileChange(_text(change.old.path), "deleted"))
        else:
            assert change.new is not None and change.new.path is not None
            changes.append(git.FileChange(_text(change.new.path), "added" if change.type == CHANGE_ADD else "modified"))
    return sorted(changes, key=lambda c: c.path)


def store_from_repository(
    store: OwnerObjectStore, source: git.SourceRepository, commit_sha: str, *, worktree: bool = False
) -> int:
    """Put into the store what it lacks of `commit_sha` and its history, read from the repository `source`.

    As a push would: the commit's parents that the store holds are the haves, so a checkpoint on top
    of a stored one sends only its new objects. A repository imported from the workspace is sent as
    a thin pack verified like any upload; the repository of a service-held worktree (`worktree`),
    whose new objects the service's snapshots wrote, takes the lighter checks of
    `OwnerObjectStore.add_from_worktree`, and sends nothing the store holds already, even what no
    have reaches (a rewind commit's tree is its target's): the store holds every object with all it
    reaches. InvalidPackError either way. Returns the number of objects sent (0: all stored).
    """
    if worktree:
        return _store_from_worktree(store, source, commit_sha)
    if not store.lacking([commit_sha]):
        return 0
    with _repository_objects(source) as local:
        commit = local[ObjectID(commit_sha.encode("ascii"))]
        assert isinstance(commit, Commit)
        haves = [p.decode("ascii") for p in commit.parents if p in store]
        outgoing = outgoing_pack(local, wants=[commit_sha], haves=haves)
        store.receive_pack(outgoing.chunks, commit=commit_sha, limits=store.limits)
    return outgoing.object_count


def _store_from_worktree(store: OwnerObjectStore, source: git.SourceRepository, commit_sha: str) -> int:
    """`store_from_repository` for the repository of a service-held worktree."""
    # The packs as listed once: a pack another process adds meanwhile only costs a duplicate.
    stored = PackedObjects(store)
    if stored.packed(ObjectID(commit_sha.encode("ascii"))):
        return 0
    with _repository_objects(source) as local:
        commit = local[ObjectID(commit_sha.encode("ascii"))]
        assert isinstance(commit, Commit)
        haves = [p.decode("ascii") for p in commit.parents if stored.packed(p)]
        missing = find_missing(local, wants=[commit_sha], haves=haves, held=stored.packed)
        store.add_from_worktree(local, missing)
    return len(missing.objects)


def seed_repository(store: OwnerObjectStore, path: Path, *, branch: str, commit_sha: str) -> None:
    """Copy every object `commit_sha` reaches into the repository just created at `path`, and point
    `branch` at the commit (the files are checked out afterwards by `git.restore`)."""
    outgoing = store.outgoing_pack(wants=[commit_sha], haves=[], thin=False)
    with Repo(str(path)) as repo:
        f, commit, abort = repo.object_store.add_pack()
        try:
            for chunk in outgoing.chunks:
                f.write(chunk)
        except BaseException:
            abort()
            raise
        commit()
        repo.refs.add_if_new(
            Ref(b"refs/heads/" + branch.encode()),
            ObjectID(commit_sha.encode("ascii")),
            committer=IDENTITY,
            message=b"makima: worktree from the object store",
        )


@contextmanager
def _repository_objects(source: git.SourceRepository) -> Iterator[DiskObjectStore]:
    """The objects of `source`: its objects directory and exactly the alternates resolved for it.

    dulwich would read every `info/alternates` file it meets; these were all checked inside the
    workspace root by `git.resolve_repository`, so none is read again.
    """
    store = ObjectDir(str(source.objects_dir), [str(directory) for directory in source.alternates])
    try:
        yield store
    finally:
        store.close()  # and its alternates


def _text(path: bytes) -> str:
    return path.decode("utf-8", "surrogateescape")
