"""Packs a daemon must not get stored: each is refused before anything of it is kept anywhere."""

from __future__ import annotations

import hashlib
import uuid
import zlib
from collections.abc import Awaitable
from io import BytesIO
from pathlib import Path

import pytest
from dulwich.object_format import DEFAULT_OBJECT_FORMAT
from dulwich.objects import Blob, ShaFile
from dulwich.pack import PackData

from makima.server.domain.objects import ObjectStores
from makima.server.git.errors import InvalidPackError
from makima.server.git.objects import OwnerObjectStore, PackLimits, check_name
from tests.objects.helpers import (
    LIMITS,
    History,
    blob,
    commit,
    git_pack,
    pack_bytes,
    pack_files,
    push,
    push_first,
    tree,
)

FILE, LINK, DIR = 0o100644, 0o120000, 0o040000


def refused(
    stores: ObjectStores, owner_id: uuid.UUID, pack: bytes, declared: str | None, *, limits: PackLimits = LIMITS
) -> Awaitable[InvalidPackError]:
    """Push `pack`, expect InvalidPackError, and check the bucket holds the packs it held before."""

    def scenario(store: OwnerObjectStore) -> InvalidPackError:
        before = sorted(info.name for info in store.bucket.list_packs())
        with pytest.raises(InvalidPackError) as caught:
            push(store, pack, declared, limits=limits)
        assert sorted(info.name for info in store.bucket.list_packs()) == before
        return caught.value

    return stores.run(owner_id, scenario)


def one_commit(*entries: tuple[bytes, int, ShaFile], extra: tuple[ShaFile, ...] = ()) -> tuple[bytes, str]:
    """A pack of a commit whose root tree holds `entries` (and their objects), with its sha."""
    root = tree(*entries)
    top = commit(root)
    objects = {obj.id: obj for _n, _m, obj in entries} | {o.id: o for o in extra}
    return pack_bytes([top, root, *objects.values()]), top.id.decode()


async def local_files(stores: ObjectStores, owner_id: uuid.UUID, tmp_path: Path) -> list[str]:
    """Pack files of the owner on local disk: the bucket itself (SQLite) or the cache (PostgreSQL)."""
    local = await stores.run(owner_id, lambda store: store.bucket.local_dir)
    return pack_files(local if local is not None else tmp_path / "cache" / str(owner_id))


HOSTILE_NAMES = [
    b"..",
    b".",
    b"",
    b".git",
    b".GIT",
    b".Git.",
    b".git ",
    b"git~1",
    b"GIT~1",
    b".git::$INDEX_ALLOCATION",
    ".g\u200cit".encode(),
    b"a/b",
    b"../escape",
    b"/abs",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=repr)
async def test_unsafe_names_are_refused(stores: ObjectStores, owner_id: uuid.UUID, name: bytes) -> None:
    pack, sha = one_commit((name, FILE, blob(b"payload\n")))
    error = await refused(stores, owner_id, pack, sha)
    assert error.metadata["problem"] == "unsafe_path"
    assert error.metadata["path"] == name.decode() and "object" in error.metadata


async def test_unsafe_names_in_subtrees_and_nul_are_refused(stores: ObjectStores, owner_id: uuid.UUID) -> None:
    config = blob(b"[core]\n")
    dotgit = tree((b"config", FILE, config))
    inner = tree((b".git", DIR, dotgit))
    pack, sha = one_commit((b"sub", DIR, inner), extra=(dotgit, config))
    error = await refused(stores, owner_id, pack, sha)
    assert error.metadata["problem"] == "unsafe_path" and error.metadata["path"] == ".git"

    # A NUL cannot be written in a tree entry: the bytes no longer parse as the tree they claim.
    pack, sha = one_commit((b"a\x00b", FILE, blob(b"payload\n")))
    error = await refused(stores, owner_id, pack, sha)
    assert error.metadata["problem"] in ("bad_object", "unsafe_path", "missing_object")


def test_symlink_named_gitmodules_and_safe_names() -> None:
    assert check_name(b".gitmodules", LINK) is not None
    assert check_name(b".gitmodules", FILE) is None
    for safe in (b"a", b"..a", b"a..", b".gitignore", b".github", b"git~2", "é".encode(), b"\xff\xfe"):
        assert check_name(safe, FILE) is None, safe


@pytest.mark.parametrize("mode", [0o100664, 0o100600, 0o100777, 0o040755, 0o020000, 0o140000])
async def test_modes_other_than_gits_five_are_refused(stores: ObjectStores, owner_id: uuid.UUID, mode: int) -> None:
    pack, sha = one_commit((b"file", mode, blob(b"payload\n")))
    error = await refused(stores, owner_id, pack, sha)
    assert error.metadata["problem"] == "bad_mode"
    assert error.metadata["mode"] == f"{mode:o}" and error.metadata["path"] == "file"


async def test_missing_blob_and_missing_commit_are_refused(stores: ObjectStores, owner_id: uuid.UUID) -> None:
    present, absent = blob(b"present\n"), blob(b"absent\n")
    root = tree((b"a", FILE, present), (b"b", FILE, absent))
    top = commit(root)
    error = await refused(stores, owner_id, pack_bytes([top, root, present]), top.id.decode())
    assert error.metadata == {"problem": "missing_object", "object": absent.id.decode()}

    pack, _sha = one_commit((b"a", FILE, present))
    error = await refused(stores, owner_id, pack, "0" * 40)
    assert error.metadata == {"problem": "missing_commit", "object": "0" * 40}
    # A declared commit that is a blob of the pack is no commit.
    error = await refused(stores, owner_id, pack, present.id.decode())
    assert error.metadata["problem"] == "missing_commit"


async def test_corrupted_bytes_are_refused(stores: ObjectStores, owner_id: uuid.UUID) -> None:
    pack, sha = one_commit((b"a", FILE, blob(b"x" * 5000)))
    broken = bytearray(pack)
    broken[len(pack) // 2] ^= 0xFF
    error = await refused(stores, owner_id, bytes(broken), sha)
    assert error.metadata["problem"] == "corrupt"
    # The same damage behind a recomputed trailer: the object itself no longer inflates.
    body = bytes(broken[:-20])
    error = await refused(stores, owner_id, body + hashlib.sha1(body).digest(), sha)
    assert error.metadata["problem"] == "corrupt"
    # Truncated, or with bytes after the trailer.
    assert (await refused(stores, owner_id, pack[:-30], sha)).metadata["problem"] == "corrupt"
    assert (await refused(stores, owner_id, pack + b"junk", sha)).metadata["problem"] == "corrupt"
    assert (await refused(stores, owner_id, b"NOPE" + pack[4:], sha)).metadata["problem"] == "corrupt"


async def test_an_object_whose_size_lies_is_refused(stores: ObjectStores, owner_id: uuid.UUID) -> None:
    """A header declaring 4 bytes over a stream of 5,000: refused before anything is inflated in full."""
    data = zlib.compress(b"y" * 5000)
    header = bytes([(Blob.type_num << 4) | 4])
    body = b"PACK" + (2).to_bytes(4, "big") + (1).to_bytes(4, "big") + header + data
    error = await refused(stores, owner_id, body + hashlib.sha1(body).digest(), None)
    assert error.metadata["problem"] == "corrupt"


def inflated_size(pack: bytes) -> int:
    """What the objects of a pack without deltas inflate to, as dulwich reads them."""
    with PackData.from_file(BytesIO(pack), DEFAULT_OBJECT_FORMAT, len(pack)) as data:
        return sum(unpacked.decomp_len or 0 for unpacked in data.iter_unpacked())


async def test_limits_are_enforced(stores: ObjectStores, owner_id: uuid.UUID) -> None:
    pack, sha = one_commit((b"a", FILE, blob(b"z" * 100_000)), (b"b", FILE, blob(b"small\n")))
    error = await refused(stores, owner_id, pack, sha, limits=PackLimits(max_pack_bytes=len(pack) - 1))
    assert error.metadata["problem"] == "too_large" and error.metadata["limit"] == str(len(pack) - 1)
    error = await refused(stores, owner_id, pack, sha, limits=PackLimits(max_objects=3))
    assert error.metadata == {"problem": "too_many_objects", "value": "4", "limit": "3"}
    # 100 kB of blob compresses to almost nothing: the inflated size is what the limit bounds.
    error = await refused(stores, owner_id, pack, sha, limits=PackLimits(max_inflated_bytes=50_000))
    assert error.metadata["problem"] == "too_large" and error.metadata["limit"] == "50000"
    # Exactly at every limit is allowed.
    exact = PackLimits(max_pack_bytes=len(pack), max_objects=4, max_inflated_bytes=inflated_size(pack))
    stored = await stores.run(owner_id, lambda store: push(store, pack, sha, limits=exact))
    assert stored.name is not None


async def test_a_thin_pack_whose_base_is_not_stored_is_refused(
    stores: ObjectStores, owner_id: uuid.UUID, history: History
) -> None:
    thin = git_pack(history.path, [history.second, f"^{history.first}"], thin=True)
    error = await refused(stores, owner_id, thin, history.second)
    assert error.metadata["problem"] == "missing_object"


async def test_refused_packs_leave_no_file(
    stores: ObjectStores, owner_id: uuid.UUID, history: History, tmp_path: Path
) -> None:
    """Nothing in the bucket (checked by `refused`), the cache or the incoming directory."""
    await stores.run(owner_id, lambda store: push_first(store, history))
    kept = await local_files(stores, owner_id, tmp_path)
    pack, sha = one_commit((b".git", FILE, blob(b"payload\n")))
    await refused(stores, owner_id, pack, sha)
    thin = git_pack(history.path, [history.second, f"^{history.first}"], thin=True)
    await refused(stores, owner_id, thin, history.second, limits=PackLimits(max_objects=10))
    assert await local_files(stores, owner_id, tmp_path) == kept
    assert len(kept) == 2 and not any("incoming" in f for f in kept)


async def test_a_gitlink_is_accepted_without_its_commit(stores: ObjectStores, owner_id: uuid.UUID) -> None:
    """A submodule's commit lives in another repository: a pack never holds it, and must not need to."""
    elsewhere = commit(tree((b"lib.py", FILE, blob(b"x\n"))), message=b"a nested repository's commit\n")
    modules = blob(b'[submodule "vendor/lib"]\n\tpath = vendor/lib\n\turl = ../lib\n')
    vendor = tree((b"lib", 0o160000, elsewhere))
    pack, sha = one_commit((b".gitmodules", FILE, modules), (b"vendor", DIR, vendor), extra=(vendor,))

    stored = await stores.run(owner_id, lambda store: push(store, pack, sha))

    assert stored.name is not None and stored.object_count == 4  # commit, root, vendor tree, .gitmodules
    assert await stores.run(owner_id, lambda store: elsewhere.id not in store and sha.encode() in store)
