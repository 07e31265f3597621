"""Reading and writing git's index file (the stat cache of a worktree), fast enough for every call.

dulwich's general index code costs ~20 ms per 1,000 entries each way (and misreads some version 4
files git writes); checkpoints and restores read and write the whole index every time, so this
module reads versions 2 to 4 and writes version 2 with one struct per entry. Extensions are
skipped on read and not written: they are caches git rebuilds.

An index this process wrote is also kept in memory (`load_index`), with the tree it describes when
the writer knew it: the next operation on the worktree neither parses the file again nor, if no
file changed, rebuilds that tree to learn that nothing changed. What proves the file is still the
one written is its inode, size, mtime and trailing checksum: git and this module replace an index
by renaming a new file over it, never in place.
"""

from __future__ import annotations

import binascii
import hashlib
import logging
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import NamedTuple

from dulwich.file import GitFile
from dulwich.objects import ObjectID

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">4sLL")
# ctime s, ns; mtime s, ns; dev; ino; mode; uid; gid; size; binary sha; flags
_ENTRY = struct.Struct(">LLLLLLLLLL20sH")
_NAME_MASK = 0x0FFF
_STAGE_MASK = 0x3000
_EXTENDED = 0x4000
_U32 = 0xFFFFFFFF
_NS = 1_000_000_000


class IndexEntry(NamedTuple):
    """One stage-0 index entry: the stat of a file when its content (`sha`) was hashed."""

    ctime_ns: int
    mtime_ns: int
    dev: int
    ino: int
    mode: int
    uid: int
    gid: int
    size: int
    sha: ObjectID


def read_index(path: str) -> dict[bytes, IndexEntry]:
    """Stage-0 entries of the index at `path`; empty if there is none.

    A corrupt index is only a lost cache to us: it is logged and read as empty, so every file is
    hashed again and the next write replaces it.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}
    if len(data) < _HEADER.size + 20:
        log.warning("index %s is truncated; ignoring it", path)
        return {}
    signature, version, count = _HEADER.unpack_from(data)
    trailer = data[-20:]
    if signature != b"DIRC" or (trailer != bytes(20) and hashlib.sha1(data[:-20]).digest() != trailer):
        log.warning("index %s is corrupt; ignoring it", path)
        return {}
    if version not in (2, 3, 4):
        log.warning("index %s has unknown version %d; ignoring it", path, version)
        return {}
    try:
        return _parse_entries(data, version, count)
    except (struct.error, ValueError, IndexError):
        log.warning("index %s is corrupt; ignoring it", path)
        return {}


def _parse_entries(data: bytes, version: int, count: int) -> dict[bytes, IndexEntry]:
    entries: dict[bytes, IndexEntry] = {}
    offset = _HEADER.size
    unpack = _ENTRY.unpack_from
    hexlify = binascii.hexlify
    name = b""
    for _ in range(count):
        cs, cn, ms, mn, dev, ino, mode, uid, gid, size, sha, flags = unpack(data, offset)
        start = offset + _ENTRY.size
        if flags & _EXTENDED:
            start += 2
        if version == 4:
            # The name is the previous one minus `strip` trailing bytes plus a NUL-terminated suffix,
            # and entries are not padded.
            strip, start = _varint(data, start)
            end = data.index(b"\x00", start)
            if strip > len(name):
                raise ValueError("bad path compression")
            name = name[: len(name) - strip] + data[start:end]
            offset = end + 1
        else:
            length = flags & _NAME_MASK
            end = data.index(b"\x00", start) if length == _NAME_MASK else start + length
            name = data[start:end]
            offset = offset + ((end - offset + 8) & ~7)
        if not flags & _STAGE_MASK:  # conflict stages are dropped: those files get hashed like new ones
            sha_hex = ObjectID(hexlify(sha))
            entries[name] = IndexEntry(cs * _NS + cn, ms * _NS + mn, dev, ino, mode, uid, gid, size, sha_hex)
    return entries


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    """git's offset varint (index v4 path compression); returns the value and the next offset."""
    byte = data[offset]
    value = byte & 0x7F
    while byte & 0x80:
        offset += 1
        byte = data[offset]
        value = ((value + 1) << 7) | (byte & 0x7F)
    return value, offset + 1


class LoadedIndex(NamedTuple):
    """The stage-0 entries of an index, its mtime (0: no index), and the tree they hold if known."""

    entries: dict[bytes, IndexEntry]
    mtime_ns: int
    # Set when this process wrote the index for a tree (`write_index(tree=...)`).
    tree: ObjectID | None


# What identifies a written index file: device, inode, size, mtime and its trailing checksum.
_Identity = tuple[int, int, int, int, bytes]
_KEPT_INDEXES = 16
_KEPT_ENTRIES = 200_000
_kept: OrderedDict[str, tuple[_Identity, dict[bytes, IndexEntry], ObjectID | None]] = OrderedDict()
_kept_lock = threading.Lock()


def load_index(path: str) -> LoadedIndex:
    """The index at `path` as `read_index` reads it, from memory if this process wrote that very file.

    The entries returned are the caller's own (a copy), whatever their source.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return LoadedIndex({}, 0, None)
    try:
        st = os.fstat(fd)
        trailer = os.pread(fd, 20, max(st.st_size - 20, 0))
    finally:
        os.close(fd)
    identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, trailer)
    with _kept_lock:
        kept = _kept.get(path)
        if kept is not None and kept[0] == identity:
            _kept.move_to_end(path)
            return LoadedIndex(dict(kept[1]), st.st_mtime_ns, kept[2])
    return LoadedIndex(read_index(path), st.st_mtime_ns, None)


def _keep(path: str, identity: _Identity, entries: dict[bytes, IndexEntry], tree: ObjectID | None) -> None:
    with _kept_lock:
        _kept.pop(path, None)
        if len(entries) > _KEPT_ENTRIES:
            return
        _kept[path] = (identity, entries, tree)
        while len(_kept) > _KEPT_INDEXES or sum(len(kept[1]) for kept in _kept.values()) > _KEPT_ENTRIES:
            _kept.popitem(last=False)


def write_index(path: str, entries: Mapping[bytes, IndexEntry], *, tree: ObjectID | None = None) -> None:
    """Replace the index at `path` with `entries` (version 2), under git's index.lock.

    `tree` is the tree the entries hold, if the caller knows it (see `load_index`). Not fsynced,
    like git's own index: it is a cache, rebuilt by hashing if lost. FileLocked if another writer
    holds the lock.
    """
    chunks = [_HEADER.pack(b"DIRC", 2, len(entries))]
    pack = _ENTRY.pack
    unhexlify = binascii.unhexlify
    for name in sorted(entries):
        e = entries[name]
        cs, cn = divmod(e.ctime_ns, _NS)
        ms, mn = divmod(e.mtime_ns, _NS)
        flags = min(len(name), _NAME_MASK)
        chunks.append(
            pack(
                cs & _U32,
                cn,
                ms & _U32,
                mn,
                e.dev & _U32,
                e.ino & _U32,
                e.mode,
                e.uid & _U32,
                e.gid & _U32,
                e.size & _U32,
                unhexlify(e.sha),
                flags,
            )
        )
        chunks.append(name)
        chunks.append(b"\x00" * (8 - (_ENTRY.size + len(name)) % 8))
    body = b"".join(chunks)
    trailer = hashlib.sha1(body).digest()
    with _kept_lock:
        _kept.pop(path, None)  # whatever happens next, the file kept is about to be replaced
    with GitFile(path, "wb", fsync=False) as f:
        f.write(body)
        f.write(trailer)
        f.flush()
        # The stat of the file about to be renamed into place: renaming changes none of these.
        st = os.fstat(f.fileno())
    _keep(path, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, trailer), dict(entries), tree)
