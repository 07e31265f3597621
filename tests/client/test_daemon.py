"""A daemon's work loop through the client: register, claim, heartbeat, write under the claim's lease
token, report; then resume the task."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from google.protobuf import duration_pb2

from makima.client import AsyncClient, FailedPreconditionError
from makima.v1 import daemon_pb2, resources_pb2

WORKER = resources_pb2.TASK_KIND_WORKER
OUTPUT = resources_pb2.TASK_EVENT_KIND_OUTPUT


async def test_claim_heartbeat_report_and_resume(client: AsyncClient) -> None:
    daemon = (await client.register_daemon(name="laptop", hostname="box")).daemon
    other = (await client.register_daemon(name="other")).daemon
    nothing = await client.claim_task(daemon_id=daemon.id, kinds=[WORKER])
    task = (await client.create_task(name="job")).task

    claimed = await client.claim_task(daemon_id=daemon.id, kinds=[WORKER], wait=duration_pb2.Duration(seconds=5))
    token = claimed.claimed.lease_token
    beat = await client.heartbeat(daemon_id=daemon.id, task_ids=[task.id])
    appended = await client.append_messages(
        task_id=task.id,
        lease_token=token,
        messages=[resources_pb2.NewConversationMessage(role=resources_pb2.MESSAGE_ROLE_ASSISTANT, content="hi")],
    )
    batch = daemon_pb2.RecordTaskEventsRequest(
        task_id=task.id, lease_token=token, events=[resources_pb2.NewTaskEvent(sequence=1, kind=OUTPUT, text="x")]
    )
    recorded = await client.record_task_events([batch, batch])
    with pytest.raises(FailedPreconditionError) as tokenless:
        await client.record_task_events([daemon_pb2.RecordTaskEventsRequest(task_id=task.id, events=batch.events)])
    with pytest.raises(FailedPreconditionError) as not_held:
        await client.report_task_status(
            daemon_id=other.id, task_id=task.id, status=resources_pb2.TASK_STATUS_FAILED, lease_token=token
        )
    failed = await client.report_task_status(
        daemon_id=daemon.id, task_id=task.id, status=resources_pb2.TASK_STATUS_FAILED, message="boom", lease_token=token
    )
    resumed = await client.resume_task(task_id=task.id)

    assert not nothing.HasField("claimed")
    assert (claimed.claimed.task.id, claimed.claimed.task.status) == (task.id, resources_pb2.TASK_STATUS_RUNNING)
    assert list(beat.lost_task_ids) == []
    assert appended.next_index == 1
    assert (recorded.stored_count, recorded.duplicate_count) == (1, 1)
    assert tokenless.value.reason == "LEASE_REQUIRED"
    assert not_held.value.reason == "LEASE_LOST"
    assert (failed.task.status, failed.task.status_message) == (resources_pb2.TASK_STATUS_FAILED, "boom")
    assert resumed.task.status == resources_pb2.TASK_STATUS_PENDING
    assert (resumed.resumed_from.previous_status, resumed.resumed_from.daemon_id) == (
        resources_pb2.TASK_STATUS_FAILED,
        daemon.id,
    )


async def test_record_task_events_from_a_stream(client: AsyncClient) -> None:
    task = (await client.create_task(name="streaming")).task

    async def batches() -> AsyncIterator[daemon_pb2.RecordTaskEventsRequest]:
        for sequence in (1, 2, 4):
            yield daemon_pb2.RecordTaskEventsRequest(
                task_id=task.id,
                events=[resources_pb2.NewTaskEvent(sequence=sequence, kind=resources_pb2.TASK_EVENT_KIND_OUTPUT)],
            )

    recorded = await client.record_task_events(batches())
    assert (recorded.stored_count, recorded.last_sequence) == (3, 4)
    assert [(g.from_sequence, g.to_sequence) for g in recorded.gaps] == [(3, 3)]
