"""The object store of one owner: dulwich's `BucketBasedObjectStore` over a pack bucket.

Checkpoints' git objects live here, not in worktrees, so any server process on any machine serves
any checkpoint (DESIGN.md section 5). Objects are shared by all the tasks of an owner: a fork or a
continuation copies nothing. Every pack is verified before it is stored (see `verify.py`), so the
store only ever holds complete histories: an object in it brings every object it reaches.

Packs are immutable, so a process keeps a copy of those it reads in a local cache directory that
never goes stale; packs removed from the bucket leave the cache at the next listing. A bucket whose
packs are already local files (`LocalDirBucket`) is read in place, without a cache.

An instance is meant for one operation in one worker thread (not thread-safe): it lists the bucket
when first used, and at most once more when a lookup misses (how it notices a pack that another
process added or merged meanwhile); `refresh()` lists it again on demand.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from dulwich.object_store import BucketBasedObjectStore, PackBasedObjectStore
from dulwich.objects import ObjectID, ShaFile, object_header
from dulwich.pack import Pack, PackFileDisappeared

from makima.server.git.errors import InvalidPackError
from makima.server.git.objects.bucket import PackBucket, PackInfo, install_files, names_in, pack_basename, remove_files
from makima.worktree.packs import PackedObjects, share_index
from makima.worktree.transfer import (
    DEFAULT_CHUNK_SIZE,
    Missing,
    OutgoingPack,
    find_missing,
    object_ids,
    outgoing_pack,
    reachable,
    repack,
)
from makima.worktree.verify import PackLimits, StoredPack, check_trees, receive_pack_file, verify_pack

# Temporary files left in the incoming directory by a process that died are removed after this long.
_STALE_INCOMING_SECONDS = 24 * 3600
# Each pack kept must hold at least this many times the objects of the next smaller one (see consolidate).
GEOMETRIC_FACTOR = 2


@dataclass(frozen=True)
class GarbageCollection:
    """What `collect_garbage` did."""

    removed: list[str]
    # The pack that now holds the live objects of the partly reachable old packs, if any was written.
    repacked: str | None
    # Roots that are not in the store (e.g. checkpoints whose objects live only in a worktree).
    missing_roots: list[str] = field(default_factory=list)


class OwnerObjectStore(BucketBasedObjectStore):
    """The packs of one owner in `bucket`, read through `cache_dir` unless the bucket is local files."""

    def __init__(self, bucket: PackBucket, *, cache_dir: Path | None = None, limits: PackLimits | None = None) -> None:
        super().__init__()
        local = bucket.local_dir
        directory = local if local is not None else cache_dir
        if directory is None:
            raise ValueError("a bucket without a local directory needs a cache_dir")
        directory.mkdir(parents=True, exist_ok=True)
        self._bucket = bucket
        self._dir = directory
        # True when the pack files in _dir are copies: this store fills and prunes them.
        self._caching = local is None
        self._incoming = directory / "incoming"
        self._incoming.mkdir(exist_ok=True)
        # Bounds of the packs that dulwich's own entry points (add_objects, add_pack_data) write.
        self.limits = limits or PackLimits()
        self._listings = 0
        self._infos: dict[str, PackInfo] = {}
        # Packs this instance put in the bucket: a caller may then ask for `consolidate`.
        self.packs_added = 0

    def __enter__(self) -> OwnerObjectStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def bucket(self) -> PackBucket:
        return self._bucket

    # -- the bucket, as dulwich's BucketBasedObjectStore hooks ----------------------------------------

    def _iter_pack_names(self) -> Iterator[str]:
        """The bucket's listing; remembers each pack's PackInfo for garbage collection."""
        self._infos = {info.name: info for info in self._bucket.list_packs()}
        return iter(list(self._infos))

    def _get_pack(self, name: str) -> Pack:
        """Open a pack, first copying it into the cache if it is not there; KeyError if it is gone."""
        base = pack_basename(self._dir, name)
        if self._caching and not (os.path.exists(f"{base}.pack") and os.path.exists(f"{base}.idx")):
            with self._scratch(".pack") as (pack_file, _), self._scratch(".idx") as (index_file, _):
                self._bucket.get_pack(name, pack_file, index_file)
                install_files(self._dir, name, pack_file, index_file)
        # Pack indexes are mapped once per process (see packs.shared_index), not once per operation.
        return share_index(Pack(os.fspath(base), object_format=self.object_format))

    def _upload_pack(self, basename: str, pack_file: BinaryIO, index_file: BinaryIO) -> None:
        self._bucket.put_pack(basename, pack_file, index_file)

    def _remove_pack_by_name(self, name: str) -> None:
        self._bucket.remove_pack(name)
        pack = self._pack_cache.pop(name, None)
        if pack is not None:
            pack.close()
        self._infos.pop(name, None)
        if self._caching:
            remove_files(self._dir, name)

    def _remove_pack(self, pack: Pack) -> None:
        self._remove_pack_by_name(pack.name().decode("ascii"))

    def refresh(self) -> list[Pack]:
        """List the bucket: open the packs that appeared, forget (and uncache) those that were removed."""
        started = time.time()
        self._listings += 1
        names = set(self._iter_pack_names())
        for name in set(self._pack_cache) - names:
            self._pack_cache.pop(name).close()
        opened = []
        for name in sorted(names - set(self._pack_cache)):
            try:
                pack = self._get_pack(name)
            except KeyError:
                self._infos.pop(name, None)  # removed since the listing
                continue
            self._pack_cache[name] = pack
            opened.append(pack)
        self._prune(keep=names, listed_at=started)
        return opened

    def _update_pack_cache(self) -> list[Pack]:
        """dulwich asks on a lookup miss or a vanished pack: list on first use and once more, no more."""
        return self.refresh() if self._listings < 2 else []

    @property
    def packs(self) -> list[Pack]:
        if not self._listings:
            self.refresh()
        return list(self._pack_cache.values())

    def _prune(self, *, keep: set[str], listed_at: float) -> None:
        """Drop cached copies of removed packs and incoming files a dead process left behind.

        A copy made after the listing started may be of a pack put since, so only older ones go.
        """
        if self._caching:
            for name, path in names_in(self._dir).items():
                with contextlib.suppress(FileNotFoundError):
                    if name not in keep and path.stat().st_mtime < listed_at:
                        remove_files(self._dir, name)
        for entry in os.scandir(self._incoming):
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime < listed_at - _STALE_INCOMING_SECONDS:
                    os.unlink(entry.path)

    @contextlib.contextmanager
    def _scratch(self, suffix: str) -> Iterator[tuple[BinaryIO, str]]:
        """A temporary file in the incoming directory, removed (with its .idx sibling) afterwards."""
        f, path = self._new_scratch(suffix)
        try:
            yield f, path
        finally:
            _discard(f, path)

    def _new_scratch(self, suffix: str) -> tuple[BinaryIO, str]:
        fd, path = tempfile.mkstemp(dir=self._incoming, prefix="tmp-", suffix=suffix)
        return os.fdopen(fd, "w+b"), path

    # -- have / want -----------------------------------------------------------------------------

    def lacking(self, ids: Iterable[str]) -> list[str]:
        """The ids among `ids` (objects, or commits a pusher offers as haves) this store does not hold.

        Holding a commit means holding all it reaches, so a pusher that offers its commit and its
        ancestors learns which ones to leave out of its pack, as git's have/want exchange does.
        """
        return [text for text in dict.fromkeys(ids) if object_ids([text])[0] not in self]

    def missing(self, *, wants: Iterable[str], haves: Iterable[str]) -> list[str]:
        """The objects to send to a receiver that holds the commits `haves` so that it has `wants`."""
        return [sha.decode("ascii") for sha in find_missing(self, wants=wants, haves=haves).objects]

    def outgoing_pack(
        self, *, wants: Iterable[str], haves: Iterable[str], thin: bool = True, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> OutgoingPack:
        """The pack of `missing(wants, haves)` in chunks of at most `chunk_size` bytes (see transfer)."""
        return outgoing_pack(self, wants=wants, haves=haves, thin=thin, chunk_size=chunk_size)

    # -- adding packs ----------------------------------------------------------------------------

    def receive_pack(self, chunks: Iterable[bytes], *, commit: str | None, limits: PackLimits) -> StoredPack:
        """Verify a pack sent in `chunks` and store it; InvalidPackError leaves nothing behind.

        The pack may be thin (deltas against stored objects): it is completed with those bases, so
        every stored pack stands alone. `commit` must be in the pack or already stored, and every
        object the pack refers to too. A pack whose objects are all stored already adds nothing.
        """
        with self._scratch(".pack") as (f, path):
            receive_pack_file(f, chunks, limits)
            stored, _pack = self._ingest(f, path, commit=commit, limits=limits, keep_duplicate=False)
            return stored

    def add_from_worktree(self, source: PackBasedObjectStore, missing: Missing) -> StoredPack:
        """Store the objects `missing` lists, read from `source`, the repository of a service-held
        worktree, on top of the commits this store holds (the haves `missing` was found with).

        Lighter than `receive_pack`, which guards against a sender: the history is complete by
        construction (the walk stopped at stored objects) and nothing is thin or a bomb, so each
        object is read once, its id checked against its content (the agent may have written to
        the repository) and its tree names and modes checked as any pack's (InvalidPackError);
        the pack's entries are then copied and its index written from the known ids (`repack`).
        """
        reader = PackedObjects(source)
        trees = []
        for sha in missing.objects:
            type_num, raw = reader.get_raw(sha)
            if self.object_format.hash_object_hex(object_header(type_num, len(raw)) + raw) != sha:
                raise InvalidPackError(
                    f"object {sha.decode()} does not match its content", problem="bad_object", object=sha.decode()
                )
            if sha in missing.trees:
                trees.append(ShaFile.from_raw_string(type_num, raw, sha=sha))
        check_trees(trees)
        held = PackedObjects(self)
        if all(held.packed(sha) for sha in missing.objects):
            return StoredPack(name=None, object_count=len(missing.objects), byte_size=0)
        with self._scratch(".pack") as (f, path):
            index_path = path.removesuffix(".pack") + ".idx"
            with open(index_path, "wb") as index_file:
                name = repack(source, missing.objects, f, index_file)
            f.flush()
            self._put(name, path, index_path)
            return StoredPack(name=name, object_count=len(missing.objects), byte_size=os.path.getsize(path))

    # dulwich annotates the commit callable as returning None, yet returns its Pack from add_pack_data.
    def add_pack(self) -> tuple[BinaryIO, Callable[[], Pack | None], Callable[[], None]]:  # type: ignore[override]
        """dulwich's entry point for writing a pack (add_objects, add_pack_data): verified like any other."""
        f, path = self._new_scratch(".pack")

        def commit() -> Pack | None:
            try:
                return self._ingest(f, path, commit=None, limits=self.limits, keep_duplicate=False)[1]
            finally:
                _discard(f, path)

        return f, commit, lambda: _discard(f, path)

    def add_object(self, obj: ShaFile) -> None:
        """Store one object; it must refer only to stored objects."""
        self.add_objects([(obj, None)])

    def _ingest(
        self, f: BinaryIO, path: str, *, commit: str | None, limits: PackLimits, keep_duplicate: bool
    ) -> tuple[StoredPack, Pack | None]:
        """Verify the pack written to `f` (at `path`), then put it in the bucket and the cache.

        Unless `keep_duplicate` (a repack), a pack of objects that are all stored already is dropped.
        """
        verified = verify_pack(
            f, path, self, commit=object_ids([commit])[0] if commit is not None else None, limits=limits
        )
        name = verified.name
        held = PackedObjects(self)
        if not keep_duplicate and all(sha in held for sha in verified.object_ids):
            return StoredPack(name=None, object_count=verified.object_count, byte_size=0), None
        byte_size = os.path.getsize(path)
        pack = self._put(name, path, verified.index_path)
        return StoredPack(name=name, object_count=verified.object_count, byte_size=byte_size), pack

    def _put(self, name: str, path: str, index_path: str) -> Pack:
        """Put the pack at `path` and its index in the bucket (and the cache), and open it."""
        with open(path, "rb") as pack_file, open(index_path, "rb") as index_file:
            self._upload_pack(name, pack_file, index_file)
            if self._caching:
                install_files(self._dir, name, pack_file, index_file)
        pack = self._get_pack(name)
        self._add_cached_pack(name, pack)
        self.packs_added += 1
        return pack

    # -- keeping the number of packs small -------------------------------------------------------

    def consolidate(self, *, factor: int = GEOMETRIC_FACTOR) -> str | None:
        """Merge the smallest packs into one, so that pack sizes form a geometric progression.

        Every pack costs each lookup of an object it does not hold an index search, and each push
        adds a pack: without merging, lookups slow down with the number of checkpoints. As `git
        repack --geometric` does, the packs sorted by object count must each hold at least `factor`
        times the objects of the one before; the smallest ones that break that are merged (with as
        many larger ones as the merged pack then outgrows), so an object is rewritten O(log n)
        times and an owner has O(log n) packs. The merged pack is stored, verified like any pack,
        before the merged ones are removed; readers that still list them find the objects in it
        when they list again. Returns the name of the pack written, or None when nothing was merged.
        """
        self.refresh()
        infos = sorted(self._infos.values(), key=lambda info: (info.object_count, info.name))
        merged = infos[: _geometric_split([info.object_count for info in infos], factor)]
        if len(merged) < 2:
            return None
        objects: set[ObjectID] = set()
        for info in merged:
            objects |= self._objects_of(info.name)
        written = self._write_pack(objects)
        name = None if written is None else written.name().decode("ascii")
        for info in merged:
            if info.name != name:
                self._remove_pack_by_name(info.name)
        return name

    # -- garbage collection ----------------------------------------------------------------------

    def collect_garbage(
        self, roots: Iterable[str], *, grace: timedelta, now: datetime | None = None, repack: bool = True
    ) -> GarbageCollection:
        """Remove the packs older than `grace` none of whose objects `roots` (commits) reach.

        Why a grace period: a push stores its pack before the transaction that records its
        checkpoint commits, and a thin push leans on objects the service had when it negotiated.
        Until that transaction commits, its objects are unreferenced but in flight, not garbage.
        So packs younger than `grace`, and everything their objects reach, are kept; `grace` must
        exceed the longest push (negotiation to commit). Packs of failed transactions go once old.

        With `repack`, the live objects of old packs that are partly reachable (or of several old
        packs) are rewritten into one pack, written before the old ones are removed.
        """
        now = now or datetime.now(UTC)
        self.refresh()
        infos = dict(self._infos)
        old = sorted(name for name, info in infos.items() if now - info.create_time >= grace)
        root_ids = object_ids(roots)
        missing_roots = [sha.decode("ascii") for sha in root_ids if sha not in self]
        start = [sha for sha in root_ids if sha in self]
        for name in set(infos) - set(old):
            start.extend(self._objects_of(name))
        live = reachable(self, start)

        removed: list[str] = []
        # Old packs holding live objects: name -> (their objects, the live ones).
        holding: dict[str, tuple[set[ObjectID], set[ObjectID]]] = {}
        for name in old:
            objects = self._objects_of(name)
            if objects & live:
                holding[name] = (objects, objects & live)
            else:
                removed.append(name)
        repacked = None
        if repack and (len(holding) > 1 or any(kept < objects for objects, kept in holding.values())):
            young = set().union(*(self._objects_of(name) for name in set(infos) - set(old)))
            written = self._write_pack(set().union(*(kept for _objects, kept in holding.values())) - young)
            repacked = None if written is None else written.name().decode("ascii")
            removed.extend(name for name in holding if name != repacked)
        for name in removed:
            self._remove_pack_by_name(name)
        return GarbageCollection(removed=sorted(removed), repacked=repacked, missing_roots=missing_roots)

    def _objects_of(self, name: str) -> set[ObjectID]:
        pack = self._pack_cache.get(name)
        if pack is None:
            return set()
        try:
            return set(pack)
        except PackFileDisappeared:
            return set()

    def _write_pack(self, objects: set[ObjectID]) -> Pack | None:
        """Store one new pack of `objects` (all stored, so verified already), copying their entries."""
        if not objects:
            return None
        with self._scratch(".pack") as (f, path):
            index_path = path.removesuffix(".pack") + ".idx"
            with open(index_path, "wb") as index_file:
                name = repack(self, sorted(objects), f, index_file)
            f.flush()
            return self._put(name, path, index_path)


def _geometric_split(counts: list[int], factor: int) -> int:
    """How many of the packs of `counts` objects (ascending) to merge so the rest form a progression.

    git's rule (repack.c, split_pack_geometry): from the largest down, the packs that hold at least
    `factor` times the objects of the next smaller one stay; everything up to the first break is
    merged, and so is each next larger pack holding less than `factor` times the merged objects.
    """
    split = 0
    for i in range(len(counts) - 1, 0, -1):
        if counts[i] < factor * counts[i - 1]:
            split = i + 1
            break
    total = sum(counts[:split])
    while split < len(counts) and counts[split] < factor * total:
        total += counts[split]
        split += 1
    return split


def _discard(f: BinaryIO, path: str) -> None:
    """Close and remove a scratch pack and the index written beside it."""
    f.close()
    for leftover in (path, path.removesuffix(".pack") + ".idx"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(leftover)
