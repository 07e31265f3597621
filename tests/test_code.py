"""TaskForkService on real repositories: worktrees, checkpoints, compare, rewind, branch, fork, continue.

After each RPC the git command line must agree with what the RPC reported.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from pathlib import Path

import grpc
from sqlalchemy import update

from makima.server.app import App
from makima.server.store.models import Task
from makima.v1 import history_pb2, resources_pb2, task_fork_pb2
from tests.helpers import Api, append_messages, create_task, fails

EMPTY = resources_pb2.WorktreeSpec(source=resources_pb2.WorktreeSpec.SOURCE_EMPTY)


def git(cwd: str | Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def write(root: str | Path, files: dict[str, bytes | str]) -> None:
    for name, content in files.items():
        path = Path(root) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


def tree_of(root: str | Path) -> dict[str, bytes]:
    """Every file under root (outside .git), with its content."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = (
                path.read_bytes() if not path.is_symlink() else b"->" + os.readlink(path).encode()
            )
    return out


async def checkpoint(api: Api, task_id: str, message: str = "") -> resources_pb2.Checkpoint:
    response = await api.tasks.CreateCheckpoint(
        task_fork_pb2.CreateCheckpointRequest(task_id=task_id, message=message), metadata=api.md
    )
    return response.checkpoint


async def new_worktree_task(api: Api, files: dict[str, bytes | str] | None = None) -> tuple[resources_pb2.Task, Path]:
    task = await create_task(api, "coder", worktree=EMPTY)
    path = Path(task.worktree_path)
    if files:
        write(path, files)
    return task, path


async def test_empty_worktree_starts_with_an_initial_checkpoint(api: Api, server: App) -> None:
    task, path = await new_worktree_task(api)
    assert path.is_dir() and path.is_relative_to(Path(server.settings.workspace_root).resolve())
    assert task.branch == f"makima/{task.id}"
    assert git(path, "symbolic-ref", "HEAD") == f"refs/heads/{task.branch}"
    listed = await api.history.ListCheckpoints(history_pb2.ListCheckpointsRequest(task_id=task.id), metadata=api.md)
    (initial,) = listed.checkpoints
    assert git(path, "rev-parse", f"refs/heads/{task.branch}") == initial.commit_sha
    assert git(path, "status", "--porcelain") == ""


async def test_checkpoint_commits_the_whole_worktree(api: Api) -> None:
    task, path = await new_worktree_task(
        api, {"keep.txt": "v1", "gone.txt": "bye", ".gitignore": "*.log\nbuild/\n", "src/a.py": "print(1)\n"}
    )
    await append_messages(api, task.id, 0, "first", "second")
    first = await checkpoint(api, task.id, "first")
    assert (first.message, first.kind, first.message_count) == ("first", resources_pb2.CHECKPOINT_KIND_MANUAL, 2)
    assert git(path, "rev-parse", f"refs/heads/{task.branch}") == first.commit_sha
    assert git(path, "status", "--porcelain") == ""

    write(path, {"keep.txt": "v2", "new dir/ünïcode file.txt": "hé", "blob.bin": bytes(range(256)) * 4, "x.log": "no"})
    write(path, {"build/out.o": "ignored"})
    (path / "gone.txt").unlink()
    (path / "run.sh").write_text("#!/bin/sh\n")
    (path / "run.sh").chmod(0o755)
    (path / "link").symlink_to("keep.txt")
    (path / "empty-dir").mkdir()
    second = await checkpoint(api, task.id, "second")
    assert second.parent_commit_sha == first.commit_sha
    assert git(path, "status", "--porcelain", "--ignored=no") == ""
    files = [f for f in git(path, "ls-tree", "-r", "--name-only", "-z", second.commit_sha).split("\0") if f]
    assert sorted(files) == sorted(
        [".gitignore", "blob.bin", "keep.txt", "link", "new dir/ünïcode file.txt", "run.sh", "src/a.py"]
    )
    modes = {
        line.rsplit("\t", 1)[1]: line.split(" ", 1)[0]
        for line in git(path, "-c", "core.quotepath=off", "ls-tree", "-r", second.commit_sha).splitlines()
    }
    assert modes["run.sh"] == "100755" and modes["link"] == "120000"

    response = await api.tasks.CompareCheckpoints(
        task_fork_pb2.CompareCheckpointsRequest(
            task_id=task.id, base_checkpoint_id=first.id, target_checkpoint_id=second.id
        ),
        metadata=api.md,
    )
    ours = {(c.path, c.change_type) for c in response.changes}
    letters = {
        "A": task_fork_pb2.FILE_CHANGE_TYPE_ADDED,
        "M": task_fork_pb2.FILE_CHANGE_TYPE_MODIFIED,
        "D": task_fork_pb2.FILE_CHANGE_TYPE_DELETED,
    }
    theirs = {
        (line.split("\t", 1)[1], letters[line[0]])
        for line in git(
            path,
            "-c",
            "core.quotepath=off",
            "diff",
            "--name-status",
            "--no-renames",
            first.commit_sha,
            second.commit_sha,
        ).splitlines()
    }
    assert ours == theirs
    assert (response.base_commit_sha, response.target_commit_sha) == (first.commit_sha, second.commit_sha)

    (path / "keep.txt").write_text("v3")
    live = await api.tasks.CompareCheckpoints(
        task_fork_pb2.CompareCheckpointsRequest(task_id=task.id, base_checkpoint_id=second.id), metadata=api.md
    )
    assert [(c.path, c.change_type) for c in live.changes] == [("keep.txt", task_fork_pb2.FILE_CHANGE_TYPE_MODIFIED)]
    assert live.target_commit_sha == ""


async def test_unchanged_worktree_still_makes_a_checkpoint(api: Api) -> None:
    task, path = await new_worktree_task(api, {"a": "1"})
    one = await checkpoint(api, task.id)
    two = await checkpoint(api, task.id)
    assert one.commit_sha != two.commit_sha
    assert git(path, "rev-parse", f"{one.commit_sha}^{{tree}}") == git(path, "rev-parse", f"{two.commit_sha}^{{tree}}")


async def test_rewind_code_restores_the_tree_and_can_be_undone(api: Api) -> None:
    task, path = await new_worktree_task(api, {"a.txt": "old", "b.txt": "will be deleted", "d/c.txt": "c"})
    target = await checkpoint(api, task.id, "target")
    before = {"a.txt": b"new", "d/c.txt": b"c", "added.txt": b"added", "d/e/deep.txt": b"deep"}
    (path / "b.txt").unlink()
    write(path, before)

    response = await api.tasks.RewindTask(
        task_fork_pb2.RewindTaskRequest(task_id=task.id, checkpoint_id=target.id, mode=task_fork_pb2.REWIND_MODE_CODE),
        metadata=api.md,
    )
    assert response.code_rewound and not response.conversation_rewound
    safety = response.safety_checkpoint
    assert safety.kind == resources_pb2.CHECKPOINT_KIND_SAFETY
    assert tree_of(path) == {"a.txt": b"old", "b.txt": b"will be deleted", "d/c.txt": b"c"}
    subprocess.run(["git", "diff", "--quiet", target.commit_sha], cwd=path, check=True)
    subprocess.run(["git", "diff", "--cached", "--quiet", target.commit_sha], cwd=path, check=True)
    # History kept and linear: the branch is at a commit of the target's tree on top of the safety commit.
    head = response.rewind_checkpoint
    assert head.kind == resources_pb2.CHECKPOINT_KIND_REWIND and head.parent_commit_sha == safety.commit_sha
    assert git(path, "rev-parse", f"refs/heads/{task.branch}") == head.commit_sha
    assert git(path, "rev-parse", f"{head.commit_sha}^{{tree}}") == git(
        path, "rev-parse", f"{target.commit_sha}^{{tree}}"
    )
    assert git(path, "status", "--porcelain") == ""
    assert not (path / "d" / "e").exists()

    undo = await api.tasks.RewindTask(
        task_fork_pb2.RewindTaskRequest(task_id=task.id, checkpoint_id=safety.id, mode=task_fork_pb2.REWIND_MODE_CODE),
        metadata=api.md,
    )
    assert undo.code_rewound
    assert tree_of(path) == before


async def test_rewind_conversation_keeps_what_it_removes(api: Api) -> None:
    task, _ = await new_worktree_task(api)
    await append_messages(api, task.id, 0, "m0", "m1")
    target = await checkpoint(api, task.id)
    await append_messages(api, task.id, 2, "m2", "m3")
    response = await api.tasks.RewindTask(
        task_fork_pb2.RewindTaskRequest(
            task_id=task.id, checkpoint_id=target.id, mode=task_fork_pb2.REWIND_MODE_CONVERSATION
        ),
        metadata=api.md,
    )
    assert response.conversation_rewound and not response.code_rewound
    assert response.task.message_count == 2
    now = await api.history.GetTaskConversation(
        history_pb2.GetTaskConversationRequest(task_id=task.id), metadata=api.md
    )
    assert [m.content for m in now.messages] == ["m0", "m1"]
    kept = await api.history.GetTaskConversation(
        history_pb2.GetTaskConversationRequest(task_id=task.id, snapshot_id=response.conversation_snapshot.id),
        metadata=api.md,
    )
    assert [m.content for m in kept.messages] == ["m0", "m1", "m2", "m3"]
    # The conversation goes on from the kept point.
    await append_messages(api, task.id, 2, "m2'")
    now = await api.history.GetTaskConversation(
        history_pb2.GetTaskConversationRequest(task_id=task.id), metadata=api.md
    )
    assert [m.content for m in now.messages] == ["m0", "m1", "m2'"]


async def test_rewind_is_refused_while_running_and_validates(api: Api, other_api: Api, server: App) -> None:
    task, _ = await new_worktree_task(api)
    cp = await checkpoint(api, task.id)
    request = task_fork_pb2.RewindTaskRequest(task_id=task.id, checkpoint_id=cp.id, mode=task_fork_pb2.REWIND_MODE_BOTH)
    assert (
        await fails(
            api.tasks.RewindTask(
                task_fork_pb2.RewindTaskRequest(task_id=task.id, checkpoint_id=cp.id), metadata=api.md
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    ).fields == ["mode"]
    await fails(other_api.tasks.RewindTask(request, metadata=other_api.md), grpc.StatusCode.NOT_FOUND)
    other_task, _ = await new_worktree_task(api)
    await fails(
        api.tasks.RewindTask(
            task_fork_pb2.RewindTaskRequest(task_id=other_task.id, checkpoint_id=cp.id, mode=1), metadata=api.md
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    async with server.runtime.db.write() as session:
        await session.execute(update(Task).where(Task.id == uuid.UUID(task.id)).values(status="running"))
    await fails(
        api.tasks.RewindTask(request, metadata=api.md), grpc.StatusCode.FAILED_PRECONDITION, reason="ALREADY_RUNNING"
    )
    plain = await create_task(api, "no worktree")
    await fails(
        api.tasks.CreateCheckpoint(task_fork_pb2.CreateCheckpointRequest(task_id=plain.id), metadata=api.md),
        grpc.StatusCode.FAILED_PRECONDITION,
        reason="NO_WORKTREE",
    )


async def test_branch_at_a_checkpoint(api: Api) -> None:
    task, path = await new_worktree_task(api, {"a": "1"})
    cp = await checkpoint(api, task.id)
    response = await api.tasks.CreateBranch(
        task_fork_pb2.CreateBranchRequest(task_id=task.id, checkpoint_id=cp.id, branch_name="feature/try-2"),
        metadata=api.md,
    )
    assert (response.ref, response.commit_sha) == ("refs/heads/feature/try-2", cp.commit_sha)
    assert git(path, "rev-parse", "refs/heads/feature/try-2") == cp.commit_sha
    await fails(
        api.tasks.CreateBranch(
            task_fork_pb2.CreateBranchRequest(task_id=task.id, checkpoint_id=cp.id, branch_name="feature/try-2"),
            metadata=api.md,
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    for bad in ("a..b", "-x", "has space", "x.lock", "ends/"):
        failure = await fails(
            api.tasks.CreateBranch(
                task_fork_pb2.CreateBranchRequest(task_id=task.id, checkpoint_id=cp.id, branch_name=bad),
                metadata=api.md,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert failure.fields == ["branch_name"], bad


async def test_fork_from_a_checkpoint_and_from_a_message(api: Api) -> None:
    task, path = await new_worktree_task(api, {"a": "at checkpoint"})
    await append_messages(api, task.id, 0, "m0", "m1")
    cp = await checkpoint(api, task.id)
    write(path, {"a": "later"})
    await append_messages(api, task.id, 2, "m2")
    await checkpoint(api, task.id)

    fork = (
        await api.tasks.ForkTask(task_fork_pb2.ForkTaskRequest(task_id=task.id, checkpoint_id=cp.id), metadata=api.md)
    ).task
    assert (fork.forked_from_task_id, fork.forked_from_checkpoint_id, fork.forked_at_message_index) == (
        task.id,
        cp.id,
        2,
    )
    fork_path = Path(fork.worktree_path)
    assert tree_of(fork_path) == {"a": b"at checkpoint"}
    assert git(fork_path, "rev-parse", "HEAD") == cp.commit_sha  # no commit added: the branch is at the source
    assert (fork_path / ".git" / "objects" / "info" / "alternates").read_text().strip()
    conversation = await api.history.GetTaskConversation(
        history_pb2.GetTaskConversationRequest(task_id=fork.id), metadata=api.md
    )
    assert [m.content for m in conversation.messages] == ["m0", "m1"]

    by_message = (
        await api.tasks.ForkTask(
            task_fork_pb2.ForkTaskRequest(task_id=task.id, message_index=0, branch_name="early"), metadata=api.md
        )
    ).task
    assert by_message.forked_at_message_index == 1 and by_message.branch == "early"
    conversation = await api.history.GetTaskConversation(
        history_pb2.GetTaskConversationRequest(task_id=by_message.id), metadata=api.md
    )
    assert [m.content for m in conversation.messages] == ["m0"]
    assert tree_of(by_message.worktree_path) == {}  # the initial (empty) checkpoint is the newest at message 0

    failure = await fails(
        api.tasks.ForkTask(task_fork_pb2.ForkTaskRequest(task_id=task.id, message_index=3), metadata=api.md),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert failure.fields == ["message_index"]
    await fails(
        api.tasks.ForkTask(task_fork_pb2.ForkTaskRequest(task_id=task.id), metadata=api.md),
        grpc.StatusCode.INVALID_ARGUMENT,
    )

    lineage = await api.history.GetTaskLineage(history_pb2.GetTaskLineageRequest(task_id=fork.id), metadata=api.md)
    assert {(n.task.id, n.relation) for n in lineage.nodes} == {
        (task.id, history_pb2.LINEAGE_RELATION_ROOT),
        (fork.id, history_pb2.LINEAGE_RELATION_FORK),
        (by_message.id, history_pb2.LINEAGE_RELATION_FORK),
    }


async def test_continue_inherits_the_live_worktree(api: Api) -> None:
    task, path = await new_worktree_task(api, {"done.txt": "work so far"})
    write(path, {"wip.txt": "not checkpointed yet"})
    response = await api.tasks.ContinueTask(
        task_fork_pb2.ContinueTaskRequest(task_id=task.id, instructions="finish it"), metadata=api.md
    )
    assert response.source_checkpoint.kind == resources_pb2.CHECKPOINT_KIND_CONTINUATION
    assert git(path, "rev-parse", f"refs/heads/{task.branch}") == response.source_checkpoint.commit_sha
    new = response.task
    assert (new.continued_from_task_id, new.instructions) == (task.id, "finish it")
    assert tree_of(new.worktree_path) == {"done.txt": b"work so far", "wip.txt": b"not checkpointed yet"}


async def test_resume_from_checkpoint_rewinds_both_and_puts_the_task_back(api: Api, server: App) -> None:
    task, path = await new_worktree_task(api, {"f": "good"})
    await append_messages(api, task.id, 0, "ok")
    cp = await checkpoint(api, task.id)
    write(path, {"f": "broken"})
    await append_messages(api, task.id, 1, "went wrong")
    async with server.runtime.db.write() as session:
        await session.execute(update(Task).where(Task.id == uuid.UUID(task.id)).values(status="interrupted"))
    response = await api.tasks.ResumeTaskFromCheckpoint(
        task_fork_pb2.ResumeTaskFromCheckpointRequest(task_id=task.id, checkpoint_id=cp.id), metadata=api.md
    )
    assert response.task.status == resources_pb2.TASK_STATUS_PENDING
    assert response.resumed_from.checkpoint_id == cp.id
    assert response.resumed_from.previous_status == resources_pb2.TASK_STATUS_INTERRUPTED
    assert response.task.message_count == 1
    assert tree_of(path) == {"f": b"good"}
    assert response.safety_checkpoint.commit_sha and response.conversation_snapshot.message_count == 2


async def test_worktree_from_a_repository_under_the_root(api: Api, server: App, tmp_path: Path) -> None:
    root = Path(server.settings.workspace_root).resolve()
    source = root / "sources" / uuid.uuid4().hex
    source.mkdir(parents=True)
    git(source, "init", "-q", "-b", "main")
    write(source, {"readme": "v1"})
    git(source, "add", "-A")
    git(source, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    git(source, "tag", "v1")
    write(source, {"readme": "v2"})
    git(source, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "two")

    spec = resources_pb2.WorktreeSpec(
        source=resources_pb2.WorktreeSpec.SOURCE_REPOSITORY, repository=str(source), ref="v1"
    )
    task = await create_task(api, worktree=spec)
    assert tree_of(task.worktree_path) == {"readme": b"v1"}

    outside = tmp_path / "outside"
    outside.mkdir()
    git(outside, "init", "-q")
    for repository, ref, field in (
        (str(outside), "", "worktree.repository"),
        ("../..", "", "worktree.repository"),
        (str(source), "nope", "worktree.ref"),
    ):
        spec = resources_pb2.WorktreeSpec(
            source=resources_pb2.WorktreeSpec.SOURCE_REPOSITORY, repository=repository, ref=ref
        )
        failure = await fails(
            api.tasks.CreateTask(task_fork_pb2.CreateTaskRequest(name="t", worktree=spec), metadata=api.md),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert failure.fields == [field], repository
    # A failed creation leaves no worktree behind.
    leftovers = {p.name for p in (root / "tasks").iterdir()} - {Path(task.worktree_path).name}
    assert all((root / "tasks" / name / ".git").is_dir() for name in leftovers)


async def test_concurrent_checkpoints_on_one_task_serialize(api: Api) -> None:
    task, path = await new_worktree_task(api, {"a": "1"})
    made = await asyncio.gather(*(checkpoint(api, task.id, f"c{i}") for i in range(8)))
    chain = git(path, "rev-list", f"refs/heads/{task.branch}").splitlines()
    assert set(c.commit_sha for c in made) <= set(chain)
    assert len(chain) == 9  # the initial checkpoint and the eight, one after the other
    subprocess.run(["git", "fsck", "--strict"], cwd=path, check=True, capture_output=True)
