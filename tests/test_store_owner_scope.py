"""Every store read over owner data filters by owner, even where an id already names the row.

The ids come from a real owner's data; asked as another owner, each read must find nothing. An
empty key range reads nothing, never everything.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from makima.server.app import App
from makima.server.store import checkpoints, conversations, events, tasks, timeline
from makima.server.store.models import HistoryEvent, Task
from makima.server.store.timeline import NewHistoryEvent, TimelineFilter
from makima.server.store.types import utcnow
from makima.v1 import resources_pb2, task_fork_pb2
from tests.helpers import Api, append_messages, create_contract, create_task, record_events

EMPTY = resources_pb2.WorktreeSpec(source=resources_pb2.WorktreeSpec.SOURCE_EMPTY)


async def test_reads_with_another_owner_find_nothing(api: Api, other_api: Api, server: App) -> None:
    source = await create_task(api, "source", worktree=EMPTY)
    await append_messages(api, source.id, 0, "a", "b", "c")
    await record_events(api, source.id, [(1, 1), (2, 1), (5, 1)])
    forked = await api.tasks.ForkTask(
        task_fork_pb2.ForkTaskRequest(task_id=source.id, message_index=1), metadata=api.md
    )
    await append_messages(api, forked.task.id, 2, "d")
    async with server.runtime.read() as session:
        fork = (await session.execute(select(Task).where(Task.id == uuid.UUID(forked.task.id)))).scalar_one()
    task_id = uuid.UUID(source.id)
    assert fork.conversation_id is not None

    async def reads(owner: uuid.UUID) -> dict[str, object]:
        async with server.runtime.read() as session:
            return {
                "segments": await conversations.segments(
                    session, owner_id=owner, conversation_id=fork.conversation_id, count=3
                ),
                "messages": [
                    m.content
                    for m in await conversations.read(
                        session, owner_id=owner, conversation_id=fork.conversation_id, count=3, start=0, limit=10
                    )
                ],
                "events": len(
                    await events.page(
                        session, owner_id=owner, task_id=task_id, after=0, limit=10, where=events.TaskEventFilter()
                    )
                ),
                "last_sequence": await events.last_sequence(session, owner_id=owner, task_id=task_id),
                "gaps": await events.gaps(session, owner_id=owner, task_id=task_id),
                "checkpoints": len(
                    await checkpoints.checkpoint_page(session, owner_id=owner, task_id=task_id, before=None, limit=10)
                ),
                "snapshots": len(
                    await checkpoints.snapshot_page(session, owner_id=owner, task_id=task_id, before=None, limit=10)
                ),
                "checkpoint_at": await checkpoints.newest_at_or_before(
                    session, owner_id=owner, task_id=task_id, message_count=10
                ),
                "related": await tasks.related(session, owner_id=owner, task_ids={task_id}),
            }

    mine = await reads(api.owner_id)
    assert mine["messages"] == ["a", "b", "d"]
    assert len(mine["segments"]) == 2  # type: ignore[arg-type]
    assert mine["events"] == 3 and mine["last_sequence"] == 5 and mine["gaps"] == [(3, 4)]
    assert mine["checkpoints"] and mine["snapshots"] and mine["checkpoint_at"] is not None
    assert [t.id for t in mine["related"]] == [fork.id]  # type: ignore[attr-defined]

    assert await reads(other_api.owner_id) == {
        "segments": [],
        "messages": [],
        "events": 0,
        "last_sequence": 0,
        "gaps": [],
        "checkpoints": 0,
        "snapshots": 0,
        "checkpoint_at": None,
        "related": [],
    }


async def test_a_read_outside_every_segment_reads_nothing(api: Api, other_api: Api, server: App) -> None:
    """The issue's key [-1000]: no segment covers [-1000, 0), so no message at all (it used to be every one)."""
    theirs = await create_task(other_api, "theirs")
    await append_messages(other_api, theirs.id, 0, "secret of another owner")
    task = await create_task(api, "mine")
    await append_messages(api, task.id, 0, "a", "b")
    async with server.runtime.read() as session:
        row = (await session.execute(select(Task).where(Task.id == uuid.UUID(task.id)))).scalar_one()
        assert row.conversation_id is not None
        for conversation_id, start, limit in (
            (row.conversation_id, -1000, 1000),  # before the first message
            (uuid.uuid4(), 0, 10),  # a version that does not exist
            (row.conversation_id, 2, 10),  # past the last message
        ):
            assert (
                await conversations.read(
                    session, owner_id=api.owner_id, conversation_id=conversation_id, count=2, start=start, limit=limit
                )
                == []
            )
        assert await tasks.related(session, owner_id=api.owner_id, task_ids=set()) == []


class _Rollback(Exception):
    pass


async def test_timeline_events_take_the_phase_of_their_owners_contracts_only(
    api: Api, other_api: Api, server: App
) -> None:
    theirs = await create_contract(other_api, "theirs", initial_phase="secret-phase")
    with pytest.raises(_Rollback):
        async with server.runtime.db.write() as session:
            await timeline.append(
                session,
                owner_id=api.owner_id,
                events=[NewHistoryEvent(kind="note", summary="s", contract_id=uuid.UUID(theirs.id))],
                now=utcnow(),
            )
            rows = await timeline.page(session, owner_id=api.owner_id, where=TimelineFilter(), after=0, limit=10)
            assert [(r.kind, r.phase) for r in rows] == [("note", None)]
            raise _Rollback
    async with server.runtime.read() as session:
        stored = await session.execute(select(HistoryEvent).where(HistoryEvent.owner_id == api.owner_id))
        assert list(stored.scalars()) == []
