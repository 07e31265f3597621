"""The git command line as the oracle of the git layer tests, and small file helpers."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from makima.server.git import Snapshot, publish, snapshot


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run git in `cwd` and return its stdout; fails the test on a non-zero exit."""
    result = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, env={**os.environ, **(env or {})}, check=False
    )
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr.decode(errors='replace')}"
    return result.stdout.decode("utf-8", "surrogateescape")


def git_ok(cwd: Path, *args: str) -> bool:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False).returncode == 0


def git_add_all_tree(worktree: Path, scratch: Path) -> str:
    """The tree `git add -A` makes of `worktree`, through a separate repository and index.

    Our own .git/info/exclude is not seen by this oracle; the tests use .gitignore files.
    """
    git_dir = scratch / "oracle.git"
    if not git_dir.exists():
        git(scratch, "init", "-q", "--bare", str(git_dir))
    env = {"GIT_DIR": str(git_dir), "GIT_WORK_TREE": str(worktree), "GIT_INDEX_FILE": str(scratch / "oracle.index")}
    git(worktree, "add", "-A", env=env)
    return git(worktree, "write-tree", env=env).strip()


def checkpoint(worktree: Path, *, branch: str = "main", message: str = "checkpoint") -> Snapshot:
    shot = snapshot(worktree, branch=branch, message=message)
    publish(worktree, branch=branch, snapshot=shot)
    return shot


def status(worktree: Path) -> str:
    return git(worktree, "status", "--porcelain")


def ls_files(worktree: Path) -> list[str]:
    """`git ls-files -s` as 'mode sha path' lines (the stage column dropped)."""
    out = git(worktree, "ls-files", "-s", "-z")
    return sorted(
        f"{meta.split()[0]} {meta.split()[1]} {path}"
        for meta, _, path in (e.partition("\t") for e in out.split("\0") if e)
    )


def ls_tree(worktree: Path, commit: str) -> list[str]:
    """`git ls-tree -r` of `commit` as 'mode sha path' lines."""
    out = git(worktree, "ls-tree", "-r", "-z", commit)
    return sorted(
        f"{meta.split()[0]} {meta.split()[2]} {path}"
        for meta, _, path in (e.partition("\t") for e in out.split("\0") if e)
    )


def write(path: Path, data: str | bytes, *, mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    if mode is not None:
        path.chmod(mode)
    return path


def age(root: Path, seconds: float = 30.0) -> None:
    """Move every mtime under `root` (outside .git) into the past, as if written long ago.

    A file written within the last instants cannot have its stat trusted (racy git); tests of the
    stat cache age their files first.
    """
    stamp = time.time() - seconds
    for dirpath, dirnames, filenames in os.walk(root):
        if ".git" in dirnames:
            dirnames.remove(".git")
        for name in filenames:
            os.utime(os.path.join(dirpath, name), (stamp, stamp), follow_symlinks=False)


def files_on_disk(root: Path) -> dict[str, bytes]:
    """Every file and symlink under `root` (outside .git): path -> content or 'link:'+target."""
    found: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if ".git" in dirnames:
            dirnames.remove(".git")
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            found[rel] = b"link:" + os.fsencode(os.readlink(full)) if os.path.islink(full) else Path(full).read_bytes()
    return found
