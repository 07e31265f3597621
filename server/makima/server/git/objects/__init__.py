"""The service's git object store: checkpoints' objects kept per owner, behind a pack bucket.

`OwnerObjectStore` is a dulwich `BucketBasedObjectStore`; a backend is a `PackBucket` (four
synchronous methods). `LocalDirBucket` keeps packs as files (the embedded SQLite setup); the
PostgreSQL bucket lives beside the database code (`domain/objects.py`), since this layer imports no
database. The packs both ends of a have/want exchange send, and the checks every incoming pack
passes before anything of it is stored, are `makima.worktree.transfer` and `makima.worktree.verify`:
a daemon builds and checks its packs with the same code.
"""

from makima.server.git.objects.bucket import LocalDirBucket, PackBucket, PackInfo, check_pack_name, index_object_count
from makima.server.git.objects.store import GarbageCollection, OwnerObjectStore
from makima.worktree.errors import InvalidPackError
from makima.worktree.paths import GIT_MODES, check_name
from makima.worktree.transfer import (
    DEFAULT_CHUNK_SIZE,
    OutgoingPack,
    find_missing,
    is_object_id,
    outgoing_pack,
    rechunk,
)
from makima.worktree.verify import PackLimits, StoredPack

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "GIT_MODES",
    "GarbageCollection",
    "InvalidPackError",
    "LocalDirBucket",
    "OutgoingPack",
    "OwnerObjectStore",
    "PackBucket",
    "PackInfo",
    "PackLimits",
    "StoredPack",
    "check_name",
    "check_pack_name",
    "find_missing",
    "index_object_count",
    "is_object_id",
    "outgoing_pack",
    "rechunk",
]
