"""Benchmark of the object store against git push / git fetch on a 1,000-file repository.

Run: .venv/bin/python bench/bench_objects.py [--runs N] [--postgres URL]

A repository made by the git CLI has a 1,000-file first commit and a second that changes 100 files.
Upload (a daemon's PushCheckpoint, without gRPC): the have/want exchange (`lacking`), the daemon's
pack (`outgoing_pack` over its repository) and the service's verified intake (`receive_pack`),
against `git push` of the same commits to a fresh local bare repository. Materialize (ClaimTask's
FetchObjects): the store's pack of the second commit, indexed into a fresh repository and checked
out by the git layer's `restore`, against `git fetch` + `git checkout` from the bare repository.
Bytes: the incremental pack against the full one. Medians are printed with the ratio ours/git
(below 1 means we are faster). The SQLite setup's LocalDirBucket always runs; the PostgreSQL bucket
too when --postgres (default: MAKIMA_TEST_POSTGRES_URL) names a server, in a temporary database,
with a cold cache for every fetch. Nothing is asserted but that the materialized tree is git's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from _common import git_identity, postgres_database
from dulwich.repo import Repo

from makima.server.domain.objects import ObjectStores
from makima.server.git import init_worktree, restore
from makima.server.git.objects import OwnerObjectStore, PackLimits, outgoing_pack
from makima.server.store import migrate, owners
from makima.server.store.engine import Database

T = TypeVar("T")
FILES, CHANGED = 1000, 100
LIMITS = PackLimits()


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=True, text=True).stdout


def build_history(root: Path) -> tuple[str, str]:
    """1,000 source-like files of 200 B to 8 KB in 40 directories; then 100 of them changed."""
    rng = random.Random(7)
    git(root, "init", "-q", "-b", "main")
    paths = []
    for i in range(FILES):
        path = root / f"pkg{i % 8}" / f"mod{i % 5}" / f"file_{i:04}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        line = f"def function_{i}(x):  # {'x' * rng.randrange(10, 60)}\n    return x * {i}\n"
        path.write_text(line * rng.randrange(3, 90))
        paths.append(path)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "first")
    first = git(root, "rev-parse", "HEAD").strip()
    for path in rng.sample(paths, CHANGED):
        with path.open("a") as f:
            f.write("# changed\n")
    git(root, "commit", "-q", "-a", "-m", "second")
    return first, git(root, "rev-parse", "HEAD").strip()


def timed(action: Callable[[], T], into: list[float]) -> T:
    """Run `action`, append its duration in ms to `into`, return its result."""
    start = time.perf_counter()
    result = action()
    into.append((time.perf_counter() - start) * 1000)
    return result


def line(label: str, ours: list[float], theirs: list[float]) -> None:
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"{label:<52} ours {a:8.1f} ms   git {b:8.1f} ms   ours/git {a / b:5.2f}")


def upload(store: OwnerObjectStore, daemon: Repo, commit: str, parent: str | None) -> int:
    """One checkpoint push: have/want, the daemon's pack, the verified intake. Returns the bytes sent."""
    offered = [commit] if parent is None else [commit, parent]
    lacking = store.lacking(offered)
    haves = [sha for sha in offered if sha not in lacking]
    pack = outgoing_pack(daemon.object_store, wants=[commit], haves=haves)
    sent = 0

    def counted() -> Iterator[bytes]:
        nonlocal sent
        for chunk in pack.chunks:
            sent += len(chunk)
            yield chunk

    store.receive_pack(counted(), commit=commit, limits=LIMITS)
    return sent


def materialize(store: OwnerObjectStore, commit: str, path: Path) -> None:
    """A daemon's claim: fetch the commit's pack into a fresh repository and check it out."""
    init_worktree(path, branch="main")
    repo = Repo(str(path))
    try:
        f, done, abort = repo.object_store.add_pack()
        try:
            for chunk in store.outgoing_pack(wants=[commit], haves=[]).chunks:
                f.write(chunk)
        except BaseException:
            abort()
            raise
        done()
    finally:
        repo.close()
    restore(path, commit_sha=commit)


class Backend:
    """Stores of one bucket kind, each run on a fresh owner; PostgreSQL calls run on a loop thread."""

    def __init__(self, url: str, base: Path) -> None:
        self.base = base
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.db = Database(url)
        self.on_loop(migrate.upgrade(self.db))

    def on_loop(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result()

    def stores(self, cache: str) -> ObjectStores:
        async def make() -> ObjectStores:
            return ObjectStores.for_database(self.db, workspace_root=self.base / "ws", cache_dir=self.base / cache)

        return self.on_loop(make())

    def new_owner(self) -> uuid.UUID:
        owner = uuid.uuid4()

        async def insert() -> None:
            async with self.db.write() as session:
                await owners.ensure_owner(session, owner_id=owner)

        self.on_loop(insert())
        return owner

    def close(self) -> None:
        self.on_loop(self.db.dispose())
        self.loop.call_soon_threadsafe(self.loop.stop)


def bench(backend: Backend, src: Path, first: str, second: str, runs: int) -> dict[str, list[float]]:
    daemon = Repo(str(src))
    results: dict[str, list[float]] = {k: [] for k in ("first", "incremental", "materialize")}
    sizes: dict[str, int] = {}
    for run in range(runs):
        owner = backend.new_owner()
        stores = backend.stores(f"cache-{run}")
        with stores.open(owner) as store:
            sizes["first"] = timed(partial(upload, store, daemon, first, None), results["first"])
            sizes["incremental"] = timed(partial(upload, store, daemon, second, first), results["incremental"])
        # Another process (its cache still empty) serves the claim.
        with backend.stores(f"fetch-cache-{run}").open(owner) as store:
            target = backend.base / f"materialized-{run}"
            timed(partial(materialize, store, second, target), results["materialize"])
        if git(target, "write-tree").strip() != git(src, "rev-parse", f"{second}^{{tree}}").strip():
            raise SystemExit(f"the materialized tree of run {run} differs from git's")
    daemon.close()
    results["bytes"] = [float(sizes["first"]), float(sizes["incremental"])]
    return results


def fetch_and_checkout(bare: Path, target: Path) -> None:
    target.mkdir()
    git(target, "init", "-q", "-b", "main")
    git(target, "fetch", "-q", str(bare), "main")
    git(target, "checkout", "-q", "-B", "main", "FETCH_HEAD")


def bench_git(base: Path, src: Path, first: str, second: str, runs: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {k: [] for k in ("first", "incremental", "materialize")}
    for run in range(runs):
        bare = base / f"bare-{run}.git"
        git(base, "init", "-q", "--bare", str(bare))
        timed(partial(git, src, "push", "-q", str(bare), f"{first}:refs/heads/main"), results["first"])
        timed(partial(git, src, "push", "-q", str(bare), f"{second}:refs/heads/main"), results["incremental"])
        timed(partial(fetch_and_checkout, bare, base / f"fetched-{run}"), results["materialize"])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--postgres", default=os.environ.get("MAKIMA_TEST_POSTGRES_URL", ""))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-objects-") as tmp:
        base = Path(tmp)
        git_identity(base)
        src = base / "src"
        src.mkdir()
        first, second = build_history(src)
        (base / "git").mkdir()
        theirs = bench_git(base / "git", src, first, second, args.runs)

        print(f"object store vs git {git(base, 'version').split()[-1]}: {FILES} files, {CHANGED} changed")
        print(f"median of {args.runs} runs; each run a new owner and a new store")
        with postgres_database(args.postgres) if args.postgres else nullcontext("") as pg_url:
            backends = [("sqlite", "LocalDirBucket", f"sqlite+aiosqlite:///{base / 'sqlite' / 'makima.db'}")]
            if pg_url:
                backends.append(("postgresql", "PostgresBucket, cold cache for each fetch", pg_url))
            for name, kind, url in backends:
                (base / name).mkdir()
                backend = Backend(url, base / name)
                try:
                    ours = bench(backend, src, first, second, args.runs)
                finally:
                    backend.close()
                print(f"-- {name} ({kind})")
                line("upload first commit (1,000 files) / git push", ours["first"], theirs["first"])
                line("upload incremental (100 files) / git push", ours["incremental"], theirs["incremental"])
                line("fetch + materialize / git fetch + checkout", ours["materialize"], theirs["materialize"])
                full, incremental = ours["bytes"]
                label = "bytes sent: incremental / first"
                print(f"{label:<52} {incremental:8.0f} B / {full:8.0f} B   ratio {incremental / full:5.2f}")


if __name__ == "__main__":
    main()
