"""Have/want and outgoing packs over any dulwich object store, in chunks sized for a gRPC stream.

The service answers FetchObjects from its object store, and a daemon answers the service's wants
from its own repository for PushCheckpoint: both sides build their packs here, the way git does.
The receiver names the commits it wants and the commits it has; what it has is never sent, and a
delta may be sent against an object it has (a thin pack), which it resolves when storing the pack.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, cast

from dulwich.object_store import BaseObjectStore, PackBasedObjectStore
from dulwich.objects import Commit, ObjectID, RawObjectID, ShaFile, Tag, Tree, hex_to_sha, parse_tree, sha_to_hex
from dulwich.pack import (
    REF_DELTA,
    Pack,
    create_delta,
    iter_sha1,
    pack_header_chunks,
    pack_object_chunks,
    pack_object_header,
    write_pack_index,
)

from makima.worktree.errors import RefNotFoundError
from makima.worktree.packs import PackedObjects, PackLayout, StoredEntry, layout_of, read_entry
from makima.worktree.paths import MODE_GITLINK, MODE_TREE

# gRPC refuses messages over 4 MiB by default; a quarter of that leaves room for the other fields.
DEFAULT_CHUNK_SIZE = 1 << 20
_OBJECT_ID = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class OutgoingPack:
    """A pack being written: its object count is known before its first byte."""

    object_count: int
    # Consecutive slices of the pack, each at most the chunk size asked for; iterate in a worker
    # thread, since reading a store may read its bucket.
    chunks: Iterator[bytes]


def is_object_id(text: str) -> bool:
    """Whether `text` is a full object id as the API carries it: 40 lowercase hex digits."""
    return _OBJECT_ID.fullmatch(text) is not None


def object_ids(texts: Iterable[str]) -> list[ObjectID]:
    """Object ids from their text; ValueError on a malformed one (callers validate input first)."""
    ids = []
    for text in texts:
        if not is_object_id(text):
            raise ValueError(f"not an object id: {text!r}")
        ids.append(ObjectID(text.encode("ascii")))
    return ids


@dataclass(frozen=True)
class Missing:
    """What a receiver lacks, found by walking the sender's store."""

    # Commits first, then the trees and blobs of each, in walk order (which keeps a pack local).
    objects: list[ObjectID]
    # Objects the receiver has for sure: the boundary commits and all their trees reach.
    remote_has: set[ObjectID]
    # The trees among `objects`.
    trees: set[ObjectID]


def find_missing(
    store: BaseObjectStore,
    *,
    wants: Iterable[str],
    haves: Iterable[str],
    held: Callable[[ObjectID], bool] | None = None,
) -> Missing:
    """The objects reachable from `wants` but not from `haves`, and the objects the receiver has.

    As git does: the commits reachable from a want and from no have are missing, and of their trees
    whatever the trees of the boundary commits (the haves' ancestors a want reaches) do not hold.
    `haves` unknown to `store` are ignored (a receiver may have more than the sender); a want it
    does not hold is RefNotFoundError.

    `held`, if given, answers for a receiver that holds every object with all it reaches (the
    service's object store): a commit or tree it holds is neither sent nor walked, though no have
    reaches it, e.g. a rewind commit's tree, which is its target's. Blobs are not asked about: a
    miss costs a lookup in every pack, and a blob prunes nothing below it. The boundary's trees
    are then read only if some tree is to be walked, and `remote_has` may hold the boundary
    commits alone.
    """
    objects = PackedObjects(store)
    want_ids, have_ids = object_ids(wants), object_ids(haves)
    for want in want_ids:
        if want not in objects:
            raise RefNotFoundError(f"commit {want.decode()} is not in the object store", commit=want.decode())
    # With `held`, the walk stops at any commit the receiver holds, and so at every have's ancestor.
    ancestors = set(have_ids) if held is not None else _ancestry(objects, have_ids)
    missing: list[ObjectID] = []
    boundary: list[ObjectID] = []
    others: list[ObjectID] = []
    seen: set[ObjectID] = set()
    pending = list(reversed(want_ids))
    while pending:
        sha = pending.pop()
        if sha in seen:
            continue
        seen.add(sha)
        if sha in ancestors or (held is not None and held(sha)):
            boundary.append(sha)
            continue
        type_num, raw = objects.get_raw(sha)
        if type_num != Commit.type_num:
            others.append(sha)
            continue
        missing.append(sha)
        pending.extend(reversed(_parse_commit(raw, sha).parents))
    roots = [_parse_commit(objects.get_raw(sha)[1], sha).tree for sha in missing]
    if held is not None:
        roots = [tree for tree in roots if not held(tree)]
        others = [sha for sha in others if not held(sha)]
    remote_has = set(boundary)
    if roots or others:
        for sha in boundary:
            _walk_trees(objects, [_parse_commit(objects.get_raw(sha)[1], sha).tree], remote_has, None)
    sent = set(remote_has)
    out = list(missing)
    sent.update(missing)
    trees: set[ObjectID] = set()
    for tree in roots:
        _walk_trees(objects, [tree], sent, out, trees, held)
    for sha in others:
        if sha not in sent:
            if objects.get_raw(sha)[0] == Tree.type_num:
                _walk_trees(objects, [sha], sent, out, trees, held)
            else:
                sent.add(sha)
                out.append(sha)
    return Missing(out, remote_has, trees)


def reachable(store: BaseObjectStore, start: Iterable[ObjectID]) -> set[ObjectID]:
    """Every object of `store` reachable from `start` (any kind); ids the store does not hold are skipped.

    Blobs met in trees are known by their entries, never read; gitlinks name other repositories.
    """
    objects = PackedObjects(store)
    seen: set[ObjectID] = set()
    pending = list(start)
    while pending:
        sha = pending.pop()
        if sha in seen:
            continue
        try:
            type_num, raw = objects.get_raw(sha)
        except KeyError:
            continue
        seen.add(sha)
        if type_num == Commit.type_num:
            commit = _parse_commit(raw, sha)
            pending.append(commit.tree)
            pending.extend(commit.parents)
        elif type_num == Tree.type_num:
            for _name, mode, entry in _parse_tree(raw, objects.oid_length):
                if mode == MODE_TREE:
                    pending.append(entry)
                elif mode != MODE_GITLINK:
                    seen.add(entry)
        elif type_num == Tag.type_num:
            tag = ShaFile.from_raw_string(type_num, raw, sha=sha)
            assert isinstance(tag, Tag)
            pending.append(tag.object[1])
    return seen


def _ancestry(objects: PackedObjects, commits: Iterable[ObjectID]) -> set[ObjectID]:
    """Every commit reachable from `commits`; ids the store does not hold as commits are skipped."""
    seen: set[ObjectID] = set()
    pending = list(commits)
    while pending:
        sha = pending.pop()
        if sha in seen:
            continue
        try:
            type_num, raw = objects.get_raw(sha)
        except KeyError:
            continue
        if type_num != Commit.type_num:
            continue
        seen.add(sha)
        pending.extend(_parse_commit(raw, sha).parents)
    return seen


def _walk_trees(
    objects: PackedObjects,
    roots: list[ObjectID],
    seen: set[ObjectID],
    out: list[ObjectID] | None,
    trees: set[ObjectID] | None = None,
    held: Callable[[ObjectID], bool] | None = None,
) -> None:
    """Add to `seen` (and `out`) the trees `roots` and all they reach that `seen` lacks; gitlinks are skipped.

    A subtree already in `seen` is not walked: whatever reaches it was walked with it; nor is a
    subtree `held` answers for (see `find_missing`). The trees added go to `trees` too, if given.
    """
    pending = list(reversed(roots))
    while pending:
        tree = pending.pop()
        if tree in seen:
            continue
        seen.add(tree)
        if out is not None:
            out.append(tree)
        if trees is not None:
            trees.add(tree)
        for _name, mode, sha in _parse_tree(objects.get_raw(tree)[1], objects.oid_length):
            if mode == MODE_GITLINK or sha in seen:
                continue
            if mode == MODE_TREE and held is not None and held(sha):
                seen.add(sha)
                continue
            if mode == MODE_TREE:
                pending.append(sha)
            else:
                seen.add(sha)
                if out is not None:
                    out.append(sha)


def _parse_commit(raw: bytes, sha: ObjectID) -> Commit:
    commit = ShaFile.from_raw_string(Commit.type_num, raw, sha=sha)
    assert isinstance(commit, Commit)
    return commit


def outgoing_pack(
    store: PackBasedObjectStore,
    *,
    wants: Iterable[str],
    haves: Iterable[str],
    thin: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> OutgoingPack:
    """A pack of what a receiver holding `haves` lacks to have `wants`, in chunks of `chunk_size`.

    Deltas stored in `store` are reused as they are; with `thin` a delta may also be against an
    object the receiver has, which keeps an incremental pack proportional to the change.
    """
    wants, haves = list(wants), list(haves)
    missing = find_missing(store, wants=wants, haves=haves)
    if not thin:
        return pack_of(store, missing.objects, chunk_size=chunk_size)
    bases = path_bases(store, wants=wants, haves=haves, missing=set(missing.objects))
    return pack_of(store, missing.objects, other_haves=missing.remote_has, delta_bases=bases, chunk_size=chunk_size)


def path_bases(
    store: BaseObjectStore, *, wants: Iterable[str], haves: Iterable[str], missing: set[ObjectID]
) -> dict[ObjectID, ObjectID]:
    """For each missing tree or blob, the object at the same path in the first of `haves` the store holds.

    What changed at a path is usually close to what was there: a tree that gained one entry, a
    file that gained a line. A delta against it (a thin pack: the receiver has it) keeps an
    incremental pack proportional to the change instead of to the directories it touches.
    Unchanged subtrees are not walked; gitlinks and type changes get no base.
    """
    objects = PackedObjects(store)
    old_root = next((c for c in (_commit(objects, sha) for sha in object_ids(haves)) if c is not None), None)
    if old_root is None:
        return {}
    bases: dict[ObjectID, ObjectID] = {}
    for want in object_ids(wants):
        commit = _commit(objects, want)
        if commit is None:
            continue
        pending = [(commit.tree, old_root.tree)]
        while pending:
            new, old = pending.pop()
            if new == old or new not in missing or new in bases:
                continue
            bases[new] = old
            before = {name: (mode, sha) for name, mode, sha in _tree_entries(objects, old)}
            for name, mode, sha in _tree_entries(objects, new):
                prev = before.get(name)
                if prev is None or sha not in missing or MODE_GITLINK in (mode, prev[0]):
                    continue
                if mode == MODE_TREE and prev[0] == MODE_TREE:
                    pending.append((sha, prev[1]))
                elif MODE_TREE not in (mode, prev[0]):
                    bases.setdefault(sha, prev[1])
    return bases


def _tree_entries(objects: PackedObjects, tree: ObjectID) -> Iterator[tuple[bytes, int, ObjectID]]:
    type_num, raw = objects.get_raw(tree)
    if type_num != Tree.type_num:
        return iter(())
    return _parse_tree(raw, objects.oid_length)


def _parse_tree(raw: bytes, oid_length: int) -> Iterator[tuple[bytes, int, ObjectID]]:
    """A tree's (name, mode, id) entries, ids in hex: dulwich's C parser, typed as what it returns."""
    return cast(Iterator[tuple[bytes, int, ObjectID]], parse_tree(raw, oid_length))


def pack_of(
    store: PackBasedObjectStore,
    objects: Sequence[ObjectID],
    *,
    other_haves: set[ObjectID] | None = None,
    delta_bases: Mapping[ObjectID, ObjectID] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> OutgoingPack:
    """A pack of exactly `objects` from `store`, copying stored pack entries as they are.

    An object with a base in `delta_bases` that is in `other_haves` is sent as a delta against it
    when that is less than half its size (see `path_bases`).

    Compressing is what costs when writing a pack, and every stored object is compressed already:
    an object in one of the store's packs is copied with its compressed data untouched, a stored
    delta too when its base is sent along from the same pack (no cycle can form) or is in
    `other_haves` (a thin pack). Only loose objects and deltas on other bases are compressed anew.
    The receiver checks every object from its content, so nothing is trusted for being copied.
    """
    reader = PackedObjects(store)
    bases = {sha: base for sha, base in (delta_bases or {}).items() if base in (other_haves or set())}
    entries = _entries(reader, objects, haves=other_haves or set(), bases=bases)
    return OutgoingPack(
        object_count=len(objects), chunks=rechunk(_pack_stream(store, len(objects), entries), chunk_size)
    )


def repack(store: PackBasedObjectStore, objects: Sequence[ObjectID], pack_out: IO[bytes], index_out: IO[bytes]) -> str:
    """Write a pack of `objects` (all in `store`) and its index; returns the pack's name.

    For packs made of the store's own objects (merging packs, garbage collection): their entries
    are copied as `pack_of` copies them, and the index is written from the ids already known and
    the CRC32 of each entry as written, so nothing is inflated or hashed again. The store verified
    every object when it arrived; a pack made here holds nothing else.
    """
    digest = store.object_format.new_hash()
    position = 0

    def put(chunk: bytes) -> None:
        nonlocal position
        digest.update(chunk)
        pack_out.write(chunk)
        position += len(chunk)

    for chunk in pack_header_chunks(len(objects)):
        put(chunk)
    index: list[tuple[bytes, int, int | None]] = []
    for sha, record in zip(objects, _entries(PackedObjects(store), objects, haves=set(), bases={}), strict=True):
        offset, crc = position, 0
        for chunk in record:
            crc = zlib.crc32(chunk, crc)
            put(chunk)
        index.append((hex_to_sha(sha), offset, crc))
    checksum = digest.digest()
    pack_out.write(checksum)
    index.sort()
    write_pack_index(index_out, index, checksum, version=2)
    return iter_sha1(entry[0] for entry in index).decode("ascii")


def _entries(
    reader: PackedObjects, objects: Sequence[ObjectID], *, haves: set[ObjectID], bases: Mapping[ObjectID, ObjectID]
) -> Iterator[Iterable[bytes]]:
    """The pack entry of each of `objects`, in order; the stored packs are read through their own descriptors."""
    wanted = set(objects)
    located = {sha: where for sha in objects if (where := reader.locate(sha)) is not None}
    files: dict[str, tuple[int, PackLayout]] = {}
    try:
        for sha in objects:
            base = bases.get(sha)
            record = None if base is None else _thin_delta(reader, sha, base)
            yield record or _record(reader, sha, located, wanted, haves, files)
    finally:
        for fd, _layout in files.values():
            os.close(fd)


def _record(
    reader: PackedObjects,
    sha: ObjectID,
    located: dict[ObjectID, tuple[Pack, int]],
    wanted: set[ObjectID],
    haves: set[ObjectID],
    files: dict[str, tuple[int, PackLayout]],
) -> Iterable[bytes]:
    """The pack entry of `sha`: its stored entry copied when that stands in the new pack, else compressed.

    A copy is never inflated: the entry's header is read and its compressed data copied as is (the
    next entry's offset bounds it). An offset delta becomes a ref delta, since offsets change.
    """
    object_format = reader.store.object_format
    where = located.get(sha)
    if where is not None:
        pack, offset = where
        path = os.fspath(pack.data.path)
        opened = files.get(path)
        if opened is None:
            try:
                opened = files[path] = _open_pack(pack, path)
            except FileNotFoundError:
                pass  # removed since it was listed: the store finds the object its own way
        if opened is not None:
            fd, layout = opened
            entry, data = read_entry(fd, offset, layout, object_format.oid_length, at_most=DEFAULT_CHUNK_SIZE)
            if entry.base is None:
                header = pack_object_header(entry.type_num, None, entry.size, object_format)
                return _copied(fd, bytes(header), entry, data)
            base_raw = layout.sha_at(entry.base) if isinstance(entry.base, int) else entry.base
            if base_raw is not None:
                base = ObjectID(sha_to_hex(RawObjectID(base_raw)))
                same_pack = base in wanted and located.get(base, (None, 0))[0] is pack
                if same_pack or base in haves:
                    header = pack_object_header(REF_DELTA, base_raw, entry.size, object_format)
                    return _copied(fd, bytes(header), entry, data)
    type_num, raw = reader.get_raw(sha)
    return pack_object_chunks(type_num, [raw], object_format)


def _open_pack(pack: Pack, path: str) -> tuple[int, PackLayout]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fd, layout_of(pack)
    except BaseException:
        os.close(fd)
        raise


def _copied(fd: int, header: bytes, entry: StoredEntry, data: bytes) -> Iterator[bytes]:
    """`header`, then the entry's compressed data: `data` read already, the rest read from `fd` in chunks."""
    yield header
    yield data
    position = entry.data_start + len(data)
    while position < entry.data_end:
        piece = os.pread(fd, min(DEFAULT_CHUNK_SIZE, entry.data_end - position), position)
        if not piece:
            raise OSError(f"pack entry at {position} ends before its next entry")
        yield piece
        position += len(piece)


def _commit(objects: PackedObjects, sha: ObjectID) -> Commit | None:
    """The commit `sha` if the store holds it (a receiver's have may be unknown here)."""
    try:
        type_num, raw = objects.get_raw(sha)
    except KeyError:
        return None
    return _parse_commit(raw, sha) if type_num == Commit.type_num else None


def _thin_delta(reader: PackedObjects, sha: ObjectID, base: ObjectID) -> list[bytes] | None:
    """The entry of `sha` as a delta against `base` (an object the receiver has), if it pays."""
    base_type, base_raw = reader.get_raw(base)
    type_num, raw = reader.get_raw(sha)
    if base_type != type_num:
        return None
    delta = b"".join(create_delta(base_raw, raw))
    if len(delta) * 2 >= len(raw):
        return None
    return list(pack_object_chunks(REF_DELTA, (hex_to_sha(base), [delta]), reader.store.object_format))


def _pack_stream(store: PackBasedObjectStore, count: int, records: Iterable[Iterable[bytes]]) -> Iterator[bytes]:
    """A pack of `count` entries: header, the entries' bytes, and the checksum of all of it."""
    digest = store.object_format.new_hash()
    for chunk in pack_header_chunks(count):
        digest.update(chunk)
        yield chunk
    for record in records:
        for chunk in record:
            digest.update(chunk)
            yield chunk
    yield digest.digest()


def rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The same bytes as `chunks`, as slices of exactly `size` bytes (the last one shorter)."""
    if size <= 0:
        raise ValueError("chunk size must be positive")
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        if len(pending) >= size:
            view = memoryview(pending)
            cut = len(pending) - len(pending) % size
            for start in range(0, cut, size):
                yield bytes(view[start : start + size])
            view.release()
            del pending[:cut]
    if pending:
        yield bytes(pending)
