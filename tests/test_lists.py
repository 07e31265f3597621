"""HistoryService.ListContracts and ListTasks: newest first, filters, pages, owners kept apart."""

from __future__ import annotations

from typing import Any

import grpc

from makima.v1 import daemon_pb2, history_pb2, resources_pb2, supervisor_pb2
from tests.helpers import Api, create_contract, create_task, fails


async def all_pages(api: Api, rpc: str, field: str, **filters: Any) -> list[Any]:
    """Every item, one per page, so that paging is exercised at every step."""
    request_type = getattr(history_pb2, f"{rpc}Request")
    out, token = [], ""
    while True:
        page = await getattr(api.history, rpc)(request_type(page_size=1, page_token=token, **filters), metadata=api.md)
        out += getattr(page, field)
        token = page.next_page_token
        if not token:
            return out


async def test_contracts_newest_first_with_their_supervisor_and_a_status_filter(api: Api, other_api: Api) -> None:
    first = await create_contract(api, "first")
    second = await create_contract(api, "second")
    await create_contract(other_api, "theirs")
    started = await api.supervisor.StartSupervisor(
        supervisor_pb2.StartSupervisorRequest(contract_id=first.id), metadata=api.md
    )

    listed = await all_pages(api, "ListContracts", "contracts")
    active = await all_pages(api, "ListContracts", "contracts", statuses=[resources_pb2.CONTRACT_STATUS_ACTIVE])
    completed = await all_pages(api, "ListContracts", "contracts", statuses=[resources_pb2.CONTRACT_STATUS_COMPLETED])

    assert [c.id for c in listed] == [second.id, first.id]  # newest first, only the owner's
    assert listed[1].supervisor_task_id == started.supervisor_task.id
    assert [c.id for c in active] == [second.id, first.id]
    assert completed == []


async def test_tasks_by_contract_and_status(api: Api, other_api: Api) -> None:
    contract = await create_contract(api, "c")
    inside = await create_task(api, "inside", contract_id=contract.id)
    outside = await create_task(api, "outside")
    await create_task(other_api, "theirs")
    daemon = (await api.daemon.RegisterDaemon(daemon_pb2.RegisterDaemonRequest(name="d"), metadata=api.md)).daemon
    claimed = await api.daemon.ClaimTask(daemon_pb2.ClaimTaskRequest(daemon_id=daemon.id), metadata=api.md)

    everything = await all_pages(api, "ListTasks", "tasks")
    of_contract = await all_pages(api, "ListTasks", "tasks", contract_id=contract.id)
    running = await all_pages(api, "ListTasks", "tasks", statuses=[resources_pb2.TASK_STATUS_RUNNING])

    assert [t.id for t in everything] == [outside.id, inside.id]
    assert [t.id for t in of_contract] == [inside.id]
    assert [t.id for t in running] == [claimed.claimed.task.id]  # the oldest pending task was claimed
    assert running[0].status == resources_pb2.TASK_STATUS_RUNNING


async def test_bad_filters_name_the_field_and_another_owners_contract_is_not_found(api: Api, other_api: Api) -> None:
    theirs = await create_contract(other_api, "theirs")
    bad_id = await fails(
        api.history.ListTasks(history_pb2.ListTasksRequest(contract_id="x"), metadata=api.md),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    bad_status = await fails(
        api.history.ListContracts(history_pb2.ListContractsRequest(statuses=[0]), metadata=api.md),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    bad_token = await fails(
        api.history.ListTasks(history_pb2.ListTasksRequest(page_token="nope"), metadata=api.md),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await fails(
        api.history.ListTasks(history_pb2.ListTasksRequest(contract_id=theirs.id), metadata=api.md),
        grpc.StatusCode.NOT_FOUND,
    )
    assert (bad_id.fields, bad_status.fields, bad_token.fields) == (["contract_id"], ["statuses[0]"], ["page_token"])
