"""Page tokens turned into iterators: `pages()` and `items()` of every paged RPC that has data today."""

from __future__ import annotations

from pathlib import Path

import pytest

from makima.client import AsyncClient, InvalidArgumentError, NotFoundError
from makima.v1 import daemon_pb2, history_pb2, resources_pb2
from tests.helpers import Api

KIND = resources_pb2.TimelineEventKind
OUTPUT = resources_pb2.TASK_EVENT_KIND_OUTPUT
TOOL_CALL = resources_pb2.TASK_EVENT_KIND_TOOL_CALL
EMPTY_WORKTREE = resources_pb2.WorktreeSpec(source=resources_pb2.WorktreeSpec.SOURCE_EMPTY)


async def test_timeline_pages_follow_the_token_to_the_end(client: AsyncClient) -> None:
    ids = [(await client.create_contract(name=f"c{i}")).contract.id for i in range(5)]

    pages = [page async for page in client.list_timeline.pages(page_size=2)]
    events = [event async for event in client.list_timeline.items(page_size=2)]

    assert [len(p.events) for p in pages] == [2, 2, 1]
    assert [bool(p.next_page_token) for p in pages] == [True, True, False]
    assert [e.cursor for e in events] == [1, 2, 3, 4, 5]
    assert [e.contract_id for e in events] == ids


async def test_items_keep_the_filters_on_every_page(client: AsyncClient) -> None:
    contract = (await client.create_contract(name="filtered")).contract
    for i in range(3):
        await client.create_task(name=f"t{i}", contract_id=contract.id)
    await client.create_contract(name="other")

    request = history_pb2.ListTimelineRequest(
        contract_id=contract.id, kinds=[KIND.TIMELINE_EVENT_KIND_TASK_CREATED], page_size=1
    )
    events = [e async for e in client.list_timeline.items(request)]
    after = [e.cursor async for e in client.list_timeline.items(after_cursor=3, page_size=1)]

    assert [e.cursor for e in events] == [2, 3, 4]
    assert request.page_token == ""  # the caller's request is left as it was
    assert after == [4, 5]


async def test_task_events_and_conversation_page_through(client: AsyncClient) -> None:
    task = (await client.create_task(name="busy")).task
    recorded = await client.record_task_events(
        [
            daemon_pb2.RecordTaskEventsRequest(
                task_id=task.id,
                events=[
                    resources_pb2.NewTaskEvent(sequence=s, kind=OUTPUT if s % 2 else TOOL_CALL, text=f"e{s}")
                    for s in range(1, 6)
                ],
            )
        ]
    )
    appended = await client.append_messages(
        task_id=task.id,
        expected_next_index=0,
        messages=[
            resources_pb2.NewConversationMessage(role=resources_pb2.MESSAGE_ROLE_USER, content=f"m{i}")
            for i in range(5)
        ],
    )

    events = [e async for e in client.list_task_events.items(task_id=task.id, page_size=2)]
    calls = [e.text async for e in client.list_task_events.items(task_id=task.id, kinds=[TOOL_CALL], page_size=1)]
    messages = [m async for m in client.get_task_conversation.items(task_id=task.id, page_size=2)]
    pages = [p async for p in client.get_task_conversation.pages(task_id=task.id, page_size=2)]

    assert (recorded.stored_count, recorded.last_sequence) == (5, 5)
    assert appended.next_index == 5
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5]
    assert calls == ["e2", "e4"]
    assert [(m.index, m.content) for m in messages] == [(i, f"m{i}") for i in range(5)]
    assert [(len(p.messages), p.message_count, p.task_id) for p in pages] == [(2, 5, task.id)] * 2 + [(1, 5, task.id)]


async def test_contract_history_pages_over_its_events(client: AsyncClient) -> None:
    contract = (await client.create_contract(name="phases", initial_phase="research")).contract
    for phase in ("plan", "execute"):
        await client.advance_phase(contract_id=contract.id, phase=phase)

    pages = [p async for p in client.get_contract_history.pages(contract_id=contract.id, page_size=1)]
    events = [e async for e in client.get_contract_history.items(contract_id=contract.id, page_size=2)]

    assert len(pages) == 3
    assert all(p.contract.id == contract.id for p in pages)
    assert [s.phase for s in pages[0].phases] == ["research", "plan", "execute"]
    assert [e.kind for e in events] == [
        KIND.TIMELINE_EVENT_KIND_CONTRACT_CREATED,
        KIND.TIMELINE_EVENT_KIND_PHASE_ADVANCED,
        KIND.TIMELINE_EVENT_KIND_PHASE_ADVANCED,
    ]


async def test_an_empty_list_is_one_empty_page(client: AsyncClient) -> None:
    task = (await client.create_task(name="quiet")).task
    pages = [p async for p in client.list_task_events.pages(task_id=task.id)]
    assert len(pages) == 1
    assert list(pages[0].events) == []


async def test_errors_surface_from_the_iterators(client: AsyncClient, address: str, other_api: Api) -> None:
    task = (await client.create_task(name="private")).task
    with pytest.raises(InvalidArgumentError) as bad:
        [e async for e in client.list_timeline.items(page_size=-1)]
    async with AsyncClient(address, other_api.key) as theirs:
        with pytest.raises(NotFoundError):
            [e async for e in theirs.list_task_events.items(task_id=task.id)]
    assert [v.field for v in bad.value.field_violations] == ["page_size"]


async def test_checkpoints_and_snapshots_page_newest_first(client: AsyncClient) -> None:
    task = (await client.create_task(name="coder", worktree=EMPTY_WORKTREE)).task
    initial = [c async for c in client.list_checkpoints.items(task_id=task.id)]
    worktree = Path(task.worktree_path)
    made = []
    for n in range(3):
        (worktree / "notes.txt").write_text(f"version {n}")
        made.append((await client.create_checkpoint(task_id=task.id, message=f"v{n}")).checkpoint)

    listed = [c async for c in client.list_checkpoints.items(task_id=task.id, page_size=2)]
    pages = [p async for p in client.list_checkpoints.pages(task_id=task.id, page_size=3)]
    snapshots = [s async for s in client.list_conversation_snapshots.items(task_id=task.id, page_size=1)]

    assert [c.id for c in listed] == [c.id for c in [*reversed(made), *initial]]
    assert [len(p.checkpoints) for p in pages] == ([3, len(initial)] if initial else [3])
    assert {c.conversation_snapshot_id for c in listed} <= {s.id for s in snapshots}


async def test_supervisor_conversation_pages(client: AsyncClient) -> None:
    contract = (await client.create_contract(name="supervised")).contract
    await client.start_supervisor(contract_id=contract.id, instructions="plan it")
    await client.append_messages(
        contract_id=contract.id,
        expected_next_index=0,
        messages=[
            resources_pb2.NewConversationMessage(role=resources_pb2.MESSAGE_ROLE_ASSISTANT, content=f"step {i}")
            for i in range(5)
        ],
    )

    pages = [p async for p in client.get_supervisor_conversation.pages(contract_id=contract.id, page_size=2)]
    messages = [m async for m in client.get_supervisor_conversation.items(contract_id=contract.id, page_size=2)]

    assert [len(p.messages) for p in pages] == [2, 2, 1]
    assert [m.content for m in messages] == [f"step {i}" for i in range(5)]
