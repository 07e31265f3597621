"""Errors that tell the truth: each failure of the issue answers with what it is, through the stubs.

Undecodable request bytes, file names that are not UTF-8, over-long names that would become paths, a
full or read-only workspace (a real tmpfs), and a database that refuses connections, is shutting down
or is gone (a real PostgreSQL). Each server-side failure is logged once with its cause.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc import aio

from makima.server.app import App, start
from makima.server.config import Settings
from makima.v1 import daemon_pb2, history_pb2, resources_pb2, task_fork_pb2
from tests.conftest import new_api
from tests.helpers import Api, create_task, fails

EMPTY = resources_pb2.WorktreeSpec(source=resources_pb2.WorktreeSpec.SOURCE_EMPTY)
GARBAGE = [
    pytest.param(b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", id="truncated-length"),
    pytest.param(b"\x0a\x02\xff\xfe", id="string-not-utf8"),
    pytest.param(b"\xff", id="bad-tag"),
]


def _errors_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# -- request bytes that are not a message ----------------------------------------------------------


@pytest.mark.parametrize("garbage", GARBAGE)
async def test_undecodable_request_bytes_are_invalid_argument_without_a_traceback(
    api: Api, caplog: pytest.LogCaptureFixture, garbage: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    unary = api.channel.unary_unary("/makima.v1.SupervisorService/GetContract")
    failure = await fails(unary(garbage, metadata=api.md), grpc.StatusCode.INVALID_ARGUMENT, reason="MALFORMED_REQUEST")
    assert failure.metadata == {"method": "/makima.v1.SupervisorService/GetContract"}

    server_stream = api.channel.unary_stream("/makima.v1.HistoryService/StreamTimeline")

    async def first() -> object:
        async for item in server_stream(garbage, metadata=api.md):
            return item
        return None

    await fails(first(), grpc.StatusCode.INVALID_ARGUMENT, reason="MALFORMED_REQUEST")
    assert _errors_logged(caplog) == []


async def test_an_undecodable_message_in_a_client_stream_ends_it_with_invalid_argument(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    """The messages before it are stored (each in its own transaction, as documented); the bad one is refused."""
    caplog.set_level(logging.DEBUG)
    task = await create_task(api)
    good = daemon_pb2.RecordTaskEventsRequest(
        task_id=task.id, events=[resources_pb2.NewTaskEvent(sequence=1, kind=resources_pb2.TASK_EVENT_KIND_OUTPUT)]
    ).SerializeToString()
    stream = api.channel.stream_unary("/makima.v1.DaemonService/RecordTaskEvents")

    async def messages() -> AsyncIterator[bytes]:
        yield good
        yield b"\x0a\x02\xff\xfe"

    await fails(stream(messages(), metadata=api.md), grpc.StatusCode.INVALID_ARGUMENT, reason="MALFORMED_REQUEST")
    assert _errors_logged(caplog) == []
    listed = await api.history.ListTaskEvents(history_pb2.ListTaskEventsRequest(task_id=task.id), metadata=api.md)
    assert [e.sequence for e in listed.events] == [1]


# -- file names that are not UTF-8 ---------------------------------------------------------------------


async def _initial_checkpoint(api: Api, task_id: str) -> resources_pb2.Checkpoint:
    listed = await api.history.ListCheckpoints(history_pb2.ListCheckpointsRequest(task_id=task_id), metadata=api.md)
    return listed.checkpoints[-1]


async def test_a_file_name_that_is_not_utf8_is_carried_exactly(api: Api) -> None:
    task = await create_task(api, worktree=EMPTY)
    root = os.fsencode(task.worktree_path)
    raw = b"caf\xe9-\xff.txt"
    with open(os.path.join(root, raw), "wb") as f:
        f.write(b"latin-1 name")
    Path(task.worktree_path, "naïve.txt").write_text("a UTF-8 name")
    initial = await _initial_checkpoint(api, task.id)
    expected = [
        task_fork_pb2.FileChange(
            path="caf\ufffd-\ufffd.txt", path_bytes=raw, change_type=task_fork_pb2.FILE_CHANGE_TYPE_ADDED
        ),
        task_fork_pb2.FileChange(path="naïve.txt", change_type=task_fork_pb2.FILE_CHANGE_TYPE_ADDED),
    ]

    live = await api.tasks.CompareCheckpoints(
        task_fork_pb2.CompareCheckpointsRequest(task_id=task.id, base_checkpoint_id=initial.id), metadata=api.md
    )
    assert list(live.changes) == expected

    made = await api.tasks.CreateCheckpoint(task_fork_pb2.CreateCheckpointRequest(task_id=task.id), metadata=api.md)
    between = await api.tasks.CompareCheckpoints(
        task_fork_pb2.CompareCheckpointsRequest(
            task_id=task.id, base_checkpoint_id=initial.id, target_checkpoint_id=made.checkpoint.id
        ),
        metadata=api.md,
    )
    assert list(between.changes) == expected

    rewound = await api.tasks.RewindTask(
        task_fork_pb2.RewindTaskRequest(task_id=task.id, checkpoint_id=initial.id, mode=task_fork_pb2.REWIND_MODE_CODE),
        metadata=api.md,
    )
    assert rewound.code_rewound
    assert not os.path.exists(os.path.join(root, raw))
    back = await api.tasks.CompareCheckpoints(
        task_fork_pb2.CompareCheckpointsRequest(
            task_id=task.id, base_checkpoint_id=initial.id, target_checkpoint_id=rewound.safety_checkpoint.id
        ),
        metadata=api.md,
    )
    assert list(back.changes) == expected


# -- names that become paths ---------------------------------------------------------------------------


async def _task_with_checkpoint(api: Api) -> tuple[resources_pb2.Task, resources_pb2.Checkpoint]:
    task = await create_task(api, worktree=EMPTY)
    await api.daemon.AppendMessages(
        daemon_pb2.AppendMessagesRequest(
            task_id=task.id, messages=[resources_pb2.NewConversationMessage(role=resources_pb2.MESSAGE_ROLE_USER)]
        ),
        metadata=api.md,
    )
    return task, await _initial_checkpoint(api, task.id)


async def _timeline_length(api: Api) -> int:
    return len((await api.history.ListTimeline(history_pb2.ListTimelineRequest(), metadata=api.md)).events)


@pytest.mark.parametrize(
    ("branch_name", "reason"),
    [
        pytest.param("b" * 10_000, "LIMIT_EXCEEDED", id="10000-characters"),
        pytest.param("€" * 100, "INVALID_BRANCH_NAME", id="300-bytes-in-100-characters"),
    ],
)
async def test_an_over_long_branch_name_is_invalid_argument_and_writes_nothing(
    api: Api, branch_name: str, reason: str
) -> None:
    task, checkpoint = await _task_with_checkpoint(api)
    before = await _timeline_length(api)
    fork = task_fork_pb2.ForkTaskRequest(task_id=task.id, checkpoint_id=checkpoint.id, branch_name=branch_name)
    failure = await fails(api.tasks.ForkTask(fork, metadata=api.md), grpc.StatusCode.INVALID_ARGUMENT, reason=reason)
    assert failure.fields == ["branch_name"]
    branch = task_fork_pb2.CreateBranchRequest(task_id=task.id, checkpoint_id=checkpoint.id, branch_name=branch_name)
    failure = await fails(
        api.tasks.CreateBranch(branch, metadata=api.md), grpc.StatusCode.INVALID_ARGUMENT, reason=reason
    )
    assert failure.fields == ["branch_name"]
    assert await _timeline_length(api) == before


async def test_a_branch_name_of_250_bytes_works(api: Api) -> None:
    task, checkpoint = await _task_with_checkpoint(api)
    name = "x/" + "y" * 248
    made = await api.tasks.CreateBranch(
        task_fork_pb2.CreateBranchRequest(task_id=task.id, checkpoint_id=checkpoint.id, branch_name=name),
        metadata=api.md,
    )
    assert made.ref == f"refs/heads/{name}"
    forked = await api.tasks.ForkTask(
        task_fork_pb2.ForkTaskRequest(task_id=task.id, checkpoint_id=checkpoint.id, branch_name="z" * 250),
        metadata=api.md,
    )
    assert forked.task.branch == "z" * 250


async def test_a_repository_path_too_long_for_the_file_system_is_invalid_argument(api: Api) -> None:
    source = await create_task(api, worktree=EMPTY)
    for repository in ("r" * 300, f"{source.worktree_path}/{'d' * 256}", "/".join(["d" * 200] * 20)):
        spec = resources_pb2.WorktreeSpec(source=resources_pb2.WorktreeSpec.SOURCE_REPOSITORY, repository=repository)
        failure = await fails(
            api.tasks.CreateTask(task_fork_pb2.CreateTaskRequest(name="t", worktree=spec), metadata=api.md),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert failure.fields == ["worktree.repository"]
    spec = resources_pb2.WorktreeSpec(
        source=resources_pb2.WorktreeSpec.SOURCE_REPOSITORY, repository=source.worktree_path, ref="€" * 250
    )
    failure = await fails(
        api.tasks.CreateTask(task_fork_pb2.CreateTaskRequest(name="t", worktree=spec), metadata=api.md),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert failure.fields == ["worktree.ref"]


# -- a full or read-only workspace (a real tmpfs) --------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (needs root with CAP_SYS_ADMIN, as in CI here)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        message = f"cannot mount a tmpfs (needs root with CAP_SYS_ADMIN): {mounted.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


@contextlib.asynccontextmanager
async def serving(database_url: str, workspace_root: Path) -> AsyncIterator[tuple[App, Api]]:
    app = await start(
        Settings(listen="127.0.0.1:0", database_url=database_url, workspace_root=workspace_root, shutdown_grace=1.0)
    )
    try:
        async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield app, await new_api(app, channel)
    finally:
        await app.stop(1.0)


async def _checkpoint_count(api: Api, task_id: str) -> int:
    listed = await api.history.ListCheckpoints(history_pb2.ListCheckpointsRequest(task_id=task_id), metadata=api.md)
    return len(listed.checkpoints)


def _fill(directory: Path) -> Path:
    """Write a file until the file system is full."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


async def test_a_full_workspace_is_resource_exhausted_naming_it(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with tmpfs(tmp_path / "ws", "4m") as root:
        async with serving(database_url, root) as (_, api):
            task = await create_task(api, worktree=EMPTY)
            Path(task.worktree_path, "data.bin").write_bytes(os.urandom(512 * 1024))
            filler = _fill(root)
            caplog.clear()
            request = task_fork_pb2.CreateCheckpointRequest(task_id=task.id)
            failure = await fails(
                api.tasks.CreateCheckpoint(request, metadata=api.md),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                reason="WORKSPACE_FULL",
            )
            assert failure.metadata["workspace_root"] == str(root.resolve())
            assert str(root.resolve()) in failure.message
            assert await _checkpoint_count(api, task.id) == 1  # nothing recorded
            logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert [(r.name, r.exc_info is not None) for r in logged] == [("makima.server.domain.workspace", True)]

            filler.unlink()
            await api.tasks.CreateCheckpoint(request, metadata=api.md)
            assert await _checkpoint_count(api, task.id) == 2


async def test_a_read_only_workspace_is_failed_precondition_naming_the_path(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Root ignores file modes, so the workspace is made read-only the way root cannot bypass: EROFS.
    (EACCES, for a server not running as root, takes the same path: it is mapped with EROFS.)"""
    with tmpfs(tmp_path / "ws", "4m") as root:
        async with serving(database_url, root) as (_, api):
            task = await create_task(api, worktree=EMPTY)
            before = await _timeline_length(api)
            remount(root, "ro")
            try:
                caplog.clear()
                failure = await fails(
                    api.tasks.CreateCheckpoint(task_fork_pb2.CreateCheckpointRequest(task_id=task.id), metadata=api.md),
                    grpc.StatusCode.FAILED_PRECONDITION,
                    reason="WORKSPACE_NOT_WRITABLE",
                )
                assert failure.metadata["path"].startswith(task.worktree_path)
                assert failure.metadata["path"] in failure.message
                failure = await fails(
                    api.tasks.CreateTask(task_fork_pb2.CreateTaskRequest(name="t", worktree=EMPTY), metadata=api.md),
                    grpc.StatusCode.FAILED_PRECONDITION,
                    reason="WORKSPACE_NOT_WRITABLE",
                )
                assert failure.metadata["path"].startswith(str(root.resolve()))
                assert await _timeline_length(api) == before  # no task, no checkpoint
                logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
                assert [r.name for r in logged] == ["makima.server.domain.workspace"] * 2
                assert all(r.exc_info for r in logged)
            finally:
                remount(root, "rw")
            await api.tasks.CreateCheckpoint(task_fork_pb2.CreateCheckpointRequest(task_id=task.id), metadata=api.md)
            assert await _checkpoint_count(api, task.id) == 2
