"""The service's git object store: checkpoints' objects kept per owner, behind a pack bucket.

`OwnerObjectStore` is a dulwich `BucketBasedObjectStore`; a backend is a `PackBucket` (four
synchronous methods). `LocalDirBucket` keeps packs as files (the embedded SQLite setup); the
PostgreSQL bucket lives beside the database code (`domain/objects.py`), since this layer imports no
database. `transfer` builds the packs both ends of a have/want exchange send; `verify` holds the
checks every incoming pack passes before anything of it is stored.
"""

from makima.server.git.objects.bucket import LocalDirBucket, PackBucket, PackInfo, check_pack_name, index_object_count
from makima.server.git.objects.store import GarbageCollection, OwnerObjectStore, StoredPack
from makima.server.git.objects.transfer import (
    DEFAULT_CHUNK_SIZE,
    OutgoingPack,
    is_object_id,
    outgoing_pack,
    rechunk,
)
from makima.server.git.objects.verify import GIT_MODES, PackLimits, check_name

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "GIT_MODES",
    "GarbageCollection",
    "LocalDirBucket",
    "OutgoingPack",
    "OwnerObjectStore",
    "PackBucket",
    "PackInfo",
    "PackLimits",
    "StoredPack",
    "check_name",
    "check_pack_name",
    "index_object_count",
    "is_object_id",
    "outgoing_pack",
    "rechunk",
]
