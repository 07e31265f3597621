"""Checks a pack must pass before any of it is stored: limits, object syntax, safe trees, completeness.

Packs travel both ways: a daemon pushes checkpoints to the service, the service sends a daemon what
it lacks to materialize a commit. Neither end trusts the other with its disk, so both receive
through `receive_pack_file` and `verify_pack`. Two passes guard a pack. `scan_pack` walks the raw
object headers first, inflating each object into nothing, so a pack that declares too many objects
or inflates to too many bytes (a zip bomb) is refused before dulwich holds any object in memory.
`ObjectChecker` then sees every object: dulwich computes each id from the content itself,
`check()` parses commits, trees and tags strictly (a blob is any bytes), tree entries must be
names git would check out safely with one of git's five modes, and every object a commit, tree or
tag of the pack refers to must be in the pack or already stored. The headers `scan_pack` read
feed the one walk that both indexes the pack and parses its objects, so each object is inflated
twice in all (scan, walk), never more.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import BinaryIO

from dulwich.errors import ApplyDeltaError, ChecksumMismatch, ObjectFormatException
from dulwich.object_store import BaseObjectStore
from dulwich.objects import Blob, Commit, ObjectID, RawObjectID, ShaFile, Tag, Tree, sha_to_hex
from dulwich.pack import (
    DeltaChainIterator,
    PackData,
    UnpackedObject,
    UnresolvedDeltas,
    extend_pack,
    iter_sha1,
    write_pack_index,
)

from makima.worktree.errors import InvalidPackError
from makima.worktree.packs import PackedObjects
from makima.worktree.paths import GIT_MODES, MODE_GITLINK, MODE_TREE, check_name

_OFS_DELTA, _REF_DELTA = 6, 7
_OBJECT_TYPES = frozenset({Commit.type_num, Tree.type_num, Blob.type_num, Tag.type_num})
_TRAILER = 20
_READ_STEP = 1 << 16
# Input fed to zlib at once: small, since the unread rest of it is copied once per object.
_FEED_STEP = 1 << 13
_INFLATE_STEP = 1 << 16
# What dulwich raises on a pack whose bytes do not decode (beyond what scan_pack already refused).
_UNREADABLE = (zlib.error, ChecksumMismatch, ApplyDeltaError, ObjectFormatException, AssertionError, ValueError)


@dataclass(frozen=True)
class PackLimits:
    """Bounds on one incoming pack, chosen by the caller (per RPC, per owner)."""

    # Bytes of the pack as sent.
    max_pack_bytes: int = 512 << 20
    # Objects the pack header declares.
    max_objects: int = 1_000_000
    # Bytes the objects inflate to, as their headers declare them: every object and every delta,
    # plus the size of each delta's result. Each object is held whole in memory while checked.
    max_inflated_bytes: int = 1 << 30


def refuse(problem: str, message: str, **metadata: str) -> InvalidPackError:
    """The error for a refused pack; `problem` is one of those listed on InvalidPackError."""
    return InvalidPackError(message, problem=problem, **metadata)


def scan_pack(f: BinaryIO, size: int, limits: PackLimits) -> list[UnpackedObject]:
    """Walk the pack in `f` (`size` bytes) header by header within `limits`; returns the headers.

    Each header is its object's type, offset, declared size and delta base (the distance back for
    an offset delta, the raw id for a ref delta); no content is kept: each object is inflated
    into a counter, and its declared size must match what it inflates to. The trailing checksum is
    left to dulwich.
    """
    if size > limits.max_pack_bytes:
        raise _too_large(size, limits.max_pack_bytes)
    reader = _Reader(f)
    header = reader.read(12)
    if header[:4] != b"PACK":
        raise refuse("corrupt", "not a pack: no PACK signature")
    version, count = struct.unpack(">LL", header[4:])
    if version not in (2, 3):
        raise refuse("corrupt", f"unsupported pack version {version}", value=str(version))
    if count > limits.max_objects:
        raise refuse(
            "too_many_objects",
            f"the pack holds {count} objects, more than the limit of {limits.max_objects}",
            value=str(count),
            limit=str(limits.max_objects),
        )
    inflated = 0
    headers: list[UnpackedObject] = []
    for _ in range(count):
        offset = reader.offset
        byte = reader.byte()
        type_num, declared, shift = (byte >> 4) & 7, byte & 0x0F, 4
        while byte & 0x80:
            byte = reader.byte()
            declared |= (byte & 0x7F) << shift
            shift += 7
            if shift > 70:
                raise refuse("corrupt", "object header too long")
        delta_base: int | bytes | None = None
        if type_num == _OFS_DELTA:
            delta_base = _delta_offset(reader)
            if not 12 <= offset - delta_base < offset:
                raise refuse("corrupt", "a delta's base offset is outside the pack")
        elif type_num == _REF_DELTA:
            delta_base = reader.read(_TRAILER)
        elif type_num not in _OBJECT_TYPES:
            raise refuse("corrupt", f"unknown object type {type_num}", value=str(type_num))
        inflated += declared
        if inflated > limits.max_inflated_bytes:
            raise _inflates_too_much(inflated, limits)
        head = reader.inflate(declared)
        if type_num in (_OFS_DELTA, _REF_DELTA):
            inflated += _delta_result_size(head)
            if inflated > limits.max_inflated_bytes:
                raise _inflates_too_much(inflated, limits)
        headers.append(UnpackedObject(type_num, delta_base=delta_base, decomp_len=declared, offset=offset))
    if reader.offset + _TRAILER != size:
        raise refuse("corrupt", "the pack does not end after its objects and checksum")
    return headers


def _delta_offset(reader: _Reader) -> int:
    """The distance back to an offset delta's base, in git's encoding (each continuation adds one)."""
    byte = reader.byte()
    value = byte & 0x7F
    for _length in range(9):
        if not byte & 0x80:
            return value
        byte = reader.byte()
        value = ((value + 1) << 7) | (byte & 0x7F)
    if byte & 0x80:
        raise refuse("corrupt", "delta offset too long")
    return value


def _too_large(size: int, limit: int) -> InvalidPackError:
    return refuse(
        "too_large", f"the pack is {size} bytes, more than the limit of {limit}", value=str(size), limit=str(limit)
    )


def _inflates_too_much(inflated: int, limits: PackLimits) -> InvalidPackError:
    return refuse(
        "too_large",
        f"the pack inflates to more than the limit of {limits.max_inflated_bytes} bytes",
        value=str(inflated),
        limit=str(limits.max_inflated_bytes),
    )


def _delta_result_size(head: bytes) -> int:
    """The size of a delta's result: the second of the two varints that open a delta."""
    pos = 0
    for _ in range(2):
        size, shift = 0, 0
        while True:
            if pos >= len(head) or shift > 63:
                raise refuse("corrupt", "truncated delta header")
            byte = head[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
    return size


class _Reader:
    """Sequential reads over a pack file with an offset, and zlib streams inflated in place."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._buf = b""
        self._pos = 0
        self._consumed = 0  # the file offset of _buf[0]

    @property
    def offset(self) -> int:
        return self._consumed + self._pos

    def _fill(self) -> None:
        data = self._f.read(_READ_STEP)
        if not data:
            raise refuse("corrupt", "the pack is truncated")
        self._consumed += self._pos
        self._buf = self._buf[self._pos :] + data
        self._pos = 0

    def byte(self) -> int:
        if self._pos >= len(self._buf):
            self._fill()
        value = self._buf[self._pos]
        self._pos += 1
        return value

    def read(self, n: int) -> bytes:
        while len(self._buf) - self._pos < n:
            self._fill()
        data = self._buf[self._pos : self._pos + n]
        self._pos += n
        return data

    def inflate(self, declared: int) -> bytes:
        """Inflate one zlib stream that must yield exactly `declared` bytes; returns its first 20."""
        d = zlib.decompressobj()
        head = b""
        total = 0
        try:
            while not d.eof:
                if self._pos >= len(self._buf):
                    self._fill()
                fed = self._buf[self._pos : self._pos + _FEED_STEP]
                self._pos += len(fed)
                out = d.decompress(fed, _INFLATE_STEP)
                while True:
                    total += len(out)
                    if len(head) < 20:
                        head += out[: 20 - len(head)]
                    if total > declared:
                        raise refuse("corrupt", "an object inflates beyond its declared size")
                    if d.eof or (not d.unconsumed_tail and len(out) < _INFLATE_STEP):
                        break
                    out = d.decompress(d.unconsumed_tail, _INFLATE_STEP)
                # Input fed past the end of the stream belongs to the next object.
                self._pos -= len(d.unused_data)
        except zlib.error as exc:
            raise refuse("corrupt", f"an object does not inflate: {exc}") from None
        if total != declared:
            raise refuse("corrupt", "an object inflates to less than its declared size")
        return head


class ObjectChecker:
    """Collects what the objects of one pack are and refer to, then checks the pack is complete."""

    def __init__(self) -> None:
        self.types: dict[ObjectID, int] = {}
        # (referrer, what it expects, target): every target must be in the pack or already stored.
        self._refs: list[tuple[ObjectID, int, ObjectID]] = []

    def add_blob(self, sha: ObjectID) -> None:
        """Note a blob of the pack: any bytes are a valid blob, and its id was computed from them.

        So a blob is neither parsed nor hashed again (what `check()` would do): blobs are most of
        a pack's bytes.
        """
        self.types[sha] = Blob.type_num

    def add(self, obj: ShaFile) -> None:
        """Check one object of the pack other than a blob (its id was computed from its content by dulwich).

        Tree entries are checked before dulwich's own `check()`, which refuses some of the same
        names without saying which: the error then names the path.
        """
        if isinstance(obj, Tree):
            self._add_tree(obj)
        try:
            obj.check()
        except (ObjectFormatException, ValueError, AssertionError) as exc:
            sha = obj.id.decode()
            raise refuse("bad_object", f"object {sha} is malformed: {exc}", object=sha) from None
        self.types[obj.id] = obj.type_num
        if isinstance(obj, Commit):
            self._refs.append((obj.id, Tree.type_num, obj.tree))
            self._refs.extend((obj.id, Commit.type_num, parent) for parent in obj.parents)
        elif isinstance(obj, Tag):
            target_type, target = obj.object
            self._refs.append((obj.id, target_type.type_num, target))

    def _add_tree(self, tree: Tree) -> None:
        tree_id = tree.id  # hashed again on every read of `.id`
        refs = self._refs
        for entry in tree.iteritems():
            name, mode, sha = entry.path, entry.mode, entry.sha
            if mode not in GIT_MODES:
                path = name.decode("utf-8", "surrogateescape")
                raise refuse(
                    "bad_mode",
                    f"tree {tree_id.decode()} gives {path!r} the mode {mode:o}, which git does not write",
                    object=tree_id.decode(),
                    path=path,
                    mode=f"{mode:o}",
                )
            problem = check_name(name, mode)
            if problem is not None:
                path = name.decode("utf-8", "surrogateescape")
                raise refuse(
                    "unsafe_path", f"tree {tree_id.decode()} holds {problem}", object=tree_id.decode(), path=path
                )
            if mode == MODE_GITLINK:
                continue  # a submodule's commit lives in another repository
            refs.append((tree_id, Tree.type_num if mode == MODE_TREE else Blob.type_num, sha))

    def check_complete(self, stored: Callable[[ObjectID], bool], *, commit: ObjectID | None) -> None:
        """Every referenced object, and `commit`, is in the pack (with the right type) or `stored`.

        The store only ever takes complete packs, so an object it holds brings everything it
        reaches: checking each reference of the pack once proves the whole history complete.
        References into the store are checked for presence only, which costs no inflation; the
        stored objects themselves were checked when they arrived.
        """
        if commit is not None:
            kind = self.types.get(commit)
            sha = commit.decode()
            if kind is None and not stored(commit):
                raise refuse("missing_commit", f"commit {sha} is neither in the pack nor stored", object=sha)
            if kind not in (None, Commit.type_num):
                raise refuse("missing_commit", f"object {sha} is not a commit", object=sha)
        for referrer, expected, target in self._refs:
            kind = self.types.get(target)
            if kind is None and stored(target):
                continue
            if kind != expected:
                problem = "is missing" if kind is None else "has the wrong type"
                raise refuse(
                    "missing_object",
                    f"object {target.decode()} that {referrer.decode()} refers to {problem}",
                    object=target.decode(),
                )


@dataclass(frozen=True)
class StoredPack:
    """The outcome of storing a pack."""

    # None when every object of the pack was already stored: nothing was added.
    name: str | None
    object_count: int
    byte_size: int


@dataclass(frozen=True)
class VerifiedPack:
    """A pack that passed every check, completed if it was thin, with its index written beside it."""

    # The SHA-1 over its sorted object ids: what dulwich's `Pack.name()` returns and git names it by.
    name: str
    # Objects as the pack holds them (bases a thin pack lacked included).
    object_count: int
    object_ids: frozenset[ObjectID]
    pack_path: str
    index_path: str


def receive_pack_file(f: BinaryIO, chunks: Iterable[bytes], limits: PackLimits) -> None:
    """Write a pack sent in `chunks` to `f`, refusing it as soon as it outgrows `limits`."""
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > limits.max_pack_bytes:
            raise refuse(
                "too_large",
                f"the pack exceeds the limit of {limits.max_pack_bytes} bytes",
                limit=str(limits.max_pack_bytes),
            )
        f.write(chunk)


def verify_pack(
    f: BinaryIO, path: str, store: BaseObjectStore, *, commit: ObjectID | None, limits: PackLimits
) -> VerifiedPack:
    """Check the pack written to `f` (the file at `path`) against `store`, the objects it may rely on.

    The pack is scanned within `limits`, indexed (a thin pack is completed with its bases from
    `store`, so it stands alone), and every object checked; `commit`, and every object the pack
    refers to, must be in the pack or in `store`. The index is written to `<path minus .pack>.idx`;
    InvalidPackError otherwise, and the caller removes both files.
    """
    f.flush()
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    headers = scan_pack(f, size, limits)
    checker = ObjectChecker()
    objects = PackedObjects(store)
    entries, pack_sha = _index(f, path, objects, headers, checker)
    entries.sort()
    base = path.removesuffix(".pack")
    with open(f"{base}.idx", "wb") as index_file:
        write_pack_index(index_file, entries, pack_sha, version=2)
    checker.check_complete(objects.__contains__, commit=commit)
    return VerifiedPack(
        name=iter_sha1(entry[0] for entry in entries).decode("ascii"),
        object_count=len(entries),
        object_ids=frozenset(checker.types),
        pack_path=path,
        index_path=f"{base}.idx",
    )


def check_trees(trees: Iterable[ShaFile]) -> None:
    """The checks `verify_pack` makes of a pack's trees (names, modes, strict syntax), for objects the
    service built itself from a worktree: their ids are right by construction, their names are not."""
    checker = ObjectChecker()
    for tree in trees:
        checker.add(tree)


class _Walk(DeltaChainIterator[UnpackedObject]):
    """Every object of a pack once, resolved, with the CRC32 of its entry (for the index)."""

    _compute_crc32 = True

    def _result(self, unpacked: UnpackedObject) -> UnpackedObject:
        return unpacked


def _index(
    f: BinaryIO, path: str, objects: PackedObjects, headers: list[UnpackedObject], checker: ObjectChecker
) -> tuple[list[tuple[bytes, int, int | None]], bytes]:
    """Index the pack in `f` from its scanned `headers`, passing each object to `checker`.

    A thin pack is completed with its bases from `objects` (stored, so checked when they arrived).
    Returns the index entries and the pack's checksum.
    """
    entries: list[tuple[bytes, int, int | None]] = []
    try:
        with PackData(path, file=f, object_format=objects.store.object_format) as data:
            data.check()
            walk = _Walk(None, data.object_format.hash_func, resolve_ext_ref=objects.get_raw)
            walk.set_pack_data(data)
            for header in headers:
                walk.record(header)
            for unpacked in walk:
                sha = unpacked.sha()
                assert unpacked.offset is not None and unpacked.obj_type_num is not None
                entries.append((sha, unpacked.offset, unpacked.crc32))
                if unpacked.obj_type_num == Blob.type_num:
                    checker.add_blob(sha_to_hex(RawObjectID(sha)))
                else:
                    checker.add(_parsed(unpacked, sha, objects.store))
            external = set(walk.ext_refs())
            pack_sha = data.get_stored_checksum()
    except InvalidPackError:
        raise
    except UnresolvedDeltas as exc:
        base = exc.shas[0].decode("ascii") if exc.shas else ""
        raise refuse(
            "missing_object", f"the base {base} of a delta is neither in the pack nor stored", object=base
        ) from None
    except _UNREADABLE as exc:
        raise refuse("corrupt", f"the pack does not decode: {exc}") from None
    if external:
        pack_sha, extra = extend_pack(f, external, get_raw=objects.get_raw, object_format=objects.store.object_format)
        entries.extend(extra)
        f.flush()
    return entries, pack_sha


def _parsed(unpacked: UnpackedObject, sha: bytes, store: BaseObjectStore) -> ShaFile:
    """The object of a resolved pack entry, its id the one just computed from its content."""
    assert unpacked.obj_type_num is not None and unpacked.obj_chunks is not None
    try:
        return ShaFile.from_raw_chunks(
            unpacked.obj_type_num, unpacked.obj_chunks, sha_to_hex(RawObjectID(sha)), object_format=store.object_format
        )
    except _UNREADABLE as exc:
        raise refuse("bad_object", f"an object of the pack is malformed: {exc}") from None
