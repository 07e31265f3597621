"""Reading a worktree into (path -> mode, sha) and writing a tree back, with git's index as stat cache.

The index stores, per file, the stat of the file when its content was hashed. A file whose stat
still matches is not read again; this is what makes a checkpoint or a restore of a large, mostly
unchanged worktree cheap. A stat is only trusted if the file cannot have changed within the same
timestamp tick after it was hashed ("racy git"): such entries are written smudged (zero times), so
they are hashed again next time, and git does the same when it meets them.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from dulwich.ignore import IgnoreFilter, default_user_ignore_filter_path, read_ignore_patterns
from dulwich.object_store import BaseObjectStore
from dulwich.objects import Blob, ObjectID
from dulwich.repo import Repo

from makima.worktree import _fs
from makima.worktree._index import IndexEntry, load_index
from makima.worktree._nested import nested_repository
from makima.worktree.errors import RefNotFoundError, UntrackedInTheWayError
from makima.worktree.packs import PackedObjects
from makima.worktree.paths import MODE_EXECUTABLE, MODE_FILE, MODE_GITLINK, MODE_SYMLINK, check_tree_path

ChangeKind = Literal["added", "modified", "deleted"]

_U32 = 0xFFFFFFFF
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
_NS = 1_000_000_000
# How long after a file's mtime its stat may still be shared by a later write to it: the coarse
# kernel clock ticks at most every 10 ms; file systems that store whole seconds (the nanosecond
# part is then always zero) need two seconds, as FAT does.
_RACY_WINDOW_FINE_NS = 100_000_000
_RACY_WINDOW_COARSE_NS = 2 * _NS


@dataclass(slots=True)
class WorktreeState:
    """What a scan found: every file that belongs to the worktree's content, by '/'-separated path.

    Each file is known by the index entry that records it: its git mode, its content's sha and the
    stat of the file when that content was hashed.
    """

    files: dict[bytes, IndexEntry] = field(default_factory=dict)
    # Contents read during the scan, by sha, so a snapshot can store the new ones without reading again.
    blobs: dict[ObjectID, Blob] = field(default_factory=dict)
    # The tree of `files` when known without building it: the index holds the same files and
    # contents, and this process wrote it for that tree (see `_index.load_index`).
    tree: ObjectID | None = None


def mode_of(st: os.stat_result) -> int:
    """Git's mode for a file: symlink, executable or plain (git keeps only the owner's x bit)."""
    if stat.S_ISLNK(st.st_mode):
        return MODE_SYMLINK
    return MODE_EXECUTABLE if st.st_mode & stat.S_IXUSR else MODE_FILE


def _is_racy(mtime_ns: int, hashed_at_ns: int) -> bool:
    window = _RACY_WINDOW_COARSE_NS if mtime_ns % _NS == 0 else _RACY_WINDOW_FINE_NS
    return mtime_ns >= hashed_at_ns - window


def index_entry(st: os.stat_result, sha: ObjectID, mode: int, *, hashed_at_ns: int) -> IndexEntry:
    """Index entry caching `st` for content `sha`, smudged if the stat cannot be trusted later."""
    racy = _is_racy(st.st_mtime_ns, hashed_at_ns)
    return IndexEntry(
        ctime_ns=0 if racy else st.st_ctime_ns,
        mtime_ns=0 if racy else st.st_mtime_ns,
        dev=st.st_dev & _U32,
        ino=st.st_ino & _U32,
        mode=mode,
        uid=st.st_uid & _U32,
        gid=st.st_gid & _U32,
        size=st.st_size & _U32,
        sha=sha,
    )


def tree_entry(mode: int, sha: ObjectID) -> IndexEntry:
    """Index entry with no stat (as `git read-tree` writes): git and we hash the file before trusting it."""
    return IndexEntry(ctime_ns=0, mtime_ns=0, dev=0, ino=0, mode=mode, uid=0, gid=0, size=0, sha=sha)


class StatCache:
    """The index of a worktree, read once, answering "is this file still what the index says?"."""

    def __init__(self, entries: dict[bytes, IndexEntry], index_mtime_ns: int, tree: ObjectID | None = None) -> None:
        self.entries = entries
        self._index_mtime_ns = index_mtime_ns
        # The tree the index holds, if known (see `_index.load_index`).
        self.tree = tree

    @classmethod
    def load(cls, index_path: str) -> StatCache:
        # Conflict stages are dropped: those files are then hashed like new ones.
        return cls(*load_index(index_path))

    def trusted(self, path: bytes, st: os.stat_result, mode: int) -> IndexEntry | None:
        """The index entry of `path` if its stat proves the file unchanged since it was hashed."""
        entry = self.entries.get(path)
        if entry is None or entry.mode != mode or not self.unchanged(entry, st):
            return None
        return entry

    def unchanged(self, entry: IndexEntry, st: os.stat_result) -> bool:
        """Whether `st` proves the file of `entry` (of the same mode) unchanged since it was hashed."""
        mtime_ns = entry.mtime_ns
        # Zero is a smudged entry. An mtime not older than the index itself is racy, as in git.
        return (
            mtime_ns != 0
            and mtime_ns < self._index_mtime_ns
            and st.st_mtime_ns == mtime_ns
            and st.st_ctime_ns == entry.ctime_ns
            and st.st_size & _U32 == entry.size
            and st.st_ino & _U32 == entry.ino
        )


class IgnoreRules:
    """.gitignore rules as git applies them during a walk: deepest file first, last match wins.

    Layers are pushed as the walk enters directories; the global ones (the user's excludes file and
    .git/info/exclude) sit below every .gitignore.
    """

    def __init__(self, global_filters: Iterable[IgnoreFilter]) -> None:
        self._layers: list[tuple[int, IgnoreFilter]] = [(0, f) for f in global_filters]

    @classmethod
    def for_repo(cls, repo: Repo) -> IgnoreRules:
        filters = []
        user_file = os.path.expanduser(default_user_ignore_filter_path(repo.get_config_stack()))
        for path in (user_file, os.path.join(repo.controldir(), "info", "exclude")):
            try:
                filters.append(IgnoreFilter.from_path(path))
            except OSError:
                pass
        return cls(filters)

    def push(self, prefix: bytes, ignore_filter: IgnoreFilter) -> None:
        self._layers.append((len(prefix), ignore_filter))

    def pop(self) -> None:
        self._layers.pop()

    def is_ignored(self, path: bytes, *, is_dir: bool) -> bool:
        for offset, ignore_filter in reversed(self._layers):
            name = path[offset:]
            for pattern in reversed(ignore_filter.patterns):
                if pattern.matches(name, is_dir):
                    return pattern.is_exclude
        return False


class _Scanner:
    def __init__(self, root_fd: int, root: bytes, cache: StatCache, rules: IgnoreRules, *, keep_blobs: bool) -> None:
        self._root_fd = root_fd
        self._root = root
        self._cache = cache
        self._rules = rules
        self._keep_blobs = keep_blobs
        self._gitlinks = {path for path, entry in cache.entries.items() if entry.mode == MODE_GITLINK}
        self._started_ns = time.time_ns()
        self.state = WorktreeState()

    def run(self) -> WorktreeState:
        self._walk(self._root_fd, b"")
        self._add_tracked_left_out()
        return self.state

    def _walk(self, dir_fd: int, prefix: bytes) -> None:
        with os.scandir(dir_fd) as it:
            entries = list(it)
        names = {entry.name for entry in entries}
        if prefix and ".git" in names and self._nested(dir_fd, prefix[:-1]):
            return
        if prefix[:-1] in self._gitlinks:
            self._keep_gitlink(prefix[:-1])  # a submodule not checked out: git keeps its recorded commit
            return
        pushed = ".gitignore" in names and self._push_gitignore(dir_fd, prefix)
        # The loop every file of the worktree goes through: a tracked file whose stat matches the
        # index costs one lstat and no call beyond `unchanged`.
        files, index, unchanged = self.state.files, self._cache.entries, self._cache.unchanged
        try:
            for entry in entries:
                name = entry.name.encode(_FS_ENCODING, _FS_ERRORS)  # os.fsencode, without its checks
                if name == b".git":
                    continue  # the repository itself, or a `.git` naming none, which hides only itself
                path = prefix + name
                if entry.is_dir(follow_symlinks=False):
                    self._enter(dir_fd, name, path)
                    continue
                st = entry.stat(follow_symlinks=False)
                st_mode = st.st_mode
                if stat.S_ISREG(st_mode):
                    mode = MODE_EXECUTABLE if st_mode & stat.S_IXUSR else MODE_FILE
                elif stat.S_ISLNK(st_mode):
                    mode = MODE_SYMLINK
                else:
                    continue  # sockets, FIFOs and devices are not content git can store
                known = index.get(path)
                if known is None:
                    if self._rules.is_ignored(path, is_dir=False):
                        continue
                elif known.mode == mode and unchanged(known, st):
                    files[path] = known
                    continue
                self._hash(dir_fd, name, path, st)
        finally:
            if pushed:
                self._rules.pop()

    def _enter(self, dir_fd: int, name: bytes, path: bytes) -> None:
        if path not in self._gitlinks and self._rules.is_ignored(path, is_dir=True):
            return  # tracked files below are picked up by _add_tracked_left_out
        child = _fs.open_dir_at(dir_fd, name, create=False)
        if child is None:
            return
        try:
            self._walk(child, path + b"/")
        finally:
            os.close(child)

    def _nested(self, dir_fd: int, path: bytes) -> bool:
        """Record the nested repository at `path` as git does; False if its `.git` names no repository.

        A repository with a commit becomes a gitlink to its HEAD; one without a commit is skipped
        whole (`git add -A` refuses it; with --ignore-errors it skips it, which is what a snapshot
        can do).
        """
        nested = nested_repository(dir_fd, self._root + b"/" + path, self._root)
        if nested is None:
            return False
        if nested.head is not None:
            head = nested.head
            known = self._cache.entries.get(path)
            entry = known if known is not None and known.mode == MODE_GITLINK and known.sha == head else None
            self.state.files[path] = entry or tree_entry(MODE_GITLINK, head)
        elif path in self._gitlinks:
            self._keep_gitlink(path)
        return True

    def _keep_gitlink(self, path: bytes) -> None:
        self.state.files[path] = self._cache.entries[path]

    def _push_gitignore(self, dir_fd: int, prefix: bytes) -> bool:
        st = _fs.lstat_at(dir_fd, b".gitignore")
        # git does not read a .gitignore that is a symlink, which could point anywhere.
        if st is None or not stat.S_ISREG(st.st_mode):
            return False
        got = _fs.read_entry(dir_fd, b".gitignore", st)
        if got is None:
            return False
        patterns = read_ignore_patterns(io.BytesIO(got[0]))
        self._rules.push(prefix, IgnoreFilter(patterns, path=os.fsdecode(prefix + b".gitignore")))
        return True

    def _add(self, dir_fd: int, name: bytes, path: bytes, st: os.stat_result) -> None:
        entry = self._cache.trusted(path, st, mode_of(st))
        if entry is not None:
            self.state.files[path] = entry
            return
        self._hash(dir_fd, name, path, st)

    def _hash(self, dir_fd: int, name: bytes, path: bytes, st: os.stat_result) -> None:
        """Read and hash the file: new, changed, or its stat no proof that it is not."""
        got = _fs.read_entry(dir_fd, name, st)
        if got is None:
            return  # gone (or replaced by something git cannot store) since it was listed
        data, read_st = got
        mode = mode_of(read_st)
        blob = Blob.from_string(data)
        sha = blob.id
        known = self._cache.entries.get(path)
        # Content the index already names is in the object store (a smudged entry hashed again).
        if self._keep_blobs and (known is None or known.sha != sha):
            self.state.blobs[sha] = blob
        self.state.files[path] = index_entry(read_st, sha, mode, hashed_at_ns=self._started_ns)

    def _add_tracked_left_out(self) -> None:
        """Tracked files the walk did not enter (ignored directories): git keeps tracking them."""
        left = sorted(path for path in self._cache.entries if path not in self.state.files)
        if not left:
            return
        with _fs.DirChain(self._root_fd, create=False) as chain:
            for path in left:
                dir_fd, name = chain.parent_of(path)
                if dir_fd is None:
                    continue
                st = _fs.lstat_at(dir_fd, name)
                if st is None:
                    continue
                if path in self._gitlinks:
                    if stat.S_ISDIR(st.st_mode):
                        self._keep_gitlink(path)
                elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                    self._add(dir_fd, name, path, st)


def scan(repo: Repo, root_fd: int, *, keep_blobs: bool) -> WorktreeState:
    """Every file of the worktree's content: tracked ones, plus untracked ones that are not ignored.

    This is the set `git add -A` would stage: a nested repository with a commit as a gitlink to its
    HEAD, one without a commit left out, a `.git` that names no repository skipped alone. Files
    whose stat matches the index are not read.
    """
    cache = StatCache.load(repo.index_path())
    root = os.fsencode(os.path.realpath(repo.path))
    state = _Scanner(root_fd, root, cache, IgnoreRules.for_repo(repo), keep_blobs=keep_blobs).run()
    if cache.tree is not None and _same_files(state.files, cache.entries):
        state.tree = cache.tree
    return state


def _same_files(found: Mapping[bytes, IndexEntry], index: Mapping[bytes, IndexEntry]) -> bool:
    """Whether the scan found exactly the index's paths, each with its mode and content."""
    if len(found) != len(index):
        return False
    for path, entry in found.items():
        known = index.get(path)
        if known is not entry and (known is None or known.mode != entry.mode or known.sha != entry.sha):
            return False
    return True


@dataclass(slots=True)
class Checkout:
    """What applying a tree did: the changes, and the index that now describes the worktree."""

    changes: list[tuple[bytes, ChangeKind]]
    index: dict[bytes, IndexEntry]


def apply_tree(
    root_fd: int,
    store: BaseObjectStore,
    *,
    current: Mapping[bytes, IndexEntry],
    target: Mapping[bytes, tuple[int, ObjectID]],
    force: bool = False,
) -> Checkout:
    """Make the worktree hold exactly `target`, touching only the files that differ from `current`.

    Files of `current` missing from `target` are removed (and directories they leave empty);
    different or missing ones are written. Anything not in `current` (ignored files, the insides of
    nested repositories) is left alone; where it is in the way of what `target` holds, the checkout
    is refused (UntrackedInTheWayError naming it), unless `force`: then it is removed, as
    `git reset --hard` does. Nothing changes if a path to write is unsafe (GitError), a content to
    write is not in `store` (RefNotFoundError) or something is in the way.
    """
    index: dict[bytes, IndexEntry] = {}
    to_write: list[bytes] = []
    for path in sorted(target):
        mode, sha = target[path]
        old = current.get(path)
        if old is not None and old.mode == mode and old.sha == sha:
            index[path] = old
        else:
            # Paths already in the worktree were found by walking it, so only new ones need the check.
            check_tree_path(path, mode)
            to_write.append(path)
    # Every content to write must be at hand before the first file changes: nothing half-written.
    objects = PackedObjects(store)
    for path in to_write:
        mode, sha = target[path]
        if mode != MODE_GITLINK and sha not in objects:
            text = path.decode("utf-8", "surrogateescape")
            raise RefNotFoundError(
                f"object {sha.decode()} of {text!r} is not in the object store", object=sha.decode(), path=text
            )
    if not force:
        blocked = in_the_way(root_fd, current=current, target=target, paths=to_write)
        if blocked:
            names = [p.decode("utf-8", "surrogateescape") for p in blocked]
            raise UntrackedInTheWayError(
                f"{len(names)} path(s) hold what no commit holds and would be lost: {', '.join(map(repr, names))}",
                paths="\n".join(names),
                count=str(len(names)),
            )
    deleted = sorted(path for path in current if path not in target)
    _remove_files(root_fd, deleted, current)
    changes: list[tuple[bytes, ChangeKind]] = [(path, "deleted") for path in deleted]

    written_at_ns = time.time_ns()
    with _fs.DirChain(root_fd, create=True) as chain:
        for path in to_write:
            mode, sha = target[path]
            dir_fd, name = chain.parent_of(path)
            assert dir_fd is not None  # create=True makes every directory
            old = current.get(path)
            # A file the scan found as a regular file is overwritten, when still safe (see _fs.write_file).
            in_place = old is not None and old.mode in (MODE_FILE, MODE_EXECUTABLE)
            index[path] = _write(dir_fd, name, objects, mode, sha, written_at_ns=written_at_ns, in_place=in_place)
            changes.append((path, "added" if old is None else "modified"))
    changes.sort()
    return Checkout(changes=changes, index=index)


def in_the_way(
    root_fd: int,
    *,
    current: Mapping[bytes, IndexEntry],
    target: Mapping[bytes, tuple[int, ObjectID]],
    paths: Iterable[bytes],
) -> list[bytes]:
    """What writing `paths` of `target` would destroy that no commit of the worktree holds.

    That is an ignored file where a file or a directory goes (unless it already has the target's
    content), a directory where a file goes that holds anything `current` does not (ignored files,
    a nested repository), and a populated nested repository where a directory goes.
    """
    found: list[bytes] = []
    clear: set[bytes] = set()  # directories already seen to be plain directories of the worktree
    with _fs.DirChain(root_fd, create=False) as chain:
        for path in paths:
            known = current.get(path)
            if known is not None and known.mode != MODE_GITLINK:
                continue  # a file the walk found: its directories are the worktree's own
            blocker = _blocker(chain, current, clear, path, target[path])
            if blocker is not None and (not found or found[-1] != blocker):
                found.append(blocker)
    return found


def _blocker(
    chain: _fs.DirChain,
    current: Mapping[bytes, IndexEntry],
    clear: set[bytes],
    path: bytes,
    entry: tuple[int, ObjectID],
) -> bytes | None:
    parts = path.split(b"/")
    for depth in range(1, len(parts)):
        ancestor = b"/".join(parts[:depth])
        if ancestor in clear:
            continue
        dir_fd, name = chain.parent_of(ancestor)
        st = None if dir_fd is None else _fs.lstat_at(dir_fd, name)
        if st is None:
            return None  # nothing on disk from here down
        known = current.get(ancestor)
        if stat.S_ISDIR(st.st_mode):
            if known is not None and known.mode == MODE_GITLINK:
                return ancestor  # files would be written into a nested repository's worktree
            clear.add(ancestor)
            continue
        return None if known is not None else ancestor  # an ignored file where a directory goes
    dir_fd, name = chain.parent_of(path)
    st = None if dir_fd is None else _fs.lstat_at(dir_fd, name)
    if dir_fd is None or st is None:
        return None
    mode, sha = entry
    if stat.S_ISDIR(st.st_mode):
        if mode == MODE_GITLINK:
            return None  # a directory stays where a submodule goes
        return path if _holds_untracked(dir_fd, name, path + b"/", current) else None
    if path in current or (not stat.S_ISREG(st.st_mode) and not stat.S_ISLNK(st.st_mode)):
        return None
    got = _fs.read_entry(dir_fd, name, st)
    return None if got is not None and Blob.from_string(got[0]).id == sha else path


def _holds_untracked(parent_fd: int, name: bytes, prefix: bytes, current: Mapping[bytes, IndexEntry]) -> bool:
    """Whether directory `name` holds any file or link that `current` does not (empty directories aside)."""
    dir_fd = _fs.open_dir_at(parent_fd, name, create=False)
    if dir_fd is None:
        return False
    try:
        with os.scandir(dir_fd) as it:
            entries = list(it)
        for entry in entries:
            child = os.fsencode(entry.name)
            if entry.is_dir(follow_symlinks=False):
                known = current.get(prefix + child)
                if (known is not None and known.mode == MODE_GITLINK) or _holds_untracked(
                    dir_fd, child, prefix + child + b"/", current
                ):
                    return True
            elif prefix + child not in current:
                return True
        return False
    finally:
        os.close(dir_fd)


def _write(
    dir_fd: int, name: bytes, objects: PackedObjects, mode: int, sha: ObjectID, *, written_at_ns: int, in_place: bool
) -> IndexEntry:
    if mode == MODE_GITLINK:
        # A submodule is checked out as an empty directory, like git does without --recurse-submodules.
        _fs.ensure_dir(dir_fd, name)
        return tree_entry(mode, sha)
    # The raw content only: no object is parsed to be written out.
    data = objects.get_raw(sha)[1]
    if mode == MODE_SYMLINK:
        st = _fs.write_symlink(dir_fd, name, data)
    else:
        st = _fs.write_file(dir_fd, name, data, executable=mode == MODE_EXECUTABLE, in_place=in_place)
    return index_entry(st, sha, mode, hashed_at_ns=written_at_ns)


def _remove_files(root_fd: int, paths: list[bytes], current: Mapping[bytes, IndexEntry]) -> None:
    parents: set[bytes] = set()
    with _fs.DirChain(root_fd, create=False) as chain:
        for path in paths:
            dir_fd, name = chain.parent_of(path)
            if dir_fd is None:
                continue
            try:
                if current[path].mode == MODE_GITLINK:
                    os.rmdir(name, dir_fd=dir_fd)  # only if empty: a populated submodule is not ours
                else:
                    os.unlink(name, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.EISDIR, errno.ENOTEMPTY, errno.ENOTDIR, errno.EEXIST):
                    raise
            parents.update(_ancestors(path))
    # Deepest first, so a directory is emptied of its subdirectories before its own turn.
    with _fs.DirChain(root_fd, create=False) as chain:
        for directory in sorted(parents, key=lambda p: (-p.count(b"/"), p)):
            dir_fd, name = chain.parent_of(directory)
            if dir_fd is None:
                continue
            try:
                os.rmdir(name, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.ENOTDIR):
                    raise


def _ancestors(path: bytes) -> Iterator[bytes]:
    head = path.rpartition(b"/")[0]
    while head:
        yield head
        head = head.rpartition(b"/")[0]
