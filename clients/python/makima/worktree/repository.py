"""A worktree on disk: a directory whose repository is `<dir>/.git`, as the service and daemons keep them.

Reading a worktree is what `git add -A` would stage; writing one is a checkout that touches only
the differences, never through a symlink. The index is the stat cache of both (see `_worktree`).
Objects go to the repository's own `.git/objects`, as packs once there are more than a few, with
the number of packs kept bounded. Ref moves are compare-and-swaps under git's lock files, so
another writer (the git command line too) is never overwritten silently.

Every function is synchronous; callers serialize calls per worktree.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from dulwich.errors import NotGitRepository
from dulwich.file import FileLocked
from dulwich.object_store import BaseObjectStore, DiskObjectStore
from dulwich.objects import ObjectID, ShaFile
from dulwich.pack import Pack, PackChunkGenerator, full_unpacked_object, iter_sha1, write_pack_index
from dulwich.refs import Ref
from dulwich.repo import BaseRepo, Repo

from makima.worktree import _fs, _index
from makima.worktree._index import IndexEntry
from makima.worktree._worktree import Checkout, apply_tree, scan, tree_entry
from makima.worktree.errors import BranchExistsError, ConcurrentUpdateError, GitError
from makima.worktree.packs import PackedObjects, share_index
from makima.worktree.paths import validate_branch_name
from makima.worktree.transfer import repack
from makima.worktree.trees import IDENTITY, build_trees, flatten

# From this many new objects on, one pack is cheaper than as many loose files (see store_objects).
_PACK_THRESHOLD = 8
# Packs beyond this number are merged (the smallest ones), as `git gc --auto` does at 50.
_MAX_PACKS = 32
# Git's own mode for pack files: read-only, so nothing rewrites a pack in place.
PACK_MODE = 0o444
# How long to wait for a lock file (ref or index) held by another writer before giving up.
_LOCK_WAIT_SECONDS = 2.0

_T = TypeVar("_T")


class ObjectDir(DiskObjectStore):
    """An object store on disk whose alternates are the given directories, each without alternates of its own.

    dulwich would follow every alternates file it meets, recursively. The service lists a fork's
    whole chain, checked inside its workspace root, in the fork's own file; reading no further
    means a source whose alternates file is edited later cannot lead a read outside the root. A
    daemon's worktree has no alternates at all.
    """

    def __init__(self, path: str, alternates: Iterable[str] = ()) -> None:
        super().__init__(path)
        self._alternates = [ObjectDir(alternate) for alternate in alternates]

    def _update_pack_cache(self) -> list[Pack]:
        # Pack indexes are mapped once per process (see packs.shared_index), not once per operation.
        return [share_index(pack) for pack in super()._update_pack_cache()]


@dataclass(frozen=True)
class WorktreeSnapshot:
    """What `git add -A` would stage: the root tree, the objects to store for it, and the index."""

    tree: ObjectID
    # New blobs read from the worktree and every tree object; some may already be stored.
    objects: list[ShaFile]
    # The stat of every file as it was hashed, so the index can describe the snapshot without a rescan.
    index: dict[bytes, IndexEntry]


def open_repository(path: Path, *, alternates: Iterable[str] = ()) -> Repo:
    """The repository of the worktree at `path`, reading objects from `.git/objects` and `alternates`."""
    try:
        return Repo(os.fspath(path), object_store=ObjectDir(os.path.join(path, ".git", "objects"), alternates))
    except (NotGitRepository, NotADirectoryError, FileNotFoundError):
        raise GitError(f"{os.fspath(path)!r} is not a git worktree", path=os.fspath(path)) from None


def init_worktree(path: Path, *, branch: str) -> None:
    """Create an empty repository at `path` whose HEAD is the unborn `branch`.

    `path` must not exist or be an empty directory, so an existing worktree is never taken over.
    """
    validate_branch_name(branch)
    created = prepare_empty_dir(path)
    try:
        Repo.init(os.fspath(path), default_branch=branch.encode()).close()
    except BaseException:
        discard_worktree(path, created=created)
        raise


def prepare_empty_dir(path: Path) -> bool:
    """Make sure `path` is an empty directory; returns whether it was created (to undo on failure)."""
    try:
        os.makedirs(path)
        return True
    except FileExistsError:
        if not os.path.isdir(path) or os.path.islink(path) or os.listdir(path):
            raise GitError(f"{os.fspath(path)!r} exists and is not an empty directory", path=os.fspath(path)) from None
        return False


def discard_worktree(path: Path, *, created: bool) -> None:
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


def branch_ref(branch: str) -> Ref:
    """`refs/heads/<branch>`; InvalidRefNameError for a name git refuses."""
    validate_branch_name(branch)
    return Ref(b"refs/heads/" + branch.encode())


def read_ref(repo: BaseRepo, ref: Ref) -> ObjectID | None:
    """The object `ref` points at, or None while it does not exist (an unborn branch)."""
    try:
        return repo.refs[ref]
    except KeyError:
        return None


def read_worktree(repo: Repo, root: Path) -> WorktreeSnapshot:
    """Snapshot the worktree at `root`: tracked files and every untracked file that is not ignored.

    Ignore rules are .gitignore at any depth, .git/info/exclude and the user's excludes file;
    symlinks are stored as links, never followed; a nested repository with a commit is a gitlink to
    its HEAD, as `git add -A` records it. Files whose stat matches the index are not read again.
    """
    root_fd = _fs.open_root(root)
    try:
        state = scan(repo, root_fd, keep_blobs=True)
    finally:
        os.close(root_fd)
    if state.tree is not None:
        # Unchanged since this process wrote the index for that tree, whose objects are stored.
        return WorktreeSnapshot(tree=state.tree, objects=list(state.blobs.values()), index=state.files)
    tree, trees = build_trees({path: (entry.mode, entry.sha) for path, entry in state.files.items()})
    return WorktreeSnapshot(tree=tree, objects=[*state.blobs.values(), *trees], index=state.files)


def live_files(repo: Repo, root: Path) -> dict[bytes, tuple[int, ObjectID]]:
    """The worktree at `root` as a flattened tree ('/'-separated path -> mode, sha), objects unstored."""
    root_fd = _fs.open_root(root)
    try:
        state = scan(repo, root_fd, keep_blobs=False)
    finally:
        os.close(root_fd)
    return {path: (entry.mode, entry.sha) for path, entry in state.files.items()}


def checkout(
    repo: Repo,
    root: Path,
    tree: ObjectID | None,
    *,
    force: bool = False,
    current: Mapping[bytes, IndexEntry] | None = None,
) -> Checkout:
    """Make the worktree at `root` and its index hold exactly `tree` (None: the empty tree); refs do not move.

    Only the differences are applied: changed files rewritten, files absent from the tree removed
    (ignored files are left alone) with the directories they leave empty, missing files brought back.
    UntrackedInTheWayError if an ignored file or a nested repository stands where the tree has
    something else, unless `force` (see `apply_tree`).
    A symlink or hard link planted in the worktree never carries a write outside it: only a regular
    file with no other link is written over, anything else is replaced. The tree's objects are
    read from the repository's store. `current` is the worktree as a scan just read it
    (`WorktreeSnapshot.index`, under the same lock), so that it is not read a second time.
    """
    target = {} if tree is None else flatten(repo.object_store, tree)
    root_fd = _fs.open_root(root)
    try:
        if current is None:
            current = scan(repo, root_fd, keep_blobs=False).files
        result = apply_tree(root_fd, repo.object_store, current=current, target=target, force=force)
    finally:
        os.close(root_fd)
    replace_index(repo, result.index, tree=tree)
    return result


def index_for_tree(repo: Repo, tree: ObjectID) -> dict[bytes, IndexEntry]:
    """Index entries for `tree`, keeping the current index's stat wherever it caches the same content."""
    old = _index.read_index(repo.index_path())
    entries: dict[bytes, IndexEntry] = {}
    for path, (mode, sha) in flatten(repo.object_store, tree).items():
        entry = old.get(path)
        entries[path] = (
            entry if entry is not None and entry.sha == sha and entry.mode == mode else tree_entry(mode, sha)
        )
    return entries


def replace_index(repo: Repo, entries: Mapping[bytes, IndexEntry], *, tree: ObjectID | None = None) -> None:
    """Replace the repository's index, waiting a little while a git command holds its lock.

    `tree` is the tree `entries` hold, stored in the repository, when the caller knows it: the next
    snapshot of an unchanged worktree then takes it as is (see `_index.load_index`).
    """
    locked(lambda: _index.write_index(repo.index_path(), entries, tree=tree), what="index")


def store_objects(store: BaseObjectStore, objects: Iterable[ShaFile]) -> None:
    """Write the objects `store` (a repository's own objects on disk) lacks: loose when very few, else as one pack.

    Creating a file is the dominant cost (about 1 ms per loose object on the machines measured,
    against a few ms for a whole pack), so any checkpoint beyond a handful of objects is one pack;
    `consolidate_packs` then keeps the number of packs bounded.
    """
    assert isinstance(store, DiskObjectStore)
    # Own packs only, as listed once: a lookup through a chain of alternates, or dulwich's rescan of
    # the pack directory on every miss, costs more than writing an object twice.
    packed = PackedObjects(store).packed
    todo = list({obj.id: obj for obj in objects if not packed(obj.id)}.values())
    if len(todo) >= _PACK_THRESHOLD:
        write_pack(store, todo)
        consolidate_packs(store)
        return
    for obj in todo:
        # Another process writing the same object holds its lock; its result is the same object.
        locked(functools.partial(store.add_object, obj), what=obj.id.decode())


def write_pack(store: DiskObjectStore, objects: list[ShaFile]) -> None:
    """Write `objects` (whole, none already in `store`'s packs) as one pack of `store`, with its index.

    dulwich's add_objects writes the pack, then reads it back twice to index it; the writer
    already knows every entry's offset and CRC32, so the index is written from those.
    """

    def write(pack: IO[bytes], index: IO[bytes]) -> str:
        writer = PackChunkGenerator(
            store.object_format, num_records=len(objects), records=(full_unpacked_object(obj) for obj in objects)
        )
        for chunk in writer:
            pack.write(chunk)
        entries = sorted((sha, offset, crc32) for sha, (offset, crc32) in writer.entries.items())
        write_pack_index(index, entries, writer.sha1digest(), version=2)
        return iter_sha1(entry[0] for entry in entries).decode("ascii")

    _install_pack(store, write)


def _install_pack(store: DiskObjectStore, write: Callable[[IO[bytes], IO[bytes]], str]) -> str:
    """Add the pack `write` writes (returning its name) to `store`; returns the base path of its files.

    The pack lands complete before its index, as git does: no reader considers a pack without its
    index, and a lookup that misses rescans the pack directory.
    """
    pack_dir = os.fspath(store.pack_dir)
    with (
        tempfile.NamedTemporaryFile(dir=pack_dir, prefix="tmp-", suffix=".pack", delete=False) as pack,
        tempfile.NamedTemporaryFile(dir=pack_dir, prefix="tmp-", suffix=".idx", delete=False) as index,
    ):
        try:
            name = write(pack, index)
            pack.flush()
            index.flush()
            base = os.path.join(pack_dir, f"pack-{name}")
            for scratch, suffix in ((pack.name, ".pack"), (index.name, ".idx")):
                os.chmod(scratch, PACK_MODE)
                os.replace(scratch, base + suffix)
            return base
        finally:
            for scratch in (pack.name, index.name):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(scratch)


def consolidate_packs(store: DiskObjectStore) -> None:
    """Merge the smallest packs into one once there are more than `_MAX_PACKS`.

    Every pack costs each object lookup an index search, so their number must stay bounded.
    Only small packs are rewritten, never a large first import; packs with a .keep file, which
    git uses to protect them, are left alone. Entries are copied, never recompressed (`repack`).
    The merged pack is complete before any old one is removed, and readers (git, dulwich) rescan
    the pack directory when a pack disappears.
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
    objects: set[ObjectID] = set()
    for base in merged:
        with Pack(base, object_format=store.object_format) as pack:
            objects.update(pack)
    keep = _install_pack(store, lambda pack, index: repack(store, sorted(objects), pack, index))
    for base in merged:
        if base == keep:
            continue
        # The index first: without it no reader considers the pack any more.
        for suffix in (".idx", ".pack", ".rev", ".bitmap", ".mtimes"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(base + suffix)


def move_ref(repo: Repo, ref: Ref, *, old: ObjectID | None, new: ObjectID | None, message: bytes) -> None:
    """Point `ref` at `new` (None: delete it) if it still points at `old` (None: does not exist).

    A compare-and-swap under git's ref lock, safe across processes; ConcurrentUpdateError if
    another writer moved the ref first, BranchExistsError if it clashes with another branch on
    disk (`a` versus `a/b`). A ref already at `new` is left alone, so a retried call is harmless.
    """

    def attempt() -> bool:
        if new is None:
            if old is None:
                return read_ref(repo, ref) is None
            return repo.refs.remove_if_equals(ref, old, committer=IDENTITY, message=message)
        if old is None:
            return repo.refs.add_if_new(ref, new, committer=IDENTITY, message=message)
        return repo.refs.set_if_equals(ref, old, new, committer=IDENTITY, message=message)

    try:
        swapped = locked(attempt, what=ref.decode())
    except (IsADirectoryError, NotADirectoryError):
        raise BranchExistsError(f"{ref.decode()} clashes with another branch", ref=ref.decode()) from None
    if swapped:
        return
    current = read_ref(repo, ref)
    if current == new:
        return
    expected = "unborn" if old is None else old.decode()
    found = "unborn" if current is None else current.decode()
    raise ConcurrentUpdateError(
        f"{ref.decode()} moved: expected {expected}, found {found}", ref=ref.decode(), expected=expected, found=found
    )


def locked(action: Callable[[], _T], *, what: str) -> _T:
    """Run `action`, waiting a little while another process holds the lock file it needs."""
    deadline = time.monotonic() + _LOCK_WAIT_SECONDS
    while True:
        try:
            return action()
        except FileLocked:
            if time.monotonic() >= deadline:
                raise ConcurrentUpdateError(f"{what} is locked by another writer", target=what) from None
            time.sleep(0.01)
