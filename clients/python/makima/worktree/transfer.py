"""Have/want and outgoing packs over any dulwich object store, in chunks sized for a gRPC stream.

The service answers FetchObjects from its object store, and a daemon answers the service's wants
from its own repository for PushCheckpoint: both sides build their packs here, the way git does.
The receiver names the commits it wants and the commits it has; what it has is never sent, and a
delta may be sent against an object it has (a thin pack), which it resolves when storing the pack.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from dulwich.object_store import BaseObjectStore, MissingObjectFinder, PackBasedObjectStore
from dulwich.objects import Commit, ObjectID, Tree, hex_to_sha, sha_to_hex
from dulwich.pack import (
    REF_DELTA,
    Pack,
    PackHint,
    create_delta,
    pack_header_chunks,
    pack_object_chunks,
    pack_object_header,
)

from makima.worktree.errors import RefNotFoundError
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


def find_missing(
    store: BaseObjectStore, *, wants: Iterable[str], haves: Iterable[str]
) -> tuple[list[tuple[ObjectID, PackHint | None]], set[ObjectID]]:
    """The objects reachable from `wants` but not from `haves`, and the objects the receiver has.

    `haves` unknown to `store` are ignored (a receiver may have more than the sender); a want it
    does not hold is RefNotFoundError.
    """
    want_ids, have_ids = object_ids(wants), object_ids(haves)
    for want in want_ids:
        if want not in store:
            raise RefNotFoundError(f"commit {want.decode()} is not in the object store", commit=want.decode())
    finder = MissingObjectFinder(store, haves=have_ids, wants=want_ids)
    return list(finder), finder.get_remote_has()


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
    missing, remote_has = find_missing(store, wants=wants, haves=haves)
    if not thin:
        return pack_of(store, missing, chunk_size=chunk_size)
    bases = path_bases(store, wants=wants, haves=haves, missing={sha for sha, _hint in missing})
    return pack_of(store, missing, other_haves=remote_has, delta_bases=bases, chunk_size=chunk_size)


def path_bases(
    store: BaseObjectStore, *, wants: Iterable[str], haves: Iterable[str], missing: set[ObjectID]
) -> dict[ObjectID, ObjectID]:
    """For each missing tree or blob, the object at the same path in the first of `haves` the store holds.

    What changed at a path is usually close to what was there: a tree that gained one entry, a
    file that gained a line. A delta against it (a thin pack: the receiver has it) keeps an
    incremental pack proportional to the change instead of to the directories it touches.
    Unchanged subtrees are not walked; gitlinks and type changes get no base.
    """
    old_root = next((c for c in (_commit(store, sha) for sha in object_ids(haves)) if c is not None), None)
    if old_root is None:
        return {}
    bases: dict[ObjectID, ObjectID] = {}
    for want in object_ids(wants):
        commit = _commit(store, want)
        if commit is None:
            continue
        pending = [(commit.tree, old_root.tree)]
        while pending:
            new, old = pending.pop()
            if new == old or new not in missing or new in bases:
                continue
            bases[new] = old
            new_tree, old_tree = store[new], store[old]
            assert isinstance(new_tree, Tree) and isinstance(old_tree, Tree)
            before = {entry.path: entry for entry in old_tree.iteritems()}
            for entry in new_tree.iteritems():
                prev = before.get(entry.path)
                if prev is None or entry.sha not in missing or MODE_GITLINK in (entry.mode, prev.mode):
                    continue
                if entry.mode == MODE_TREE and prev.mode == MODE_TREE:
                    pending.append((entry.sha, prev.sha))
                elif MODE_TREE not in (entry.mode, prev.mode):
                    bases.setdefault(entry.sha, prev.sha)
    return bases


def pack_of(
    store: PackBasedObjectStore,
    objects: Sequence[tuple[ObjectID, PackHint | None]],
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
    wanted = {sha for sha, _hint in objects}
    haves = other_haves or set()
    located = _locate(store, wanted)
    bases = {sha: base for sha, base in (delta_bases or {}).items() if base in haves}
    records = (
        _thin_delta(store, sha, bases[sha]) or _record(store, sha, located, wanted, haves)
        if sha in bases
        else _record(store, sha, located, wanted, haves)
        for sha, _hint in objects
    )
    return OutgoingPack(
        object_count=len(objects), chunks=rechunk(_pack_stream(store, len(objects), records), chunk_size)
    )


def _locate(store: PackBasedObjectStore, shas: Iterable[ObjectID]) -> dict[ObjectID, tuple[Pack, int]]:
    """The pack and offset of each of `shas` held in one of the store's packs (the first one found)."""
    packs = store.packs
    located: dict[ObjectID, tuple[Pack, int]] = {}
    for sha in shas:
        for pack in packs:
            try:
                located[sha] = (pack, pack.index.object_offset(sha))
                break
            except KeyError:
                continue
    return located


def _record(
    store: PackBasedObjectStore,
    sha: ObjectID,
    located: dict[ObjectID, tuple[Pack, int]],
    wanted: set[ObjectID],
    haves: set[ObjectID],
) -> Iterable[bytes]:
    """The pack entry of `sha`: its stored entry copied when that stands in the new pack, else compressed."""
    where = located.get(sha)
    if where is not None:
        pack, offset = where
        unpacked = pack.data.get_unpacked_object_at(offset, include_comp=True)
        comp = unpacked.comp_chunks
        assert comp is not None and unpacked.decomp_len is not None
        if unpacked.delta_base is None:
            header = pack_object_header(unpacked.pack_type_num, None, unpacked.decomp_len, store.object_format)
            return [bytes(header), *comp]
        if isinstance(unpacked.delta_base, int):
            base_raw = pack.index.object_sha1(offset - unpacked.delta_base)
        else:
            base_raw = unpacked.delta_base
        base = ObjectID(sha_to_hex(base_raw))
        same_pack = base in wanted and located.get(base, (None, 0))[0] is pack
        if same_pack or base in haves:
            header = pack_object_header(REF_DELTA, base_raw, unpacked.decomp_len, store.object_format)
            return [bytes(header), *comp]
    obj = store[sha]
    return pack_object_chunks(obj.type_num, obj.as_raw_chunks(), store.object_format)


def _commit(store: BaseObjectStore, sha: ObjectID) -> Commit | None:
    """The commit `sha` if the store holds it (a receiver's have may be unknown here)."""
    if sha not in store:
        return None
    obj = store[sha]
    return obj if isinstance(obj, Commit) else None


def _thin_delta(store: PackBasedObjectStore, sha: ObjectID, base: ObjectID) -> list[bytes] | None:
    """The entry of `sha` as a delta against `base` (an object the receiver has), if it pays."""
    base_type, base_raw = store.get_raw(base)
    type_num, raw = store.get_raw(sha)
    if base_type != type_num:
        return None
    delta = b"".join(create_delta(base_raw, raw))
    if len(delta) * 2 >= len(raw):
        return None
    return list(pack_object_chunks(REF_DELTA, (hex_to_sha(base), [delta]), store.object_format))


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
