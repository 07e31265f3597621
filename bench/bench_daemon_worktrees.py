"""Benchmark of a daemon's worktree through the real server against git push / git fetch + checkout.

Run: .venv/bin/python bench/bench_daemon_worktrees.py [--runs N] [--postgres URL]

A `makima-server serve` process (SQLite; then PostgreSQL too when --postgres, default
MAKIMA_BENCH_POSTGRES_URL or MAKIMA_TEST_POSTGRES_URL, names a server: a temporary database) serves a
daemon driven by `makima.client.DaemonWorktrees`, in this process, as a daemon would be. Each run
claims a new daemon-held task and prepares its worktree; the same 1,000 files (200 B to 8 KB, 40
directories, some executable, a .gitignore) are written into it and into a git repository, salted
per run so that no run reuses another's objects. Then, timed:
- upload first: what `DaemonWorktrees.checkpoint` does after committing (the pack of what the
  service lacks, PushCheckpoint) against `git push` of the same files' commit to a fresh local bare
  repository; and the commit (snapshot of the directory) plus the upload against `git add -A && git
  commit && git push` (git's whole way to the same state);
- upload incremental: the same after 100 files changed;
- materialize: `DaemonWorktrees.prepare` of a new claim of the task in an empty directory
  (FetchObjects, verified pack intake, checkout) against `git init && git fetch && git checkout` from
  the bare repository.
Bytes: the pack of the incremental checkpoint against the first one, and against git's thin pack
of the same change. git's run and ours alternate, so both see the same load of the machine (creating
files dominates both materializations: a busy disk moves the ratio). Medians are printed with the
ratio ours/git (below 1 means we are faster). Nothing is asserted but that every tree is git's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import BinaryIO, TypeVar

from _common import (
    CHANGED,
    FILES,
    backends,
    change_files,
    line,
    postgres_argument,
    serving,
    timed,
    timed_async,
    write_files,
)

from makima.client import AsyncClient, DaemonWorktrees
from makima.v1 import daemon_pb2, resources_pb2
from makima.worktree import LocalWorktree

T = TypeVar("T")
Results = dict[str, list[float]]
DAEMON_HELD = resources_pb2.WorktreeSpec(
    source=resources_pb2.WorktreeSpec.SOURCE_EMPTY, placement=resources_pb2.WORKTREE_PLACEMENT_DAEMON
)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=True, text=True).stdout


def pack_size(path: Path, commit: str, parent: str) -> float:
    """Bytes of the pack a checkpoint of `commit` on `parent` sends (what DaemonWorktrees pushes)."""
    with LocalWorktree.open(path) as worktree:
        return sum(len(chunk) for chunk in worktree.outgoing(commit, known=[parent]).chunks)


async def bench(client: AsyncClient, base: Path, runs: int) -> tuple[Results, Results]:
    """Both ways, run after run, so that both see the same load of the machine."""
    ours: Results = {
        k: [] for k in ("commit first", "first", "commit incremental", "incremental", "materialize", "bytes first",
                        "bytes incremental")
    }  # fmt: skip
    theirs: Results = {k: [] for k in ("first", "incremental", "first+", "incremental+", "materialize", "bytes")}
    daemon_id = (await client.register_daemon(name="bench")).daemon.id
    for run in range(runs):
        git_tree = git_run(base / "git", run, theirs)
        await our_run(client, daemon_id, base / "ours", run, ours)
        materialized = base / "ours" / f"fresh-{run}"
        (path,) = materialized.iterdir()
        if git(path, "rev-parse", "HEAD^{tree}") != git_tree or git(path, "status", "--porcelain"):
            raise SystemExit(f"run {run}: the materialized worktree does not hold git's tree of the same files")
    return ours, theirs


async def our_run(client: AsyncClient, daemon_id: str, base: Path, run: int, results: Results) -> None:
    """A daemon-held task claimed, prepared, checkpointed twice; then claimed again and prepared afresh."""
    task = (await client.create_task(name=f"bench {run}", worktree=DAEMON_HELD)).task
    claimed = (await client.claim_task(daemon_id=daemon_id)).claimed
    worktrees = DaemonWorktrees(client, base / f"daemon-{run}")
    path = await worktrees.prepare(claimed)
    write_files(path, run)
    first = await checkpoint(client, claimed, path, "first", claimed.worktree.start_commit_sha, results)
    change_files(path)
    second = await checkpoint(client, claimed, path, "incremental", first, results)
    results["bytes first"].append(pack_size(path, first, claimed.worktree.start_commit_sha))
    results["bytes incremental"].append(pack_size(path, second, first))
    interrupted = resources_pb2.TASK_STATUS_INTERRUPTED
    await client.report_task_status(
        daemon_id=daemon_id, task_id=task.id, status=interrupted, lease_token=claimed.lease_token
    )
    await client.resume_task(task_id=task.id)
    again = (await client.claim_task(daemon_id=daemon_id)).claimed
    await timed_async(DaemonWorktrees(client, base / f"fresh-{run}").prepare(again), results["materialize"])
    completed = resources_pb2.TASK_STATUS_COMPLETED
    await client.report_task_status(
        daemon_id=daemon_id, task_id=task.id, status=completed, lease_token=again.lease_token
    )


async def checkpoint(
    client: AsyncClient, claimed: daemon_pb2.ClaimedTask, path: Path, step: str, parent: str, results: Results
) -> str:
    """What `DaemonWorktrees.checkpoint` does, in its two timed parts: the local commit (snapshot of
    the directory), then the upload (pack of what the service lacks, PushCheckpoint). Returns the commit."""

    def commit() -> str:
        with LocalWorktree.open(path) as worktree:
            return worktree.checkpoint(step, parent=parent).id.decode()

    def pack(commit_sha: str, into: BinaryIO) -> None:
        with LocalWorktree.open(path) as worktree:
            for chunk in worktree.outgoing(commit_sha, known=[parent]).chunks:
                into.write(chunk)

    async def upload(commit_sha: str) -> None:
        with tempfile.TemporaryFile() as f:
            await asyncio.to_thread(pack, commit_sha, f)
            await client.push_checkpoint(
                task_id=claimed.task.id,
                lease_token=claimed.lease_token,
                commit_sha=commit_sha,
                parent_commit_sha=parent,
                message=step,
                request_id=str(uuid.uuid4()),
                pack=f,
            )

    commit_sha = await timed_async(asyncio.to_thread(commit), results[f"commit {step}"])
    await timed_async(upload(commit_sha), results[step])
    return commit_sha


def git_run(base: Path, run: int, results: Results) -> str:
    """git's way, to fresh bare repositories: push alone, and add + commit + push (the whole way to
    the same state); then fetch + checkout. Returns the tree of the second commit."""
    for whole in (False, True):
        work, bare = base / f"work-{run}-{whole}", base / f"bare-{run}-{whole}.git"
        work.mkdir(parents=True)
        git(work, "init", "-q", "-b", "main")
        git(base, "init", "-q", "--bare", str(bare))
        write_files(work, run)
        upload(work, bare, "first", whole=whole, results=results)
        change_files(work)
        upload(work, bare, "incremental", whole=whole, results=results)
    thin = subprocess.run(
        ["git", "pack-objects", "--stdout", "--revs", "--thin", "-q"], cwd=work, input=b"HEAD\n^HEAD~1\n",
        capture_output=True, check=True,
    )  # fmt: skip
    results["bytes"].append(len(thin.stdout))
    target = base / f"fetched-{run}"
    timed(lambda: fetch_and_checkout(bare, target), results["materialize"])
    return git(target, "rev-parse", "HEAD^{tree}")


def upload(work: Path, bare: Path, step: str, *, whole: bool, results: Results) -> None:
    """Time the push of the work tree's changes as commit `step`, with the add + commit if `whole`."""
    if whole:
        timed(lambda: (commit(work, step), push(work, bare)), results[f"{step}+"])
    else:
        commit(work, step)
        timed(lambda: push(work, bare), results[step])


def commit(work: Path, message: str) -> None:
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", message)


def push(work: Path, bare: Path) -> None:
    git(work, "push", "-q", str(bare), "main")


def fetch_and_checkout(bare: Path, target: Path) -> None:
    target.mkdir()
    git(target, "init", "-q", "-b", "main")
    git(target, "fetch", "-q", str(bare), "main")
    git(target, "checkout", "-q", "-B", "main", "FETCH_HEAD")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    postgres_argument(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-daemon-worktrees-") as tmp:
        base = Path(tmp)
        print(f"daemon worktrees through the server vs git {git(base, 'version').split()[-1]}")
        print(f"{FILES} files, then {CHANGED} changed; median of {args.runs} runs, each a new task")
        with backends(base, args.postgres) as found:
            for name, url in found:

                async def run(name: str = name, url: str = url) -> tuple[Results, Results]:
                    async with serving(url, base / name / "workspace") as (address, key):
                        async with AsyncClient(address, key, timeout=120) as client:
                            return await bench(client, base / name, args.runs)

                ours, theirs = asyncio.run(run())
                print(f"-- {name} (makima-server serve, the daemon in this process)")
                for step, label in (("first", "first (1,000 files)"), ("incremental", "incremental (100 files)")):
                    whole = [c + u for c, u in zip(ours[f"commit {step}"], ours[step], strict=True)]
                    line(f"upload {label}: pack + PushCheckpoint / git push", ours[step], theirs[step])
                    line("  commit + upload / git add -A + commit + push", whole, theirs[f"{step}+"])
                line("materialize: prepare / git init + fetch + checkout", ours["materialize"], theirs["materialize"])
                full, incremental = statistics.median(ours["bytes first"]), statistics.median(ours["bytes incremental"])
                label = "bytes sent: incremental / first"
                print(f"{label:<60} {incremental:8.0f} B / {full:8.0f} B   ratio {incremental / full:5.2f}")
                thin = statistics.median(theirs["bytes"])
                label = "bytes sent, incremental: ours / git's thin pack"
                print(f"{label:<60} {incremental:8.0f} B / {thin:8.0f} B   ratio {incremental / thin:5.2f}")


if __name__ == "__main__":
    main()
