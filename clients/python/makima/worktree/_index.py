"""Reading and writing git's index file (the stat cache of a worktree), fast enough for every call.

dulwich's general index code costs ~20 ms per 1,000 entries each way (and misreads some version 4
files git writes); checkpoints and restores read and write the whole index every time, so this
module reads versions 2 to 4 and writes version 2 with one struct per entry. Extensions are
skipped on read and not written: they are caches git rebuilds.
"""

from __future__ import annotations

import binascii
import hashlib
import logging
import struct
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


def write_index(path: str, entries: Mapping[bytes, IndexEntry]) -> None:
    """Replace the index at `path` with `entries` (version 2), under git's index.lock.

    Not fsynced, like git's own index: it is a cache, rebuilt by hashing if lost.
    FileLocked if another writer holds the lock.
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
    with GitFile(path, "wb", fsync=False) as f:
        f.write(body)
        f.write(hashlib.sha1(body).digest())
