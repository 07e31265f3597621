"""TaskForkService task RPCs: CreateTask and GetTask."""

from __future__ import annotations

import grpc
import pytest

from makima.server.app import App
from makima.v1 import resources_pb2, task_fork_pb2
from tests.helpers import Api, create_contract, create_task, fails
from tests.test_contracts import timeline_of


async def test_create_and_get_task(api: Api, server: App) -> None:
    contract = await create_contract(api, initial_phase="execute")
    parent = await create_task(api, "parent", contract_id=contract.id)
    task = await create_task(
        api, "child", contract_id=contract.id, parent_task_id=parent.id, instructions="write the tests"
    )
    assert task.status == resources_pb2.TASK_STATUS_PENDING
    assert task.kind == resources_pb2.TASK_KIND_WORKER
    assert (task.contract_id, task.parent_task_id, task.instructions) == (contract.id, parent.id, "write the tests")
    assert task.message_count == 0
    assert not task.HasField("forked_at_message_index")

    got = await api.tasks.GetTask(task_fork_pb2.GetTaskRequest(task_id=task.id), metadata=api.md)
    assert got.task == task

    events = await timeline_of(server, api)
    assert [(e.kind, str(e.task_id), e.phase) for e in events[1:]] == [
        ("task_created", parent.id, "execute"),
        ("task_created", task.id, "execute"),
    ]
    assert [e.cursor for e in events] == [1, 2, 3]


async def test_stand_alone_task(api: Api) -> None:
    task = await create_task(api, "alone")
    assert task.contract_id == ""


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "t", "contract_id": "x"}, "contract_id"),
        ({"name": "t", "parent_task_id": "x"}, "parent_task_id"),
        ({"name": "t", "worktree": {"source": 9}}, "worktree.source"),
        ({"name": "t", "worktree": {"source": 2}}, "worktree.repository"),
    ],
)
async def test_create_task_rejects_bad_fields(api: Api, fields: dict, field: str) -> None:
    request = task_fork_pb2.CreateTaskRequest(**fields)
    failure = await fails(api.tasks.CreateTask(request, metadata=api.md), grpc.StatusCode.INVALID_ARGUMENT)
    assert failure.fields == [field]


async def test_create_task_in_another_owners_contract_is_not_found(api: Api, other_api: Api, server: App) -> None:
    contract = await create_contract(api)
    parent = await create_task(api)
    for fields in ({"contract_id": contract.id}, {"parent_task_id": parent.id}):
        await fails(
            other_api.tasks.CreateTask(task_fork_pb2.CreateTaskRequest(name="t", **fields), metadata=other_api.md),
            grpc.StatusCode.NOT_FOUND,
        )
    assert await timeline_of(server, other_api) == []


async def test_get_other_owners_task_is_not_found(api: Api, other_api: Api) -> None:
    task = await create_task(api)
    await fails(
        other_api.tasks.GetTask(task_fork_pb2.GetTaskRequest(task_id=task.id), metadata=other_api.md),
        grpc.StatusCode.NOT_FOUND,
    )
