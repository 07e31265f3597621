"""HistoryService lists: timeline, contract history, pagination rules, lineage, checkpoints, snapshots."""

from __future__ import annotations

import asyncio
import base64
import json

import grpc
import pytest

from makima.v1 import history_pb2, resources_pb2, supervisor_pb2, task_fork_pb2
from tests.helpers import Api, append_messages, create_contract, create_task, fails, record_events

KIND = resources_pb2.TimelineEventKind


async def list_all(api: Api, **filters: object) -> list[resources_pb2.TimelineEvent]:
    out, token = [], ""
    while True:
        page = await api.history.ListTimeline(
            history_pb2.ListTimelineRequest(page_size=3, page_token=token, **filters), metadata=api.md
        )
        out += page.events
        token = page.next_page_token
        if not token:
            return out


async def test_timeline_pages_in_cursor_order_with_filters(api: Api) -> None:
    c1 = await create_contract(api, "one")
    c2 = await create_contract(api, "two")
    t1 = await create_task(api, "t1", contract_id=c1.id)
    await append_messages(api, t1.id, 0, "hi")
    await create_task(api, "t2", contract_id=c2.id)

    everything = await list_all(api)
    assert [e.cursor for e in everything] == [1, 2, 3, 4, 5]
    assert [e.kind for e in everything] == [
        KIND.TIMELINE_EVENT_KIND_CONTRACT_CREATED,
        KIND.TIMELINE_EVENT_KIND_CONTRACT_CREATED,
        KIND.TIMELINE_EVENT_KIND_TASK_CREATED,
        KIND.TIMELINE_EVENT_KIND_MESSAGES_APPENDED,
        KIND.TIMELINE_EVENT_KIND_TASK_CREATED,
    ]
    assert [e.cursor for e in await list_all(api, contract_id=c1.id)] == [1, 3, 4]
    assert [e.cursor for e in await list_all(api, task_id=t1.id)] == [3, 4]
    assert [e.cursor for e in await list_all(api, kinds=[KIND.TIMELINE_EVENT_KIND_TASK_CREATED])] == [3, 5]
    assert [e.cursor for e in await list_all(api, after_cursor=3)] == [4, 5]
    assert everything[3].summary and dict(everything[3].data) == {"count": 1.0, "first_index": 0.0, "next_index": 1.0}

    cut = everything[2].create_time
    later = await list_all(api, start_time=cut)
    assert [e.cursor for e in later] == [
        e.cursor for e in everything if e.create_time.ToNanoseconds() >= cut.ToNanoseconds()
    ]
    earlier = await list_all(api, end_time=cut)
    assert [e.cursor for e in earlier] == [
        e.cursor for e in everything if e.create_time.ToNanoseconds() < cut.ToNanoseconds()
    ]


async def test_page_size_is_clamped_to_1000(api: Api) -> None:
    for chunk in range(0, 1001, 100):
        await asyncio.gather(*(create_contract(api, f"c{i}") for i in range(chunk, min(chunk + 100, 1001))))
    page = await api.history.ListTimeline(history_pb2.ListTimelineRequest(page_size=100_000), metadata=api.md)
    assert len(page.events) == 1000
    assert page.next_page_token
    rest = await api.history.ListTimeline(
        history_pb2.ListTimelineRequest(page_size=100_000, page_token=page.next_page_token), metadata=api.md
    )
    assert [e.cursor for e in rest.events] == [1001]
    assert rest.next_page_token == ""
    default = await api.history.ListTimeline(history_pb2.ListTimelineRequest(), metadata=api.md)
    assert len(default.events) == 100


async def test_bad_list_requests(api: Api, other_api: Api) -> None:
    await create_contract(api)
    await create_contract(api)
    first = await api.history.ListTimeline(history_pb2.ListTimelineRequest(page_size=1), metadata=api.md)
    token = first.next_page_token
    assert token

    async def field_of(request: history_pb2.ListTimelineRequest, who: Api = api) -> list[str]:
        failure = await fails(who.history.ListTimeline(request, metadata=who.md), grpc.StatusCode.INVALID_ARGUMENT)
        return failure.fields

    assert await field_of(history_pb2.ListTimelineRequest(page_size=-1)) == ["page_size"]
    assert await field_of(history_pb2.ListTimelineRequest(page_token="garbage!")) == ["page_token"]
    forged = base64.urlsafe_b64encode(json.dumps({"s": "x", "k": [0]}).encode()).decode()
    assert await field_of(history_pb2.ListTimelineRequest(page_token=forged)) == ["page_token"]
    # A token is bound to its filters and its owner.
    assert await field_of(history_pb2.ListTimelineRequest(page_token=token, kinds=[1])) == ["page_token"]
    assert await field_of(history_pb2.ListTimelineRequest(page_token=token), other_api) == ["page_token"]
    # ...but the page size may change between pages.
    ok = await api.history.ListTimeline(history_pb2.ListTimelineRequest(page_token=token, page_size=5), metadata=api.md)
    assert [e.cursor for e in ok.events] == [2]

    assert await field_of(history_pb2.ListTimelineRequest(kinds=[0])) == ["kinds[0]"]
    assert await field_of(history_pb2.ListTimelineRequest(kinds=[1, 999])) == ["kinds[1]"]
    assert await field_of(history_pb2.ListTimelineRequest(after_cursor=-5)) == ["after_cursor"]
    assert await field_of(history_pb2.ListTimelineRequest(contract_id="nope")) == ["contract_id"]
    inverted = history_pb2.ListTimelineRequest()
    inverted.start_time.FromSeconds(2_000_000_000)
    inverted.end_time.FromSeconds(1_000_000_000)
    assert await field_of(inverted) == ["end_time"]


async def test_timeline_filters_on_other_owners_resources_are_not_found(api: Api, other_api: Api) -> None:
    contract = await create_contract(api)
    task = await create_task(api)
    for request in (
        history_pb2.ListTimelineRequest(contract_id=contract.id),
        history_pb2.ListTimelineRequest(task_id=task.id),
    ):
        await fails(other_api.history.ListTimeline(request, metadata=other_api.md), grpc.StatusCode.NOT_FOUND)
    assert (
        list((await other_api.history.ListTimeline(history_pb2.ListTimelineRequest(), metadata=other_api.md)).events)
        == []
    )


async def test_contract_history_across_phases(api: Api, other_api: Api) -> None:
    contract = await create_contract(api, initial_phase="research")
    task = await create_task(api, "researcher", contract_id=contract.id)
    await record_events(api, task.id, [(1, resources_pb2.TASK_EVENT_KIND_OUTPUT)])
    for phase in ("plan", "execute"):
        await api.supervisor.AdvancePhase(
            supervisor_pb2.AdvancePhaseRequest(contract_id=contract.id, phase=phase), metadata=api.md
        )
    await append_messages(api, task.id, 0, "in execute")
    await create_contract(api, "unrelated")

    history = await api.history.GetContractHistory(
        history_pb2.GetContractHistoryRequest(contract_id=contract.id), metadata=api.md
    )
    assert history.contract.phase == "execute"
    assert [p.phase for p in history.phases] == ["research", "plan", "execute"]
    assert history.phases[0].end_time == history.phases[1].start_time
    assert not history.phases[2].HasField("end_time")
    assert [e.kind for e in history.events] == [
        KIND.TIMELINE_EVENT_KIND_CONTRACT_CREATED,
        KIND.TIMELINE_EVENT_KIND_TASK_CREATED,
        KIND.TIMELINE_EVENT_KIND_TASK_EVENTS_RECORDED,
        KIND.TIMELINE_EVENT_KIND_PHASE_ADVANCED,
        KIND.TIMELINE_EVENT_KIND_PHASE_ADVANCED,
        KIND.TIMELINE_EVENT_KIND_MESSAGES_APPENDED,
    ]
    in_research = await api.history.GetContractHistory(
        history_pb2.GetContractHistoryRequest(contract_id=contract.id, phase="research"), metadata=api.md
    )
    assert len(in_research.events) == 3
    in_execute = await api.history.GetContractHistory(
        history_pb2.GetContractHistoryRequest(
            contract_id=contract.id, phase="execute", kinds=[KIND.TIMELINE_EVENT_KIND_MESSAGES_APPENDED]
        ),
        metadata=api.md,
    )
    assert [e.task_id for e in in_execute.events] == [task.id]
    paged = await api.history.GetContractHistory(
        history_pb2.GetContractHistoryRequest(contract_id=contract.id, page_size=4), metadata=api.md
    )
    rest = await api.history.GetContractHistory(
        history_pb2.GetContractHistoryRequest(contract_id=contract.id, page_size=4, page_token=paged.next_page_token),
        metadata=api.md,
    )
    assert [e.cursor for e in [*paged.events, *rest.events]] == [e.cursor for e in history.events]
    await fails(
        other_api.history.GetContractHistory(
            history_pb2.GetContractHistoryRequest(contract_id=contract.id), metadata=other_api.md
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_lineage_of_sub_tasks(api: Api) -> None:
    root = await create_task(api, "root")
    child = await create_task(api, "child", parent_task_id=root.id)
    grandchild = await create_task(api, "grandchild", parent_task_id=child.id)
    await create_task(api, "unrelated")
    lineage = await api.history.GetTaskLineage(
        history_pb2.GetTaskLineageRequest(task_id=grandchild.id), metadata=api.md
    )
    assert lineage.root_task_id == root.id
    assert [(n.task.id, n.parent_task_id, n.relation, n.depth) for n in lineage.nodes] == [
        (root.id, "", history_pb2.LINEAGE_RELATION_ROOT, 0),
        (child.id, root.id, history_pb2.LINEAGE_RELATION_SUBTASK, 1),
        (grandchild.id, child.id, history_pb2.LINEAGE_RELATION_SUBTASK, 2),
    ]


@pytest.mark.parametrize(
    "rpc", ["ListCheckpoints", "ListConversationSnapshots", "GetTaskLineage", "GetTaskConversation"]
)
async def test_task_reads_are_owner_scoped(api: Api, other_api: Api, rpc: str) -> None:
    task = await create_task(api)
    request_type = getattr(history_pb2, f"{rpc}Request")
    mine = await getattr(api.history, rpc)(request_type(task_id=task.id), metadata=api.md)
    assert mine is not None
    await fails(
        getattr(other_api.history, rpc)(request_type(task_id=task.id), metadata=other_api.md), grpc.StatusCode.NOT_FOUND
    )
    failure = await fails(
        getattr(api.history, rpc)(request_type(task_id="x"), metadata=api.md), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert failure.fields == ["task_id"]


async def test_every_event_of_a_contract_is_filed_under_its_phase(api: Api) -> None:
    """Events whose use case names no phase (checkpoints, rewinds...) still carry the contract's phase."""
    contract = await create_contract(api, initial_phase="build")
    task = await create_task(
        api,
        contract_id=contract.id,
        worktree=resources_pb2.WorktreeSpec(source=resources_pb2.WorktreeSpec.SOURCE_EMPTY),
    )
    await api.tasks.CreateCheckpoint(task_fork_pb2.CreateCheckpointRequest(task_id=task.id), metadata=api.md)
    await api.supervisor.AdvancePhase(
        supervisor_pb2.AdvancePhaseRequest(contract_id=contract.id, phase="review"), metadata=api.md
    )
    await api.tasks.CreateCheckpoint(task_fork_pb2.CreateCheckpointRequest(task_id=task.id), metadata=api.md)
    checkpoints = [KIND.TIMELINE_EVENT_KIND_CHECKPOINT_CREATED]
    counts = {}
    for phase in ("build", "review"):
        history = await api.history.GetContractHistory(
            history_pb2.GetContractHistoryRequest(contract_id=contract.id, phase=phase, kinds=checkpoints),
            metadata=api.md,
        )
        counts[phase] = len(history.events)
    assert counts == {"build": 2, "review": 1}  # the initial and the first checkpoint, then the second
