"""Factories and assertions shared by the tests."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status

from makima.v1 import (
    daemon_pb2,
    daemon_pb2_grpc,
    history_pb2_grpc,
    resources_pb2,
    supervisor_pb2,
    supervisor_pb2_grpc,
    task_fork_pb2,
    task_fork_pb2_grpc,
)

T = TypeVar("T")


def free_port() -> int:
    """A TCP port nobody listens on right now, for a server started as another process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Api:
    """The four makima.v1 stubs on one channel, with one owner's API key."""

    channel: aio.Channel
    owner_id: uuid.UUID
    key: str
    history: history_pb2_grpc.HistoryServiceStub = field(init=False)
    supervisor: supervisor_pb2_grpc.SupervisorServiceStub = field(init=False)
    tasks: task_fork_pb2_grpc.TaskForkServiceStub = field(init=False)
    daemon: daemon_pb2_grpc.DaemonServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.history = history_pb2_grpc.HistoryServiceStub(self.channel)
        self.supervisor = supervisor_pb2_grpc.SupervisorServiceStub(self.channel)
        self.tasks = task_fork_pb2_grpc.TaskForkServiceStub(self.channel)
        self.daemon = daemon_pb2_grpc.DaemonServiceStub(self.channel)

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying the key."""
        return (("authorization", f"Bearer {self.key}"),)


async def create_contract(api: Api, name: str = "contract", **kw: Any) -> Any:
    response = await api.supervisor.CreateContract(
        supervisor_pb2.CreateContractRequest(name=name, **kw), metadata=api.md
    )
    return response.contract


async def create_task(api: Api, name: str = "task", **kw: Any) -> Any:
    response = await api.tasks.CreateTask(task_fork_pb2.CreateTaskRequest(name=name, **kw), metadata=api.md)
    return response.task


@dataclass
class Failure:
    """A failed call: its code, message and decoded google.rpc details."""

    code: grpc.StatusCode
    message: str
    reason: str
    metadata: dict[str, str]
    fields: list[str]


async def fails(call: Awaitable[Any], code: grpc.StatusCode, *, reason: str | None = None) -> Failure:
    """Await `call`, assert it fails with `code` (and `reason`), and return the decoded failure."""
    with pytest.raises(aio.AioRpcError) as caught:
        await call
    err = caught.value
    assert err.code() == code, f"expected {code.name}, got {err.code().name}: {err.details()}"
    status = rpc_status.from_call(err)
    assert status is not None, "the error carries no google.rpc.Status"
    info = error_details_pb2.ErrorInfo()
    bad = error_details_pb2.BadRequest()
    found_info = False
    for detail in status.details:
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
            found_info = True
        elif detail.Is(bad.DESCRIPTOR):
            detail.Unpack(bad)
    assert found_info, "the error carries no ErrorInfo"
    assert info.domain == "makima"
    if reason is not None:
        assert info.reason == reason, f"expected reason {reason}, got {info.reason}"
    return Failure(
        code=err.code(),
        message=err.details() or "",
        reason=info.reason,
        metadata=dict(info.metadata),
        fields=[v.field for v in bad.field_violations],
    )


async def record_events(api: Api, task_id: str, *batches: list[tuple[int, int]]) -> Any:
    """Stream batches of (sequence, kind) events for a task through RecordTaskEvents."""

    async def messages() -> Any:
        for batch in batches:
            yield daemon_pb2.RecordTaskEventsRequest(
                task_id=task_id,
                events=[resources_pb2.NewTaskEvent(sequence=s, kind=k, text=f"event {s}") for s, k in batch],
            )

    return await api.daemon.RecordTaskEvents(messages(), metadata=api.md)


async def append_messages(api: Api, task_id: str, expected_next_index: int, *contents: str, **kw: Any) -> Any:
    request = daemon_pb2.AppendMessagesRequest(
        task_id=task_id,
        expected_next_index=expected_next_index,
        messages=[
            resources_pb2.NewConversationMessage(role=resources_pb2.MESSAGE_ROLE_ASSISTANT, content=c) for c in contents
        ],
        **kw,
    )
    return await api.daemon.AppendMessages(request, metadata=api.md)
