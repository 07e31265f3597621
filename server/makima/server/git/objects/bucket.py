"""Where an owner's packs are kept: the small synchronous "pack bucket" protocol and its on-disk form.

The object store (`store.py`) is dulwich's `BucketBasedObjectStore` over this protocol, so a new
backend (PostgreSQL today, an S3-compatible bucket later) is four methods and touches neither the
store nor the domain. Packs are immutable and named by the SHA-1 over their sorted object ids (what
dulwich's `Pack.name()` returns), so putting a name that exists is a no-op and a copy of a pack
never goes stale. Calls are synchronous: the store runs in a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol

_NAME = re.compile(r"[0-9a-f]{40}")
_IDX_V2_MAGIC = b"\377tOc"


@dataclass(frozen=True)
class PackInfo:
    """What a bucket lists about one pack, without reading it."""

    name: str
    object_count: int
    byte_size: int
    # When the pack was put: garbage collection spares packs younger than its grace period.
    create_time: datetime


class PackBucket(Protocol):
    """The packs of one owner; names are 40 lowercase hex digits (see `check_pack_name`)."""

    @property
    def local_dir(self) -> Path | None:
        """A directory holding the packs as `pack-<name>.pack`/`.idx` files that the store may open in
        place (no cache copy); None when the packs live elsewhere."""
        ...

    def list_packs(self) -> list[PackInfo]:
        """Every pack of the owner, in no particular order."""
        ...

    def get_pack(self, name: str, pack_out: BinaryIO, index_out: BinaryIO) -> None:
        """Write the pack's data and index to the two files; KeyError if there is no such pack."""
        ...

    def put_pack(self, name: str, pack: BinaryIO, index: BinaryIO) -> None:
        """Store a pack read from the two files (at their start); a name already stored is kept as is."""
        ...

    def remove_pack(self, name: str) -> None:
        """Remove a pack; removing one that is not there is not an error."""
        ...


def check_pack_name(name: str) -> str:
    """`name` if it can name a pack, else ValueError: names become file names and keys, never paths."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a pack name: {name!r}")
    return name


def pack_basename(directory: Path, name: str) -> Path:
    """The path of a pack's files without their suffix, as git lays them out in objects/pack."""
    return directory / f"pack-{check_pack_name(name)}"


def index_object_count(index: BinaryIO) -> int:
    """The number of objects a pack index (version 1 or 2) lists, read from its fan-out table."""
    head = index.read(8)
    if head[:4] == _IDX_V2_MAGIC:
        index.seek(8 + 255 * 4)
    else:
        index.seek(255 * 4)
    last = index.read(4)
    if len(last) != 4:
        raise ValueError("truncated pack index")
    return int(struct.unpack(">L", last)[0])


def names_in(directory: Path) -> dict[str, Path]:
    """The packs whose two files are in `directory`: name -> path of the .pack file."""
    found: dict[str, Path] = {}
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
        for entry in entries:
            stem, _, suffix = entry.name.partition(".")
            if suffix != "pack" or not stem.startswith("pack-") or not _NAME.fullmatch(stem[5:]):
                continue
            if os.path.exists(os.path.join(directory, stem + ".idx")):
                found[stem[5:]] = Path(entry.path)
    return found


def install_files(directory: Path, name: str, pack: BinaryIO, index: BinaryIO) -> None:
    """Copy a pack's two files into `directory` under its name, each appearing whole or not at all.

    The index is renamed into place before the data, and a pack counts as present only once its
    .pack file exists (see `names_in`), so a reader never opens half a pack.
    """
    base = pack_basename(directory, name)
    for source, suffix in ((index, ".idx"), (pack, ".pack")):
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="tmp-", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as out:
                source.seek(0)
                shutil.copyfileobj(source, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, f"{base}{suffix}")
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    _fsync_dir(directory)


def remove_files(directory: Path, name: str) -> None:
    """Remove a pack's files, data first so that listings stop seeing it at once."""
    base = pack_basename(directory, name)
    for suffix in (".pack", ".idx"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{base}{suffix}")


def _fsync_dir(directory: Path) -> None:
    """Make renames in `directory` durable before anything refers to the files."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalDirBucket:
    """Packs as files in one directory (the embedded SQLite setup keeps them beside the database).

    The files are the packs themselves, so the store opens them in place and keeps no cache. Several
    processes on the machine may share the directory: every change is an atomic rename or unlink.
    """

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory.resolve()

    @property
    def local_dir(self) -> Path | None:
        return self.directory

    def list_packs(self) -> list[PackInfo]:
        infos = []
        for name, path in names_in(self.directory).items():
            try:
                st = path.stat()
                with open(f"{pack_basename(self.directory, name)}.idx", "rb") as index:
                    count = index_object_count(index)
            except FileNotFoundError:
                continue  # removed since the directory was read
            create_time = datetime.fromtimestamp(st.st_mtime, UTC)
            infos.append(PackInfo(name=name, object_count=count, byte_size=st.st_size, create_time=create_time))
        return infos

    def get_pack(self, name: str, pack_out: BinaryIO, index_out: BinaryIO) -> None:
        base = pack_basename(self.directory, name)
        try:
            with open(f"{base}.pack", "rb") as pack, open(f"{base}.idx", "rb") as index:
                shutil.copyfileobj(pack, pack_out, 1 << 20)
                shutil.copyfileobj(index, index_out, 1 << 20)
        except FileNotFoundError:
            raise KeyError(name) from None

    def put_pack(self, name: str, pack: BinaryIO, index: BinaryIO) -> None:
        if name not in names_in(self.directory):
            install_files(self.directory, name, pack, index)

    def remove_pack(self, name: str) -> None:
        remove_files(self.directory, name)
