"""CreateTask and ForkTask read nothing outside the workspace root (issue 10, part 2).

Each escape is a repository under the root whose `.git`, `gitdir:` file, alternates or objects lead
to a repository outside it. The call must fail before any object is read: no task, no worktree, and
the outside repository's file nowhere in the workspace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from makima.server.app import App
from makima.v1 import history_pb2, resources_pb2, task_fork_pb2
from tests.helpers import Api, create_task, fails

SECRET = "outside the workspace root\n"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def make_repo(path: Path, name: str, content: str) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / name).write_text(content)
    git(path, "add", "-A")
    git(path, "commit", "-qm", "one")
    return path


def from_repository(repository: str | Path) -> resources_pb2.WorktreeSpec:
    return resources_pb2.WorktreeSpec(source=resources_pb2.WorktreeSpec.SOURCE_REPOSITORY, repository=str(repository))


def workspace_files(root: Path) -> dict[str, str]:
    """Every regular file of the workspace's task worktrees outside .git, with its text."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root / "tasks"):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                found[str(path.relative_to(root))] = path.read_text(errors="replace")
    return found


@pytest.fixture
def root(server: App) -> Path:
    return Path(server.settings.workspace_root).resolve()


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A repository outside the workspace root holding `secret.txt`."""
    return make_repo(tmp_path / "outside", "secret.txt", SECRET)


@pytest.fixture
def repos(root: Path) -> Path:
    """A directory of this test's repositories under the workspace root."""
    path = root / "repos" / uuid.uuid4().hex
    path.mkdir(parents=True)
    return path


def symlinked_git(repos: Path, outside: Path) -> Path:
    evil = repos / "evil"
    evil.mkdir()
    os.symlink(outside / ".git", evil / ".git")
    return evil


def gitdir_file_absolute(repos: Path, outside: Path) -> Path:
    evil = repos / "evil"
    evil.mkdir()
    (evil / ".git").write_text(f"gitdir: {outside / '.git'}\n")
    return evil


def gitdir_file_relative(repos: Path, outside: Path) -> Path:
    evil = repos / "evil"
    evil.mkdir()
    (evil / ".git").write_text(f"gitdir: {os.path.relpath(outside / '.git', evil)}\n")
    return evil


def _borrowing(repos: Path, outside: Path, entry: Callable[[Path], str]) -> Path:
    """A repository inside whose HEAD is the outside commit, its objects found through alternates only."""
    evil = make_repo(repos / "evil", "inside.txt", "inside\n")
    objects = evil / ".git" / "objects"
    (objects / "info" / "alternates").write_text(entry(objects) + "\n")
    git(evil, "update-ref", "refs/heads/main", git(outside, "rev-parse", "HEAD").strip())
    return evil


def alternates_absolute(repos: Path, outside: Path) -> Path:
    return _borrowing(repos, outside, lambda _objects: str(outside / ".git" / "objects"))


def alternates_relative(repos: Path, outside: Path) -> Path:
    return _borrowing(repos, outside, lambda objects: os.path.relpath(outside / ".git" / "objects", objects))


def objects_symlinked(repos: Path, outside: Path) -> Path:
    evil = make_repo(repos / "evil", "inside.txt", "inside\n")
    shutil.rmtree(evil / ".git" / "objects")
    os.symlink(outside / ".git" / "objects", evil / ".git" / "objects")
    git(evil, "update-ref", "refs/heads/main", git(outside, "rev-parse", "HEAD").strip())
    return evil


ESCAPES = [
    symlinked_git,
    gitdir_file_absolute,
    gitdir_file_relative,
    alternates_absolute,
    alternates_relative,
    objects_symlinked,
]


@pytest.mark.parametrize("escape", ESCAPES, ids=lambda f: f.__name__)
async def test_create_task_from_a_repository_that_reads_outside_is_refused(
    api: Api, root: Path, repos: Path, outside: Path, escape: Callable[[Path, Path], Path]
) -> None:
    evil = escape(repos, outside)
    assert git(evil, "show", "HEAD:secret.txt") == SECRET  # git itself would read the outside file
    before = sorted(os.listdir(root / "tasks")) if (root / "tasks").exists() else []

    for repository in (evil, evil.relative_to(root)):
        failure = await fails(
            api.tasks.CreateTask(
                task_fork_pb2.CreateTaskRequest(name="t", worktree=from_repository(repository)), metadata=api.md
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            reason="PATH_ESCAPES_WORKSPACE",
        )
        assert failure.fields == ["worktree.repository"]

    after = sorted(os.listdir(root / "tasks")) if (root / "tasks").exists() else []
    assert after == before
    assert SECRET not in workspace_files(root).values()
    timeline = await api.history.ListTimeline(history_pb2.ListTimelineRequest(), metadata=api.md)
    assert list(timeline.events) == []  # no task was recorded


async def test_a_repository_inside_the_root_still_works(api: Api, root: Path, repos: Path) -> None:
    good = make_repo(repos / "good", "inside.txt", "inside\n")
    os.symlink("good", repos / "alias")  # links that stay inside are fine

    task = await create_task(api, worktree=from_repository((repos / "alias").relative_to(root)))

    worktree = Path(task.worktree_path)
    assert git(worktree, "ls-files").split() == ["inside.txt"]
    assert (worktree / "inside.txt").read_text() == "inside\n"
    alternates = (worktree / ".git" / "objects" / "info" / "alternates").read_text().splitlines()
    assert alternates == [str((good / ".git" / "objects").resolve())]
    assert git(worktree, "status", "--porcelain") == ""


async def test_a_fork_of_a_worktree_whose_alternates_were_turned_outside_is_refused(
    api: Api, root: Path, repos: Path, outside: Path
) -> None:
    """An agent edits its own worktree's alternates; forking that task must not follow them."""
    make_repo(repos / "good", "inside.txt", "inside\n")
    task = await create_task(api, worktree=from_repository(repos / "good"))
    listed = await api.history.ListCheckpoints(history_pb2.ListCheckpointsRequest(task_id=task.id), metadata=api.md)
    alternates = Path(task.worktree_path) / ".git" / "objects" / "info" / "alternates"
    alternates.write_text(alternates.read_text() + f"{outside / '.git' / 'objects'}\n")
    before = sorted(os.listdir(root / "tasks"))

    failure = await fails(
        api.tasks.ForkTask(
            task_fork_pb2.ForkTaskRequest(task_id=task.id, checkpoint_id=listed.checkpoints[0].id), metadata=api.md
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        reason="PATH_ESCAPES_WORKSPACE",
    )

    assert failure.metadata == {"part": "objects/info/alternates entry"}
    assert sorted(os.listdir(root / "tasks")) == before
    assert SECRET not in workspace_files(root).values()
