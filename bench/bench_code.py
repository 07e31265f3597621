"""Benchmark of the code RPCs of a service-held worktree through the real server, against the git CLI.

Run: .venv/bin/python bench/bench_code.py [--runs N] [--postgres URL]

A `makima-server serve` process (SQLite; then PostgreSQL too when --postgres, default
MAKIMA_BENCH_POSTGRES_URL or MAKIMA_TEST_POSTGRES_URL, names a server: a temporary database) holds the
worktree of a task; the same 1,000 files (200 B to 8 KB, 40 directories, some executable) are written
into it and into a git repository, salted per run so that no run reuses another's objects. Timed,
each through gRPC against the git command line on the same files:
- CreateCheckpoint of the 1,000 new files against `git add -A && git commit` (a first commit);
- CreateCheckpoint after 100 files changed against the same;
- RewindTask CODE to the first checkpoint, the worktree as the last checkpoint left it, against
  `git reset --hard <first> && git clean -fd`;
- RewindTask CODE after 100 more files changed (the safety checkpoint must keep them; git's reset
  loses them) against the same.
git's run and ours alternate, so both see the same load of the machine. Medians are printed with
the ratio ours/git (below 1 means we are faster). Nothing is asserted but that each rewound worktree
holds git's tree.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
from pathlib import Path

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

from makima.client import AsyncClient
from makima.v1 import resources_pb2, task_fork_pb2

Results = dict[str, list[float]]
SERVICE_HELD = resources_pb2.WorktreeSpec(
    source=resources_pb2.WorktreeSpec.SOURCE_EMPTY, placement=resources_pb2.WORKTREE_PLACEMENT_SERVICE
)
STEPS = ("first", "incremental", "rewind", "rewind dirty")


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=True, text=True).stdout


async def bench(client: AsyncClient, base: Path, runs: int) -> tuple[Results, Results]:
    ours: Results = {step: [] for step in STEPS}
    theirs: Results = {step: [] for step in STEPS}
    for run in range(runs):
        git_trees = git_run(base / f"git-{run}", run, theirs)
        our_trees = await our_run(client, run, ours)
        if our_trees != git_trees:
            raise SystemExit(f"run {run}: the rewound worktrees do not hold git's trees")
    return ours, theirs


async def our_run(client: AsyncClient, run: int, results: Results) -> list[str]:
    """A service-held task: two checkpoints, a rewind from a clean worktree, one from a changed one."""
    task = (await client.create_task(name=f"bench {run}", worktree=SERVICE_HELD)).task
    path = Path(task.worktree_path)
    write_files(path, run)
    first = (await timed_async(client.create_checkpoint(task_id=task.id), results["first"])).checkpoint
    change_files(path)
    await timed_async(client.create_checkpoint(task_id=task.id), results["incremental"])
    code = task_fork_pb2.REWIND_MODE_CODE
    trees = []
    for step in ("rewind", "rewind dirty"):
        if step == "rewind dirty":
            change_files(path, mark="# dirty\n")
        await timed_async(client.rewind_task(task_id=task.id, checkpoint_id=first.id, mode=code), results[step])
        trees.append(await asyncio.to_thread(worktree_tree, path))
    return trees


def worktree_tree(path: Path) -> str:
    """The tree git would commit from the worktree (its status is clean after a rewind)."""
    if git(path, "status", "--porcelain"):
        raise SystemExit(f"{path}: git status is not clean after a rewind")
    return git(path, "rev-parse", "HEAD^{tree}").strip()


def git_run(work: Path, run: int, results: Results) -> list[str]:
    """git's way: add + commit twice, then reset --hard + clean, from a clean and a changed worktree."""
    work.mkdir(parents=True)
    git(work, "init", "-q", "-b", "main")
    write_files(work, run)
    timed(lambda: commit(work), results["first"])
    first = git(work, "rev-parse", "HEAD").strip()
    change_files(work)
    timed(lambda: commit(work), results["incremental"])
    trees = []
    for step in ("rewind", "rewind dirty"):
        if step == "rewind dirty":
            change_files(work, mark="# dirty\n")
        timed(lambda: (git(work, "reset", "-q", "--hard", first), git(work, "clean", "-fdq")), results[step])
        trees.append(git(work, "rev-parse", "HEAD^{tree}").strip())
    return trees


def commit(work: Path) -> None:
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "checkpoint")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    postgres_argument(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-code-") as tmp:
        base = Path(tmp)
        print(f"code RPCs of a service-held worktree through the server vs git {git(base, 'version').split()[-1]}")
        print(f"{FILES} files, then {CHANGED} changed; median of {args.runs} runs, each a new task")
        with backends(base, args.postgres) as found:
            for name, url in found:

                async def run(name: str = name, url: str = url) -> tuple[Results, Results]:
                    async with serving(url, base / name / "workspace") as (address, key):
                        async with AsyncClient(address, key, timeout=120) as client:
                            return await bench(client, base / name, args.runs)

                ours, theirs = asyncio.run(run())
                print(f"-- {name} (makima-server serve)")
                line("CreateCheckpoint, 1,000 new files / git add -A + commit", ours["first"], theirs["first"])
                line("CreateCheckpoint, 100 changed / git add -A + commit", ours["incremental"], theirs["incremental"])
                line("RewindTask CODE, clean worktree / reset --hard + clean -fd", ours["rewind"], theirs["rewind"])
                line(
                    "  100 files changed since (kept by the safety checkpoint)",
                    ours["rewind dirty"],
                    theirs["rewind dirty"],
                )


if __name__ == "__main__":
    main()
