"""The blocking Client, called from worker threads so that the in-process server keeps serving."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import pytest

from makima.client import Client, InvalidArgumentError, NotFoundError, UnauthenticatedError
from makima.v1 import daemon_pb2, resources_pb2
from tests.helpers import Api, create_contract


async def test_calls_and_request_ids(sync_client: Client) -> None:
    request_id = str(uuid.uuid4())
    created = await asyncio.to_thread(sync_client.create_contract, request_id=request_id, name="sync")
    again = await asyncio.to_thread(sync_client.create_contract, request_id=request_id, name="sync")
    advanced = await asyncio.to_thread(sync_client.advance_phase, contract_id=created.contract.id, phase="plan")
    got = await asyncio.to_thread(sync_client.get_contract, contract_id=created.contract.id)
    assert again == created
    assert got.contract == advanced.contract
    assert got.contract.phase == "plan"


async def test_typed_errors(sync_client: Client, address: str, other_api: Api, api: Api) -> None:
    contract = await create_contract(api, "mine")
    with pytest.raises(InvalidArgumentError) as bad:
        await asyncio.to_thread(sync_client.get_task, task_id="nope")
    with Client(address, other_api.key) as theirs, pytest.raises(NotFoundError):
        await asyncio.to_thread(theirs.get_contract, contract_id=contract.id)
    with Client(address, "") as anonymous, pytest.raises(UnauthenticatedError):
        await asyncio.to_thread(anonymous.get_contract, contract_id=contract.id)
    assert [v.field for v in bad.value.field_violations] == ["task_id"]


async def test_pages_and_recording(sync_client: Client) -> None:
    task = (await asyncio.to_thread(sync_client.create_task, name="recorded")).task
    batch = daemon_pb2.RecordTaskEventsRequest(
        task_id=task.id,
        events=[resources_pb2.NewTaskEvent(sequence=s, kind=resources_pb2.TASK_EVENT_KIND_OUTPUT) for s in (1, 2, 3)],
    )
    recorded = await asyncio.to_thread(sync_client.record_task_events, [batch])
    resent = await asyncio.to_thread(sync_client.record_task_events, [batch])
    sequences = await asyncio.to_thread(
        lambda: [e.sequence for e in sync_client.list_task_events.items(task_id=task.id, page_size=2)]
    )
    pages = await asyncio.to_thread(lambda: list(sync_client.list_timeline.pages(page_size=1)))
    assert (recorded.stored_count, resent.duplicate_count) == (3, 3)
    assert sequences == [1, 2, 3]
    assert [[e.cursor for e in p.events] for p in pages] == [[1], [2]]  # created, recorded (the resend stored nothing)


async def test_follow_timeline(sync_client: Client, api: Api) -> None:
    await create_contract(api, "before")
    follower = sync_client.follow_timeline(keep_alive_seconds=1)
    events = iter(follower)
    first = await asyncio.to_thread(next, events)
    waiting = asyncio.ensure_future(asyncio.to_thread(lambda: list(itertools.islice(events, 2))))
    await create_contract(api, "during")
    await create_contract(api, "after")
    rest = await asyncio.wait_for(waiting, 10)
    await asyncio.to_thread(events.close)
    assert [e.cursor for e in (first, *rest)] == [1, 2, 3]
    assert follower.cursor == 3


async def test_stream_timeline(sync_client: Client, api: Api) -> None:
    await create_contract(api, "streamed")
    responses = sync_client.stream_timeline(keep_alive_seconds=1)
    first, second, third = await asyncio.to_thread(lambda: list(itertools.islice(responses, 3)))
    await asyncio.to_thread(responses.close)
    assert (first.event.cursor, second.replay_ended.cursor, third.keep_alive.cursor) == (1, 1, 1)
