"""Worktree operations of the service: checkpoint (snapshot + publish), restore, compare, branch, clone.

All functions are synchronous and take the worktree path; callers serialize calls per worktree.
A checkpoint is split in two so the domain can order it with its database write: `snapshot` only
writes objects (an unreferenced commit is harmless if the database write then fails), `publish`
moves the branch with a compare-and-swap and refreshes the index.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias, TypeVar

from dulwich.diff_tree import CHANGE_ADD, CHANGE_DELETE, tree_changes
from dulwich.errors import NotGitRepository
from dulwich.file import FileLocked
from dulwich.object_store import BaseObjectStore, DiskObjectStore
from dulwich.objects import Commit, ObjectID, ShaFile, Tag, Tree, TreeEntry, valid_hexsha
from dulwich.pack import Pack
from dulwich.refs import DiskRefsContainer, Ref, check_ref_format
from dulwich.repo import BaseRepo, Repo

from makima.server.git import _fs, _index
from makima.server.git._index import IndexEntry
from makima.server.git._worktree import ChangeKind, FileState, apply_tree, scan, tree_entry
from makima.server.git.errors import (
    BranchExistsError,
    ConcurrentUpdateError,
    GitError,
    RefNotFoundError,
)
from makima.server.git.paths import SourceRepository, read_alternates, validate_branch_name

_IDENTITY = b"makima <makima@localhost>"
_HEAD = Ref(b"HEAD")
_MODE_TREE = 0o040000
# From this many new objects on, one pack is cheaper than as many loose files (see _store_objects).
_PACK_THRESHOLD = 8
# Packs beyond this number are merged (the smallest ones), as `git gc --auto` does at 50.
_MAX_PACKS = 32
# How long to wait for a lock file (ref or index) held by another writer before giving up.
_LOCK_WAIT_SECONDS = 2.0

_T = TypeVar("_T")
# A directory while building trees: name -> subdirectory, or (mode, sha) of a file.
_TreeNode: TypeAlias = dict[bytes, "_TreeNode | tuple[int, ObjectID]"]


@dataclass(frozen=True)
class Snapshot:
    """A commit of a worktree's content, written but not yet published on its branch."""

    commit_sha: str
    parent_sha: str | None
    tree_sha: str
    # The stat of every file as the snapshot hashed it, so `publish` refreshes the index without
    # reading the files again. Not part of the value: a Snapshot rebuilt from stored shas also works.
    _index_entries: Mapping[bytes, IndexEntry] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class FileChange:
    """One path that differs between two states of a worktree."""

    path: str
    change: ChangeKind


def init_worktree(path: Path, *, branch: str) -> None:
    """Create an empty repository at `path` whose HEAD is the unborn `branch`.

    `path` must not exist or be an empty directory, so an existing worktree is never taken over.
    """
    validate_branch_name(branch)
    created = _prepare_empty_dir(path)
    try:
        Repo.init(os.fspath(path), default_branch=branch.encode()).close()
    except BaseException:
        _discard(path, created=created)
        raise


def clone_worktree(source: SourceRepository, path: Path, *, ref: str | None, branch: str) -> str:
    """Check out `ref` of the repository `source` into a new worktree at `path`, on a new `branch`.

    `source` comes from `paths.resolve_repository`, which kept every directory it names inside the
    workspace root; only those real paths are read. Objects are shared with the source through
    objects/info/alternates, never copied, so a fork of a large repository costs only its checkout.
    The alternates file lists the source's whole chain, flattened: git refuses alternates nested
    more than five deep, and the service reads none beyond that file (see `_ObjectStore`). Returns the
    commit sha; RefNotFoundError if `ref` (branch, tag or full sha; None for the source's HEAD) is
    unknown. On failure `path` is left as it was found.
    """
    new_ref = _branch_ref(branch)
    alternates = [os.fspath(p) for p in (source.objects_dir, *source.alternates)]
    source_store = _ObjectStore(alternates[0], alternates[1:])
    try:
        refs = DiskRefsContainer(os.fspath(source.common_dir), os.fspath(source.git_dir))
        commit_sha = _resolve_commit(BaseRepo(source_store, refs), ref)
    finally:
        source_store.close()

    created = _prepare_empty_dir(path)
    try:
        Repo.init(os.fspath(path), default_branch=branch.encode()).close()
        info_dir = os.path.join(path, ".git", "objects", "info")
        os.makedirs(info_dir, exist_ok=True)
        with open(os.path.join(info_dir, "alternates"), "w", encoding="utf-8") as f:
            f.writelines(alternate + "\n" for alternate in alternates)
        with _open(path) as repo:
            target = _flatten(repo.object_store, _commit(repo, commit_sha).tree)
            root_fd = _fs.open_root(path)
            try:
                checkout = apply_tree(root_fd, repo.object_store, current={}, target=target)
            finally:
                os.close(root_fd)
            _write_index(repo, checkout.index)
            repo.refs.add_if_new(
                new_ref, commit_sha, committer=_IDENTITY, message=b"makima: worktree from " + commit_sha
            )
    except BaseException:
        _discard(path, created=created)
        raise
    return commit_sha.decode()


def head_commit(path: Path, *, branch: str) -> str | None:
    """The commit `branch` points at, or None while it is unborn."""
    ref = _branch_ref(branch)
    with _open(path) as repo:
        sha = _read_ref(repo, ref)
    return None if sha is None else sha.decode()


def snapshot(path: Path, *, branch: str, message: str) -> Snapshot:
    """Write a commit of the whole worktree on top of `branch`'s head, without moving any ref.

    The commit holds what `git add -A` would stage: tracked files and every untracked file that is
    not ignored (.gitignore at any depth, .git/info/exclude, the user's excludes file); symlinks are
    stored as links, never followed. Neither the branch nor the index changes, so if the caller's
    own write fails the commit simply stays unreferenced. Call `publish` to make it the head.
    """
    ref = _branch_ref(branch)
    with _open(path) as repo:
        parent = _read_ref(repo, ref)
        root_fd = _fs.open_root(path)
        try:
            state = scan(repo, root_fd, keep_blobs=True)
        finally:
            os.close(root_fd)
        tree_sha, trees = _build_trees({path: (f.mode, f.sha) for path, f in state.files.items()})
        commit = _new_commit(tree_sha, parent, message)
        _store_objects(repo.object_store, [*state.blobs.values(), *trees, commit])
    return Snapshot(
        commit_sha=commit.id.decode(),
        parent_sha=None if parent is None else parent.decode(),
        tree_sha=tree_sha.decode(),
        _index_entries={path: f.entry for path, f in state.files.items()},
    )


def publish(path: Path, *, branch: str, snapshot: Snapshot, write_index: bool = True) -> None:
    """Make `snapshot` the head of `branch`, point HEAD at the branch and make the index match it.

    With `write_index` False the index is left alone: a rewind publishes its safety snapshot after
    the worktree and index were already restored to an older tree.

    The branch moves only if it still points at the snapshot's parent (or is still unborn): a
    compare-and-swap under git's ref lock, safe across processes; ConcurrentUpdateError if another
    writer moved it first. Publishing a snapshot that already is the head succeeds, so a retried
    call is harmless.
    """
    ref = _branch_ref(branch)
    new = _hex(snapshot.commit_sha)
    old = None if snapshot.parent_sha is None else _hex(snapshot.parent_sha)
    with _open(path) as repo:
        commit = _commit(repo, new)
        if commit.tree.decode() != snapshot.tree_sha or commit.parents != ([] if old is None else [old]):
            raise GitError(f"snapshot does not describe commit {snapshot.commit_sha}", commit_sha=snapshot.commit_sha)
        _compare_and_swap(repo, ref, old=old, new=new)
        if repo.refs.read_ref(_HEAD) != b"ref: " + ref:
            _locked(lambda: repo.refs.set_symbolic_ref(_HEAD, ref), what="HEAD")
        if not write_index:
            return
        if snapshot._index_entries is not None:
            # Made by `snapshot` for exactly this tree (checked above): no need to read the tree.
            entries = snapshot._index_entries
        else:
            entries = _index_for_tree(repo, commit.tree)
        _write_index(repo, entries)


def restore(path: Path, *, commit_sha: str) -> list[FileChange]:
    """Make the worktree and the index hold exactly the tree of `commit_sha`; refs do not move.

    Only the differences are applied: changed files rewritten, files absent from the commit removed
    (ignored files are left alone) with the directories they leave empty, missing files brought back.
    Files are replaced, never written through, so a symlink or hard link planted in the worktree
    cannot carry a write outside it. Returns what changed, relative to the worktree before.
    """
    with _open(path) as repo:
        target = _flatten(repo.object_store, _commit(repo, _hex(commit_sha)).tree)
        root_fd = _fs.open_root(path)
        try:
            state = scan(repo, root_fd, keep_blobs=False)
            checkout = apply_tree(root_fd, repo.object_store, current=state.files, target=target)
        finally:
            os.close(root_fd)
        _write_index(repo, checkout.index)
    return [FileChange(_text(p), kind) for p, kind in checkout.changes]


def compare(path: Path, *, base_sha: str, target_sha: str | None) -> list[FileChange]:
    """Files added, modified or deleted from commit `base_sha` to `target_sha`, sorted by path.

    With `target_sha` None the target is the live worktree, as `snapshot` would record it now
    (ignored files excluded). A change of kind (file to symlink) counts as modified.
    """
    with _open(path) as repo:
        store = repo.object_store
        base_tree = _commit(repo, _hex(base_sha)).tree
        if target_sha is not None:
            target_tree = _commit(repo, _hex(target_sha)).tree
            diff = tree_changes(store, base_tree, target_tree, change_type_same=True)
            changes = [_tree_change(c.type, c.old, c.new) for c in diff]
        else:
            root_fd = _fs.open_root(path)
            try:
                state = scan(repo, root_fd, keep_blobs=False)
            finally:
                os.close(root_fd)
            changes = _diff(_flatten(store, base_tree), state.files)
    return sorted(changes, key=lambda c: c.path)


def create_branch(path: Path, *, name: str, commit_sha: str) -> str:
    """Create branch `name` at `commit_sha`; returns its full ref name (`refs/heads/<name>`).

    InvalidRefNameError for a name git refuses, RefNotFoundError for an unknown commit,
    BranchExistsError if the branch exists or clashes with one on disk (`a` versus `a/b`).
    """
    ref = _branch_ref(name)
    sha = _hex(commit_sha)
    with _open(path) as repo:
        _commit(repo, sha)
        for existing in repo.refs.allkeys():
            if existing.startswith(ref + b"/") or ref.startswith(existing + b"/"):
                raise BranchExistsError(
                    f"branch {name!r} clashes with {existing.decode(errors='replace')!r}",
                    name=name,
                    existing=existing.decode(errors="replace"),
                )
        try:
            added = _locked(
                lambda: repo.refs.add_if_new(ref, sha, committer=_IDENTITY, message=b"makima: branch at " + sha),
                what=ref.decode(),
            )
        except (IsADirectoryError, NotADirectoryError):
            added = False  # another process made a clashing branch since the check above
        if not added:
            raise BranchExistsError(f"branch {name!r} already exists", name=name)
    return ref.decode()


def delete_branch(path: Path, *, name: str, commit_sha: str) -> None:
    """Remove branch `name` if it still points at `commit_sha` (undo of a `create_branch`)."""
    ref = _branch_ref(name)
    with _open(path) as repo:
        _locked(lambda: repo.refs.remove_if_equals(ref, _hex(commit_sha)), what=ref.decode())


# -- helpers -------------------------------------------------------------------------------------


class _ObjectStore(DiskObjectStore):
    """An object store on disk whose alternates are the given directories, each without alternates of its own.

    dulwich would follow every alternates file it meets, recursively. A worktree made by
    `clone_worktree` lists its source's whole chain, checked inside the workspace root, in its own
    file; reading no further means a source whose alternates file is edited later cannot lead a
    read of its forks outside the root.
    """

    def __init__(self, path: str, alternates: Iterable[str]) -> None:
        super().__init__(path)
        self._alternates = [_ObjectStore(alternate, ()) for alternate in alternates]


def _open(path: Path) -> Repo:
    objects_dir = os.path.join(path, ".git", "objects")
    try:
        return Repo(os.fspath(path), object_store=_ObjectStore(objects_dir, read_alternates(objects_dir)))
    except (NotGitRepository, NotADirectoryError):
        raise GitError(f"{os.fspath(path)!r} is not a git worktree", path=os.fspath(path)) from None


def _branch_ref(branch: str) -> Ref:
    validate_branch_name(branch)
    return Ref(b"refs/heads/" + branch.encode())


def _hex(sha: str) -> ObjectID:
    raw = sha.lower().encode("ascii", "replace")
    if len(raw) != 40 or not valid_hexsha(raw):
        raise RefNotFoundError(f"{sha!r} is not a full commit sha", sha=sha)
    return ObjectID(raw)


def _text(path: bytes) -> str:
    return path.decode("utf-8", "surrogateescape")


def _read_ref(repo: BaseRepo, ref: Ref) -> ObjectID | None:
    try:
        return repo.refs[ref]
    except KeyError:
        return None


def _commit(repo: Repo, sha: ObjectID) -> Commit:
    try:
        obj = repo.object_store[sha]
    except KeyError:
        raise RefNotFoundError(f"unknown commit {sha.decode()}", sha=sha.decode()) from None
    if not isinstance(obj, Commit):
        raise RefNotFoundError(f"{sha.decode()} is a {obj.type_name.decode()}, not a commit", sha=sha.decode())
    return obj


def _resolve_commit(repo: BaseRepo, ref: str | None) -> ObjectID:
    """Commit named by `ref` the way `git rev-parse` orders names: full sha, then tags, then branches."""
    if ref is None:
        candidates = [_HEAD]
    else:
        raw = ref.encode("utf-8", "surrogateescape")
        if len(raw) == 40 and valid_hexsha(raw) and ObjectID(raw.lower()) in repo.object_store:
            return _peel(repo, ObjectID(raw.lower()), ref)
        names = [raw] if raw.startswith(b"refs/") else [b"refs/tags/" + raw, b"refs/heads/" + raw]
        candidates = [Ref(name) for name in names]
    for candidate in candidates:
        # check_ref_format keeps a hostile name such as '../../x' from being read as a path.
        if candidate != _HEAD and not check_ref_format(candidate):
            continue
        sha = _read_ref(repo, candidate)
        if sha is not None:
            return _peel(repo, sha, ref)
    raise RefNotFoundError(f"unknown ref {ref or 'HEAD'!r}", ref=ref or "HEAD")


def _peel(repo: BaseRepo, sha: ObjectID, ref: str | None) -> ObjectID:
    obj: ShaFile = repo.object_store[sha]
    while isinstance(obj, Tag):
        obj = repo.object_store[obj.object[1]]
    if not isinstance(obj, Commit):
        raise RefNotFoundError(f"{ref or 'HEAD'!r} does not name a commit", ref=ref or "HEAD")
    return obj.id


def _flatten(store: BaseObjectStore, tree: ObjectID) -> dict[bytes, tuple[int, ObjectID]]:
    """Every non-tree entry below `tree`, by '/'-separated path."""
    files: dict[bytes, tuple[int, ObjectID]] = {}
    pending = [(b"", tree)]
    while pending:
        prefix, sha = pending.pop()
        obj = store[sha]
        assert isinstance(obj, Tree)
        for name, mode, child in obj.iteritems():
            if mode == _MODE_TREE:
                pending.append((prefix + name + b"/", child))
            else:
                files[prefix + name] = (mode, child)
    return files


def _build_trees(files: Mapping[bytes, tuple[int, ObjectID]]) -> tuple[ObjectID, list[Tree]]:
    """Root tree id and every tree object of `files` ('/'-separated path -> mode, blob sha)."""
    root: _TreeNode = {}
    for path, entry in files.items():
        *dirs, name = path.split(b"/")
        node = root
        for part in dirs:
            child = node.setdefault(part, {})
            assert isinstance(child, dict)  # a path cannot be a file and a directory at once
            node = child
        node[name] = entry
    trees: list[Tree] = []

    def build(node: _TreeNode) -> ObjectID:
        tree = Tree()
        for name, item in node.items():
            if isinstance(item, dict):
                tree.add(name, _MODE_TREE, build(item))
            else:
                tree.add(name, item[0], item[1])
        trees.append(tree)
        return tree.id

    return build(root), trees


def _new_commit(tree: ObjectID, parent: ObjectID | None, message: str) -> Commit:
    commit = Commit()
    commit.tree = tree
    commit.parents = [] if parent is None else [parent]
    commit.author = commit.committer = _IDENTITY
    commit.author_time = commit.commit_time = int(time.time())
    commit.author_timezone = commit.commit_timezone = 0
    text = message if message.endswith("\n") or not message else message + "\n"
    commit.message = text.encode("utf-8", "surrogateescape")
    return commit


def _store_objects(store: BaseObjectStore, objects: Iterable[ShaFile]) -> None:
    """Write the objects the store lacks: loose when very few, else as one pack.

    Creating a file is the dominant cost (about 1 ms per loose object on the machines measured,
    against a few ms for a whole pack), so any checkpoint beyond a handful of objects is one pack;
    `_consolidate_packs` then keeps the number of packs bounded.
    """
    assert isinstance(store, DiskObjectStore)
    # Own packs only: a lookup through a chain of alternates costs more than writing an object twice.
    todo = list({obj.id: obj for obj in objects if not store.contains_packed(obj.id)}.values())
    if len(todo) >= _PACK_THRESHOLD:
        store.add_objects([(obj, None) for obj in todo])
        _consolidate_packs(store)
        return
    for obj in todo:
        # Another process writing the same object holds its lock; its result is the same object.
        _locked(functools.partial(store.add_object, obj), what=obj.id.decode())


def _consolidate_packs(store: DiskObjectStore) -> None:
    """Merge the smallest packs into one once there are more than `_MAX_PACKS`.

    Every pack costs each object lookup an index search, so their number must stay bounded.
    Only small packs are rewritten, never a large first import; packs with a .keep file, which
    git uses to protect them, are left alone. The merged pack is complete before any old one is
    removed, and readers (git, dulwich) rescan the pack directory when a pack disappears.
    """
    pack_dir = os.fspath(store.pack_dir)
    bases = [
        os.path.join(pack_dir, name[: -len(".pack")])
        for name in os.listdir(pack_dir)
        if name.startswith("pack-") and name.endswith(".pack")
    ]
    bases = [b for b in bases if os.path.exists(b + ".idx") and not os.path.exists(b + ".keep")]
    if len(bases) <= _MAX_PACKS:
        return
    bases.sort(key=lambda b: os.path.getsize(b + ".pack"))
    merged = bases[: len(bases) - _MAX_PACKS // 2]
    objects: dict[bytes, ShaFile] = {}
    for base in merged:
        with Pack(base, object_format=store.object_format) as pack:
            for obj in pack.iterobjects():
                objects[obj.id] = obj
    new_pack = store.add_objects([(obj, None) for obj in objects.values()])
    keep = None if new_pack is None else os.path.join(pack_dir, "pack-" + new_pack.name().decode())
    for base in merged:
        if base == keep:
            continue
        # The index first: without it no reader considers the pack any more.
        for suffix in (".idx", ".pack", ".rev", ".bitmap", ".mtimes"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(base + suffix)


def _index_for_tree(repo: Repo, tree: ObjectID) -> dict[bytes, IndexEntry]:
    """Index entries for `tree`, keeping the current index's stat wherever it caches the same content."""
    old = _index.read_index(repo.index_path())
    entries: dict[bytes, IndexEntry] = {}
    for path, (mode, sha) in _flatten(repo.object_store, tree).items():
        entry = old.get(path)
        entries[path] = (
            entry if entry is not None and entry.sha == sha and entry.mode == mode else tree_entry(mode, sha)
        )
    return entries


def _write_index(repo: Repo, entries: Mapping[bytes, IndexEntry]) -> None:
    _locked(lambda: _index.write_index(repo.index_path(), entries), what="index")


def _compare_and_swap(repo: Repo, ref: Ref, *, old: ObjectID | None, new: ObjectID) -> None:
    message = b"makima: checkpoint " + new

    def attempt() -> bool:
        if old is None:
            return repo.refs.add_if_new(ref, new, committer=_IDENTITY, message=message)
        return repo.refs.set_if_equals(ref, old, new, committer=_IDENTITY, message=message)

    try:
        swapped = _locked(attempt, what=ref.decode())
    except (IsADirectoryError, NotADirectoryError):
        raise BranchExistsError(f"{ref.decode()} clashes with another branch", ref=ref.decode()) from None
    if swapped:
        return
    current = _read_ref(repo, ref)
    if current == new:
        return  # already published: a retried call
    expected = "unborn" if old is None else old.decode()
    found = "unborn" if current is None else current.decode()
    raise ConcurrentUpdateError(
        f"{ref.decode()} moved: expected {expected}, found {found}", ref=ref.decode(), expected=expected, found=found
    )


def _locked(action: Callable[[], _T], *, what: str) -> _T:
    """Run `action`, waiting a little while another process holds the lock file it needs."""
    deadline = time.monotonic() + _LOCK_WAIT_SECONDS
    while True:
        try:
            return action()
        except FileLocked:
            if time.monotonic() >= deadline:
                raise ConcurrentUpdateError(f"{what} is locked by another writer", target=what) from None
            time.sleep(0.01)


def _tree_change(kind: str, old: TreeEntry | None, new: TreeEntry | None) -> FileChange:
    if kind == CHANGE_DELETE:
        assert old is not None and old.path is not None
        return FileChange(_text(old.path), "deleted")
    assert new is not None and new.path is not None
    return FileChange(_text(new.path), "added" if kind == CHANGE_ADD else "modified")


def _diff(base: Mapping[bytes, tuple[int, ObjectID]], live: Mapping[bytes, FileState]) -> list[FileChange]:
    changes = [FileChange(_text(p), "deleted") for p in base if p not in live]
    for path, state in live.items():
        before = base.get(path)
        if before is None:
            changes.append(FileChange(_text(path), "added"))
        elif before != (state.mode, state.sha):
            changes.append(FileChange(_text(path), "modified"))
    return changes


def _prepare_empty_dir(path: Path) -> bool:
    """Make sure `path` is an empty directory; returns whether it was created (to undo on failure)."""
    try:
        os.makedirs(path)
        return True
    except FileExistsError:
        if not os.path.isdir(path) or os.path.islink(path) or os.listdir(path):
            raise GitError(f"{os.fspath(path)!r} exists and is not an empty directory", path=os.fspath(path)) from None
        return False


def _discard(path: Path, *, created: bool) -> None:
    """Undo a half-made worktree: remove it, or empty it again if it existed before."""
    if created:
        shutil.rmtree(path, ignore_errors=True)
        return
    for name in os.listdir(path):
        child = os.path.join(path, name)
        if os.path.isdir(child) and not os.path.islink(child):
            shutil.rmtree(child, ignore_errors=True)
        else:
            os.unlink(child)
