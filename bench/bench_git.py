"""Benchmark of the git layer against the git command line on a 1,000-file worktree.

Run: .venv/bin/python bench/bench_git.py [--runs N]

Two identical worktrees are built: one driven by makima.server.git, one by the git CLI. After a
first checkpoint, each run modifies 100 files, adds 50 and deletes 20, checkpoints
(ours: snapshot + publish; git: `git add -A && git commit -q`), then restores the first checkpoint
(ours: restore; git: `git read-tree -u --reset <sha> && git clean -fdq`, which, unlike
`git checkout <sha> -- .`, also removes the files the second commit added). Medians are printed,
with the ratio ours/git (below 1 means we are faster). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import git_identity

from makima.server.git import compare, init_worktree, publish, restore, snapshot

FILES = 1000
MODIFIED, ADDED, DELETED = 100, 50, 20


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=True, text=True).stdout


def build_tree(root: Path) -> list[Path]:
    """1,000 source-like files of 200 B to 8 KB in 40 directories, 2 levels deep; some executable."""
    rng = random.Random(7)
    paths = []
    for i in range(FILES):
        path = root / f"pkg{i % 8}" / f"mod{i % 5}" / f"file_{i:04}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        line = f"def function_{i}(x):  # {'x' * rng.randrange(10, 60)}\n    return x * {i}\n"
        path.write_text(line * rng.randrange(3, 90))
        if i % 50 == 0:
            path.chmod(0o755)
        paths.append(path)
    (root / ".gitignore").write_text("__pycache__/\n*.log\n")
    return paths


def mutate(root: Path, run: int) -> None:
    """Modify 100 files, add 50 and delete 20, different ones on every run."""
    rng = random.Random(run)
    files = sorted(p for p in root.rglob("*.py") if ".git" not in p.parts and "added" not in p.parts)
    chosen = rng.sample(files, MODIFIED + DELETED)
    for path in chosen[:MODIFIED]:
        with path.open("a") as f:
            f.write(f"# run {run}\n")
    for path in chosen[MODIFIED:]:
        path.unlink()
    for n in range(ADDED):
        path = root / "added" / f"run{run}" / f"new_{n}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"NEW = {run * 1000 + n}\n" * 20)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return (time.perf_counter() - start) * 1000


def line(label: str, ours: list[float], theirs: list[float]) -> None:
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"{label:<44} ours {a:8.1f} ms   git {b:8.1f} ms   ours/git {a / b:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-git-") as tmp:
        base = Path(tmp)
        git_identity(base)
        ours_dir, git_dir = base / "ours", base / "git"
        init_worktree(ours_dir, branch="main")
        git_dir.mkdir()
        git(git_dir, "init", "-q", "-b", "main")
        build_tree(ours_dir)
        build_tree(git_dir)

        def ours_checkpoint() -> str:
            shot = snapshot(ours_dir, branch="main", message="checkpoint")
            publish(ours_dir, branch="main", snapshot=shot)
            return shot.commit_sha

        def git_checkpoint() -> None:
            git(git_dir, "add", "-A")
            git(git_dir, "commit", "-q", "-m", "checkpoint")

        first: dict[str, str] = {}
        first_ours = [timed(lambda: first.setdefault("ours", ours_checkpoint()))]
        first_git = [timed(git_checkpoint)]
        first["git"] = git(git_dir, "rev-parse", "HEAD").strip()

        checkpoint_ours: list[float] = []
        checkpoint_git: list[float] = []
        restore_ours: list[float] = []
        restore_git: list[float] = []
        compare_ours: list[float] = []
        compare_git: list[float] = []
        idle_ours: list[float] = []
        idle_git: list[float] = []
        for run in range(args.runs):
            mutate(ours_dir, run)
            mutate(git_dir, run)
            compare_ours.append(timed(lambda: compare(ours_dir, base_sha=first["ours"], target_sha=None)))
            compare_git.append(timed(lambda: git(git_dir, "status", "--porcelain")))
            checkpoint_ours.append(timed(ours_checkpoint))
            checkpoint_git.append(timed(git_checkpoint))
            idle_ours.append(timed(ours_checkpoint))
            idle_git.append(timed(lambda: git(git_dir, "commit", "-q", "--allow-empty", "-a", "-m", "idle")))
            restore_ours.append(timed(lambda: restore(ours_dir, commit_sha=first["ours"])))
            restore_git.append(
                timed(lambda: (git(git_dir, "read-tree", "-u", "--reset", first["git"]), git(git_dir, "clean", "-fdq")))
            )
        ours_tree = git(ours_dir, "write-tree").strip()
        git_tree = git(git_dir, "write-tree").strip()

        print(f"git layer vs git {git(base, 'version').split()[-1]}: {FILES} files; median of {args.runs} runs")
        print(f"each run: modify {MODIFIED}, add {ADDED}, delete {DELETED}; then checkpoint; then restore")
        line("first checkpoint (1,000 new files, 1 run)", first_ours, first_git)
        line("checkpoint: snapshot+publish / add -A+commit", checkpoint_ours, checkpoint_git)
        line("checkpoint of an unchanged worktree", idle_ours, idle_git)
        line("restore to first: restore / read-tree+clean", restore_ours, restore_git)
        line("changes vs worktree: compare / status", compare_ours, compare_git)
        same = "identical" if ours_tree == git_tree else f"DIFFERENT ({ours_tree} vs {git_tree})"
        print(f"restored index trees of both worktrees: {same}")


if __name__ == "__main__":
    main()
