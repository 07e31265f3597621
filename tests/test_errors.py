"""Errors that tell the truth: each failure of the issue answers with what it is, through the stubs.

Undecodable request bytes, file names that are not UTF-8, over-long names that would become paths, a
full or read-only workspace (a real tmpfs), and a database that refuses connections, is shutting down
or is gone (a real PostgreSQL). Each server-side failure is logged once with its cause.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from makima.v1 import daemon_pb2, history_pb2, resources_pb2, task_fork_pb2
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
