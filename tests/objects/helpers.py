"""Repositories made by the git command line, packs made by hand, and the git CLI as the oracle."""

from __future__ import annotations

import os
import random
import subprocess
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path

from dulwich.object_format import DEFAULT_OBJECT_FORMAT
from dulwich.objects import Blob, Commit, ShaFile, Tree
from dulwich.pack import write_pack_objects
from sqlalchemy import update

from makima.server.git.objects import OutgoingPack, OwnerObjectStore, PackLimits, StoredPack
from makima.server.store.engine import Database
from makima.server.store.models import ObjectPack

FILES = 1000
CHANGED = 100

# Neither the machine's git configuration nor its identity may leak into the tests' repositories.
GIT_ENV = {
    **os.environ,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@localhost",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@localhost",
}


def git(cwd: Path, *args: str, stdin: bytes | None = None) -> bytes:
    """Run git in `cwd` and return its stdout; fails the test on a non-zero exit."""
    result = subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True, env=GIT_ENV, check=False)
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr.decode(errors='replace')}"
    return result.stdout


def git_fails(cwd: Path, *args: str, stdin: bytes | None = None) -> str:
    """Run git expecting it to fail; returns its stderr."""
    result = subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True, env=GIT_ENV, check=False)
    assert result.returncode != 0, f"git {' '.join(args)} succeeded"
    return result.stderr.decode(errors="replace")


@dataclass(frozen=True)
class History:
    """A repository with a 1,000-file first commit and a second that changes 100 of the files."""

    path: Path
    first: str
    second: str


def build_history(path: Path) -> History:
    """Source-like files of 200 B to 8 KB in 40 directories, some executable, one symlink."""
    rng = random.Random(11)
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    files = []
    for i in range(FILES):
        file = path / f"pkg{i % 8}" / f"mod{i % 5}" / f"file_{i:04}.py"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(
            f"def function_{i}(x):  # {'x' * rng.randrange(10, 60)}\n    return x * {i}\n" * rng.randrange(3, 90)
        )
        if i % 50 == 0:
            file.chmod(0o755)
        files.append(file)
    os.symlink("pkg0/mod0/file_0000.py", path / "entry")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "first")
    first = git(path, "rev-parse", "HEAD").decode().strip()
    for file in rng.sample(files, CHANGED):
        with file.open("a") as f:
            f.write("# changed\n")
    git(path, "commit", "-q", "-a", "-m", "second")
    second = git(path, "rev-parse", "HEAD").decode().strip()
    return History(path=path, first=first, second=second)


def rev_list_objects(repo: Path, *revs: str) -> set[str]:
    """The objects `git rev-list --objects` lists for `revs` (e.g. 'C2', '^C1')."""
    out = git(repo, "rev-list", "--objects", *revs).decode()
    return {line.split(" ", 1)[0] for line in out.splitlines() if line}


def ls_tree(repo: Path, commit: str) -> list[str]:
    """`git ls-tree -r` of `commit` as 'mode type sha<TAB>path' lines."""
    return sorted(git(repo, "ls-tree", "-r", "--full-tree", commit).decode("utf-8", "surrogateescape").splitlines())


def git_pack(repo: Path, revs: Sequence[str], *, thin: bool = False) -> bytes:
    """The pack `git pack-objects` makes of `revs` (e.g. ['C2', '^C1']), thin if asked."""
    args = ["pack-objects", "--stdout", "--revs", "-q", *(["--thin"] if thin else [])]
    return git(repo, *args, stdin="".join(f"{rev}\n" for rev in revs).encode())


def materialize(path: Path, pack: bytes, *, branch_at: str) -> Path:
    """Index a fetched pack into the repository at `path` (created if needed) and check out `branch_at`."""
    if not path.exists():
        path.mkdir()
        git(path, "init", "-q", "-b", "main")
    git(path, "index-pack", "--stdin", "--fix-thin", "--strict", stdin=pack)
    git(path, "update-ref", "refs/heads/main", branch_at)
    git(path, "checkout", "-q", "-f", "main")
    return path


def pack_bytes(objects: Iterable[ShaFile]) -> bytes:
    """A pack of exactly `objects`, full (no deltas), as a hostile or hand-made sender would write it."""
    out = BytesIO()
    write_pack_objects(out, [(obj, None) for obj in objects], object_format=DEFAULT_OBJECT_FORMAT)
    return out.getvalue()


def blob(data: bytes) -> Blob:
    return Blob.from_string(data)


def tree(*entries: tuple[bytes, int, ShaFile]) -> Tree:
    """A tree of (name, mode, object) entries, with no check of the names or modes."""
    result = Tree()
    for name, mode, obj in entries:
        result.add(name, mode, obj.id)
    return result


def commit(root: Tree, *parents: Commit, message: bytes = b"hand-made\n") -> Commit:
    result = Commit()
    result.tree = root.id
    result.parents = [p.id for p in parents]
    result.author = result.committer = b"test <test@localhost>"
    result.author_time = result.commit_time = 1_700_000_000
    result.author_timezone = result.commit_timezone = 0
    result.message = message
    return result


def outgoing_bytes(outgoing: OutgoingPack) -> bytes:
    return b"".join(outgoing.chunks)


LIMITS = PackLimits()


def push(store: OwnerObjectStore, pack: bytes, commit: str | None, *, limits: PackLimits = LIMITS) -> StoredPack:
    """Send a whole pack as a daemon would, in 64 KiB messages."""
    return store.receive_pack([pack[i : i + 65536] for i in range(0, len(pack), 65536)], commit=commit, limits=limits)


def push_first(store: OwnerObjectStore, history: History) -> StoredPack:
    return push(store, git_pack(history.path, [history.first]), history.first)


def pack_files(directory: Path) -> list[str]:
    """The pack and index files under `directory` (incoming temporaries included)."""
    return sorted(
        os.path.relpath(os.path.join(d, f), directory)
        for d, _dirs, files in os.walk(directory)
        for f in files
        if f.endswith((".pack", ".idx"))
    )


async def age_packs(db: Database, store_dir: Path | None, owner: uuid.UUID, names: list[str], by: timedelta) -> None:
    """Make packs look put `by` ago: the PackInfo.create_time of either bucket (files or rows)."""
    then = datetime.now(UTC) - by
    if store_dir is not None:
        for name in names:
            for suffix in (".pack", ".idx"):
                os.utime(store_dir / f"pack-{name}{suffix}", (then.timestamp(), then.timestamp()))
        return
    async with db.write() as session:
        for name in names:
            await session.execute(
                update(ObjectPack).where(ObjectPack.owner_id == owner, ObjectPack.name == name).values(create_time=then)
            )
