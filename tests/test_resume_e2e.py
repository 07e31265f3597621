"""End to end, the way a daemon fleet uses the service: a daemon dies mid-work, its tasks become
interrupted, they are resumed, another daemon claims and continues them, and nothing is lost or
recorded twice."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio

from makima.server.app import App, start
from makima.server.config import Settings
from makima.server.domain.auth import create_api_key
from makima.v1 import daemon_pb2, history_pb2, resources_pb2, supervisor_pb2, task_fork_pb2
from tests.helpers import Api, create_contract, fails
from tests.test_work import claim, heartbeat, register, report, wait_for_status

OUTPUT = resources_pb2.TASK_EVENT_KIND_OUTPUT
KIND = resources_pb2.TimelineEventKind


@pytest.fixture
async def fleet(empty_database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    """A server whose leases last one second, and an owner's stubs on it."""
    app: App = await start(
        Settings(
            listen="127.0.0.1:0",
            database_url=empty_database_url,
            workspace_root=tmp_path,
            lease_seconds=1,
            sweep_seconds=0.2,
        )
    )
    key = await create_api_key(app.runtime, owner_id=uuid.uuid4())
    async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield Api(channel=channel, owner_id=key.owner_id, key=key.secret)
    await app.stop(1)


class Worker:
    """A daemon written as a test client: appends messages and records events for the tasks it holds,
    under the lease token of its claim."""

    def __init__(self, api: Api, daemon_id: str) -> None:
        self.api = api
        self.daemon_id = daemon_id

    async def step(self, claimed: daemon_pb2.ClaimedTask, label: str, *, resend: bool = False) -> None:
        """Append two messages and record two events; with `resend`, the events go twice, as after a lost
        acknowledgement."""
        task = claimed.task
        await self.api.daemon.AppendMessages(
            daemon_pb2.AppendMessagesRequest(
                task_id=task.id,
                lease_token=claimed.lease_token,
                expected_next_index=len(claimed.conversation),
                messages=[
                    resources_pb2.NewConversationMessage(
                        role=resources_pb2.MESSAGE_ROLE_ASSISTANT, content=f"{label}{i}"
                    )
                    for i in range(2)
                ],
            ),
            metadata=self.api.md,
        )
        first = claimed.last_event_sequence + 1
        batch = daemon_pb2.RecordTaskEventsRequest(
            task_id=task.id,
            lease_token=claimed.lease_token,
            events=[
                resources_pb2.NewTaskEvent(sequence=s, kind=OUTPUT, text=f"{label} {s}") for s in (first, first + 1)
            ],
        )

        async def stream() -> AsyncIterator[daemon_pb2.RecordTaskEventsRequest]:
            for _ in range(2 if resend else 1):
                yield batch

        recorded = await self.api.daemon.RecordTaskEvents(stream(), metadata=self.api.md)
        assert (recorded.stored_count, recorded.duplicate_count) == (2, 2 if resend else 0)


async def test_a_dead_daemons_work_is_resumed_by_another_with_nothing_lost(fleet: Api) -> None:
    api = fleet
    contract = await create_contract(api, "ship it", initial_phase="execute")
    supervisor_task = (
        await api.supervisor.StartSupervisor(
            supervisor_pb2.StartSupervisorRequest(contract_id=contract.id, instructions="lead"), metadata=api.md
        )
    ).supervisor_task
    workers = [
        (
            await api.tasks.CreateTask(
                task_fork_pb2.CreateTaskRequest(name=f"w{i}", contract_id=contract.id), metadata=api.md
            )
        ).task
        for i in range(2)
    ]
    every = [supervisor_task.id, *(w.id for w in workers)]

    # Daemon A claims all three and gets some work done, then dies (no more heartbeats).
    a = Worker(api, (await register(api, "a")).daemon.id)
    held_by_a = []
    for _ in every:
        claimed = (await claim(api, a.daemon_id)).claimed
        assert claimed.phase == "execute"
        await a.step(claimed, "a")
        held_by_a.append(claimed.task.id)
    assert sorted(held_by_a) == sorted(every)
    for task_id in every:
        await wait_for_status(api, task_id, resources_pb2.TASK_STATUS_INTERRUPTED)

    # The user resumes them: the supervisor through ResumeSupervisor, the workers through ResumeTask.
    resumed = await api.supervisor.ResumeSupervisor(
        supervisor_pb2.ResumeSupervisorRequest(contract_id=contract.id, mode=supervisor_pb2.RESUME_MODE_CONTINUE),
        metadata=api.md,
    )
    assert (resumed.resumed_from.phase, resumed.resumed_from.message_count) == ("execute", 2)
    assert resumed.resumed_from.daemon_id == a.daemon_id
    assert resumed.resumed_from.previous_status == resources_pb2.TASK_STATUS_INTERRUPTED
    for worker in workers:
        again = await api.tasks.ResumeTask(task_fork_pb2.ResumeTaskRequest(task_id=worker.id), metadata=api.md)
        assert again.task.status == resources_pb2.TASK_STATUS_PENDING
        assert again.resumed_from.message_count == 2

    # Daemon B claims each with what it needs to continue, continues, and completes.
    b = Worker(api, (await register(api, "b")).daemon.id)
    for _ in every:
        claimed = (await claim(api, b.daemon_id, wait=5)).claimed
        assert [m.content for m in claimed.conversation] == ["a0", "a1"]
        assert claimed.last_event_sequence == 2
        assert claimed.phase == "execute"
        await b.step(claimed, "b", resend=True)
        done = await report(
            api, b.daemon_id, claimed.task.id, resources_pb2.TASK_STATUS_COMPLETED, lease_token=claimed.lease_token
        )
        assert done.task.status == resources_pb2.TASK_STATUS_COMPLETED
    assert not (await claim(api, b.daemon_id)).HasField("claimed")

    # Daemon A comes back: it holds nothing any more.
    lost = await heartbeat(api, a.daemon_id, *every)
    assert sorted(lost.lost_task_ids) == sorted(every)
    await fails(
        report(api, a.daemon_id, workers[0].id, resources_pb2.TASK_STATUS_COMPLETED),
        grpc.StatusCode.FAILED_PRECONDITION,
        reason="LEASE_NOT_HELD",
    )

    # The final history: every message and event exactly once, in order.
    for task_id in every:
        conversation = await api.history.GetTaskConversation(
            history_pb2.GetTaskConversationRequest(task_id=task_id), metadata=api.md
        )
        assert [m.content for m in conversation.messages] == ["a0", "a1", "b0", "b1"]
        events = await api.history.ListTaskEvents(history_pb2.ListTaskEventsRequest(task_id=task_id), metadata=api.md)
        assert [(e.sequence, e.text) for e in events.events] == [(1, "a 1"), (2, "a 2"), (3, "b 3"), (4, "b 4")]
        timeline = await api.history.ListTimeline(
            history_pb2.ListTimelineRequest(task_id=task_id, page_size=1000), metadata=api.md
        )
        statuses = [
            (e.data["from"], e.data["to"])
            for e in timeline.events
            if e.kind == KIND.TIMELINE_EVENT_KIND_TASK_STATUS_CHANGED
        ]
        assert statuses == [
            ("pending", "running"),
            ("running", "interrupted"),
            ("pending", "running"),
            ("running", "completed"),
        ]
        kinds = [e.kind for e in timeline.events]
        assert kinds.count(KIND.TIMELINE_EVENT_KIND_MESSAGES_APPENDED) == 2
        assert kinds.count(KIND.TIMELINE_EVENT_KIND_TASK_EVENTS_RECORDED) == 2
        resumed_kind = (
            KIND.TIMELINE_EVENT_KIND_SUPERVISOR_RESUMED
            if task_id == supervisor_task.id
            else KIND.TIMELINE_EVENT_KIND_TASK_RESUMED
        )
        assert kinds.count(resumed_kind) == 1
    everything = await api.history.ListTimeline(history_pb2.ListTimelineRequest(page_size=1000), metadata=api.md)
    cursors = [e.cursor for e in everything.events]
    assert cursors == list(range(1, len(cursors) + 1))
