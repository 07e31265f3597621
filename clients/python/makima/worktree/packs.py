"""Many objects read out of a pack-based store, each looked up in the pack indexes directly.

dulwich's store-level lookups serve one object at a time: each `get_raw` or `in` first checks the
disk for a multi-pack index, then walks the packs with bookkeeping for their eviction. Writing a
worktree or a pack touches every object of a tree in one go, so these readers take the store's
list of packs once and ask each pack's index (a binary search in C) themselves. Whatever they do
not find there (loose objects, alternates, a pack removed meanwhile) goes the store's own way.
"""

from __future__ import annotations

import bisect
import copy
import os
import threading
from array import array
from collections import OrderedDict
from dataclasses import dataclass

from dulwich.object_format import ObjectFormat
from dulwich.object_store import BaseObjectStore, PackBasedObjectStore
from dulwich.objects import ObjectID, RawObjectID, hex_to_sha
from dulwich.pack import FilePackIndex, Pack, PackFileDisappeared, PackIndex, load_pack_index


class PackedObjects:
    """Raw reads and presence checks over `store`, its packs listed once, at construction."""

    def __init__(self, store: BaseObjectStore) -> None:
        self.store = store
        self._packs: list[Pack] = list(store.packs) if isinstance(store, PackBasedObjectStore) else []
        # Bytes of a binary object id: what tree entries hold.
        self.oid_length: int = store.object_format.oid_length
        self._hex_length: int = store.object_format.hex_length

    def locate(self, sha: ObjectID | RawObjectID) -> tuple[Pack, int] | None:
        """A listed pack holding `sha` (hex or raw) and its offset there; None if none does.

        The id is made binary once for all the indexes asked, and the pack that answers is asked
        first next time: the objects one operation reads mostly lie in one pack.
        """
        raw = hex_to_sha(ObjectID(sha)) if len(sha) == self._hex_length else sha
        packs = self._packs
        for i, pack in enumerate(packs):
            try:
                offset = pack.index.object_offset(raw)
            except KeyError:
                continue
            except PackFileDisappeared:
                return None
            if i:
                packs.insert(0, packs.pop(i))
            return pack, offset
        return None

    def __contains__(self, sha: ObjectID) -> bool:
        return self.locate(sha) is not None or sha in self.store

    def packed(self, sha: ObjectID | RawObjectID) -> bool:
        """Whether one of the packs listed at construction holds `sha`: no loose object, alternate or
        new listing is looked at (a bucket-based store would list its bucket again on a miss)."""
        return self.locate(sha) is not None

    def get_raw(self, sha: ObjectID | RawObjectID) -> tuple[int, bytes]:
        """The type and content of `sha`, deltas resolved; KeyError if the store does not hold it."""
        where = self.locate(sha)
        if where is not None:
            pack, offset = where
            try:
                type_num, obj = pack.data.get_object_at(offset)
                type_num, chunks = pack.resolve_object(offset, type_num, obj)
                # dulwich types a resolved object as any unpacked form; resolved, it is a list of chunks.
                return type_num, b"".join(chunks)  # type: ignore[arg-type]
            except (KeyError, PackFileDisappeared):
                pass  # a base elsewhere, or the pack went: the store resolves it its own way
        return self.store.get_raw(sha)


_INDEXES: OrderedDict[tuple[str, int, int, int, int], PackIndex] = OrderedDict()
_INDEXES_KEPT = 256
_INDEXES_LOCK = threading.Lock()


def share_index(pack: Pack) -> Pack:
    """Make `pack` (not yet read) open its index through the process-wide cache (`shared_index`)."""
    path, object_format = pack._idx_path, pack.object_format
    pack._idx_load = lambda: shared_index(path, object_format)
    return pack


def shared_index(path: str, object_format: ObjectFormat) -> PackIndex:
    """The pack index at `path`, mapped once per process for as long as the file is the same.

    Every worktree and object store operation opens its repository anew, and so each pack index it
    reads (a map and a parse of the fan-out table, 0.2 to 0.8 ms here); an index never changes once
    written, and a new file at the path has a new inode. What is returned is a view of the mapping:
    closing it leaves the mapping to the cache and to the other views, and the mapping goes when the
    last of them does (the file descriptor is closed at once: a mapping outlives it).
    """
    st = os.stat(path)
    key = (os.fspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _INDEXES_LOCK:
        index = _INDEXES.get(key)
        if index is not None:
            _INDEXES.move_to_end(key)
    if index is None:
        index = load_pack_index(path, object_format)
        if not isinstance(index, FilePackIndex):
            return index
        index._file.close()
        with _INDEXES_LOCK:
            index = _INDEXES.setdefault(key, index)
            while len(_INDEXES) > _INDEXES_KEPT:
                _INDEXES.popitem(last=False)
    view = copy.copy(index)
    view.close = _keep_mapping  # type: ignore[method-assign]
    return view


def _keep_mapping() -> None:
    """A shared index's close: its mapping stays for the cache and the other views."""


_OFS_DELTA, _REF_DELTA = 6, 7
# The longest entry header: a type and size varint (10 bytes for 64 bits), then a base (id or offset).
_MAX_HEADER = 10 + 32


@dataclass(frozen=True)
class StoredEntry:
    """A pack entry as stored: its header fields, and where its compressed data lies in the file."""

    type_num: int
    # The inflated size of the object, or of the delta for a delta.
    size: int
    # A delta's base: the raw id (a ref delta) or the absolute offset in the same pack (an offset delta).
    base: bytes | int | None
    data_start: int
    data_end: int


class PackLayout:
    """The entries of one pack in file order: where each starts and ends, and which object it holds.

    A pack index gives each object's offset, not its length; the next entry's offset bounds it.
    Packs never change once written, so a layout is kept for the file (by inode, size and mtime).
    """

    def __init__(self, pack: Pack) -> None:
        entries = sorted((offset, sha) for sha, offset, _crc in pack.index.iterentries())
        self.offsets = array("Q", (offset for offset, _sha in entries))
        self._shas = b"".join(sha for _offset, sha in entries)
        self._oid_length = pack.object_format.oid_length
        self.end = os.path.getsize(pack.data.path) - self._oid_length

    def entry_end(self, offset: int) -> int:
        i = bisect.bisect_right(self.offsets, offset)
        return self.offsets[i] if i < len(self.offsets) else self.end

    def sha_at(self, offset: int) -> bytes | None:
        """The raw id of the object whose entry starts at `offset`, None if no entry starts there."""
        i = bisect.bisect_left(self.offsets, offset)
        if i == len(self.offsets) or self.offsets[i] != offset:
            return None
        return self._shas[i * self._oid_length : (i + 1) * self._oid_length]


_LAYOUTS: OrderedDict[tuple[str, int, int, int], PackLayout] = OrderedDict()
_LAYOUTS_KEPT = 32
_LAYOUTS_LOCK = threading.Lock()


def layout_of(pack: Pack) -> PackLayout:
    """The layout of `pack`, from the process-wide cache when its file was seen before."""
    path = os.fspath(pack.data.path)
    st = os.stat(path)
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
    with _LAYOUTS_LOCK:
        layout = _LAYOUTS.get(key)
        if layout is not None:
            _LAYOUTS.move_to_end(key)
            return layout
    layout = PackLayout(pack)
    with _LAYOUTS_LOCK:
        _LAYOUTS[key] = layout
        while len(_LAYOUTS) > _LAYOUTS_KEPT:
            _LAYOUTS.popitem(last=False)
    return layout


def read_entry(fd: int, offset: int, layout: PackLayout, oid_length: int, *, at_most: int) -> tuple[StoredEntry, bytes]:
    """The header of the entry at `offset` of the pack open as `fd`, and the first bytes of its data.

    Nothing is inflated. One read takes the whole entry when it is at most `at_most` bytes (the
    usual case); the caller reads the rest of a longer one from `data_start + len(data)`.
    """
    end = layout.entry_end(offset)
    head = os.pread(fd, min(end - offset, max(at_most, _MAX_HEADER)), offset)
    byte = head[0]
    type_num, size, shift, pos = (byte >> 4) & 7, byte & 0x0F, 4, 1
    while byte & 0x80:
        byte = head[pos]
        pos += 1
        size |= (byte & 0x7F) << shift
        shift += 7
    base: bytes | int | None = None
    if type_num == _OFS_DELTA:
        byte = head[pos]
        pos += 1
        distance = byte & 0x7F
        while byte & 0x80:
            byte = head[pos]
            pos += 1
            distance = ((distance + 1) << 7) | (byte & 0x7F)
        base = offset - distance
    elif type_num == _REF_DELTA:
        base = head[pos : pos + oid_length]
        pos += oid_length
    return StoredEntry(type_num, size, base, offset + pos, end), head[pos:]
