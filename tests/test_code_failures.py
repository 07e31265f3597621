"""When the database write of a code operation fails, git is left unreferenced or put back.

The use cases run through the real Runtime on the real database and repositories; the body then
fails the way a failed commit would (an exception before the transaction commits).
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from makima.server.app import App
from makima.server.domain import code, tasks
from makima.server.domain.runtime import Principal, Tx
from makima.server.domain.worktrees import WorktreeRequest
from makima.v1 import history_pb2, resources_pb2, task_fork_pb2
from tests.helpers import Api, create_task

EMPTY = resources_pb2.WorktreeSpec(source=resources_pb2.WorktreeSpec.SOURCE_EMPTY)


class WriteFailed(Exception):
    pass


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


async def checkpoints_of(api: Api, task_id: str) -> list[str]:
    listed = await api.history.ListCheckpoints(history_pb2.ListCheckpointsRequest(task_id=task_id), metadata=api.md)
    return [c.commit_sha for c in listed.checkpoints]


def principal(api: Api) -> Principal:
    return Principal(owner_id=api.owner_id, api_key_id=uuid.uuid4())


async def test_a_failed_checkpoint_leaves_its_commit_unreferenced(api: Api, server: App) -> None:
    task = await create_task(api, worktree=EMPTY)
    path = Path(task.worktree_path)
    (path / "f").write_text("work")
    before_rows, before_head = await checkpoints_of(api, task.id), git(path, "rev-parse", f"refs/heads/{task.branch}")
    made: list[str] = []

    async def body(tx: Tx) -> None:
        checkpoint = await code.create_checkpoint(
            tx, code.CreateCheckpointInput(task_id=uuid.UUID(task.id), message="doomed")
        )
        made.append(checkpoint.commit_sha)
        raise WriteFailed

    with pytest.raises(WriteFailed):
        await server.runtime.mutate(principal(api), body)
    assert await checkpoints_of(api, task.id) == before_rows  # no row
    assert git(path, "rev-parse", f"refs/heads/{task.branch}") == before_head  # the branch did not move
    assert git(path, "cat-file", "-t", made[0]) == "commit"  # the commit exists...
    assert made[0] not in git(path, "for-each-ref", "--format=%(objectname)")  # ...but no ref names it


async def test_a_failed_rewind_puts_the_worktree_back(api: Api, server: App) -> None:
    task = await create_task(api, worktree=EMPTY)
    path = Path(task.worktree_path)
    (path / "f").write_text("old")
    target = (
        await api.tasks.CreateCheckpoint(task_fork_pb2.CreateCheckpointRequest(task_id=task.id), metadata=api.md)
    ).checkpoint
    (path / "f").write_text("new")
    (path / "extra").write_text("added since")
    before_rows, before_head = await checkpoints_of(api, task.id), git(path, "rev-parse", f"refs/heads/{task.branch}")

    async def body(tx: Tx) -> None:
        await code.rewind_task(
            tx,
            code.RewindTaskInput(
                task_id=uuid.UUID(task.id), checkpoint_id=uuid.UUID(target.id), mode=code.RewindMode.BOTH
            ),
        )
        assert (path / "f").read_text() == "old"  # the rewind happened inside the transaction
        raise WriteFailed

    with pytest.raises(WriteFailed):
        await server.runtime.mutate(principal(api), body)
    assert (path / "f").read_text() == "new"
    assert (path / "extra").read_text() == "added since"
    assert await checkpoints_of(api, task.id) == before_rows
    assert git(path, "rev-parse", f"refs/heads/{task.branch}") == before_head


async def test_a_failed_task_creation_removes_its_worktree(api: Api, server: App) -> None:
    created: list[Path] = []

    async def body(tx: Tx) -> None:
        task = await tasks.create_task(tx, tasks.CreateTaskInput(name="doomed", worktree=WorktreeRequest()))
        created.append(Path(task.worktree_path or ""))
        assert (created[0] / ".git").is_dir()
        raise WriteFailed

    with pytest.raises(WriteFailed):
        await server.runtime.mutate(principal(api), body)
    assert not created[0].exists()
