"""The timeline follower: replay then live, cursors from keep-alives, reconnects across a server restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from makima.client import AsyncClient, InvalidArgumentError, NotFoundError, RetryPolicy
from makima.server.app import App
from makima.v1 import resources_pb2
from tests.client.net import start_server
from tests.helpers import Api, create_contract, create_task, free_port

KIND = resources_pb2.TimelineEventKind


async def next_of(events: AsyncIterator[resources_pb2.TimelineEvent]) -> resources_pb2.TimelineEvent:
    return await asyncio.wait_for(anext(events), 10)


async def test_replays_then_follows_live(client: AsyncClient, api: Api) -> None:
    first = await create_contract(api, "before")
    follower = client.follow_timeline(keep_alive_seconds=1)
    events = aiter(follower)
    try:
        replayed = await next_of(events)
        second = await create_contract(api, "after")
        live = await next_of(events)
    finally:
        await events.aclose()
    assert [(e.cursor, e.contract_id) for e in (replayed, live)] == [(1, first.id), (2, second.id)]
    assert live.kind == KIND.TIMELINE_EVENT_KIND_CONTRACT_CREATED
    assert follower.cursor == 2


async def test_keep_alives_move_the_cursor_past_filtered_events(client: AsyncClient, api: Api) -> None:
    task = await create_task(api, "watched")
    follower = client.follow_timeline(task_id=task.id, keep_alive_seconds=1)
    events = aiter(follower)
    try:
        assert (await next_of(events)).cursor == 1
        waiting = asyncio.ensure_future(next_of(events))
        await create_contract(api, "not watched")  # cursor 2, filtered out
        for _ in range(50):
            if follower.cursor == 2:
                break
            await asyncio.sleep(0.1)
        moved_without_event = follower.cursor == 2 and not waiting.done()
        await client.append_messages(
            task_id=task.id,
            expected_next_index=0,
            messages=[resources_pb2.NewConversationMessage(role=resources_pb2.MESSAGE_ROLE_USER, content="hi")],
        )
        appended = await waiting
    finally:
        await events.aclose()
    assert moved_without_event
    assert (appended.cursor, appended.kind) == (3, KIND.TIMELINE_EVENT_KIND_MESSAGES_APPENDED)
    assert follower.cursor == 3


async def test_resumes_from_a_saved_cursor(client: AsyncClient, api: Api) -> None:
    for name in ("a", "b", "c"):
        await create_contract(api, name)
    events = aiter(client.follow_timeline(after_cursor=2))
    try:
        resumed = await next_of(events)
    finally:
        await events.aclose()
    assert resumed.cursor == 3


async def test_reconnects_across_a_server_restart_without_gaps_or_repeats(
    api: Api, server: App, database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    replica = await start_server(database_url, port, tmp_path)
    retry = RetryPolicy(max_attempts=None, initial_backoff=0.05, max_backoff=0.3)
    client = AsyncClient(f"127.0.0.1:{port}", api.key, retry=retry)
    follower = client.follow_timeline(keep_alive_seconds=1)
    events = aiter(follower)
    try:
        await create_contract(api, "one")  # written through the other server: same database
        seen = [await next_of(events)]
        waiting = asyncio.ensure_future(next_of(events))
        await replica.stop(0.5)  # ends the stream cleanly; reconnects are refused until the restart
        for name in ("two", "three"):
            await create_contract(api, name)
        await asyncio.sleep(0.3)
        replica = await start_server(database_url, port, tmp_path)
        seen.append(await waiting)
        seen.append(await next_of(events))
        await create_contract(api, "four")
        seen.append(await next_of(events))
    finally:
        await events.aclose()
        await client.close()
        await replica.stop(0.5)
    assert [e.cursor for e in seen] == [1, 2, 3, 4]
    assert follower.cursor == 4


async def test_answers_other_than_unavailable_are_raised(client: AsyncClient, other_api: Api) -> None:
    task = await create_task(other_api, "theirs")
    with pytest.raises(NotFoundError):
        await anext(aiter(client.follow_timeline(task_id=task.id)))
    with pytest.raises(InvalidArgumentError) as bad:
        await anext(aiter(client.follow_timeline(after_cursor=-1)))
    assert [v.field for v in bad.value.field_violations] == ["after_cursor"]


async def test_stream_timeline_gives_keep_alives_as_they_come(client: AsyncClient, api: Api) -> None:
    await create_contract(api, "only")
    responses = client.stream_timeline(keep_alive_seconds=1)
    try:
        first, second, third = [await asyncio.wait_for(anext(responses), 10) for _ in range(3)]
    finally:
        await responses.aclose()
    assert first.event.cursor == 1
    assert second.replay_ended.cursor == 1
    assert third.keep_alive.cursor == 1
    with pytest.raises(InvalidArgumentError):
        await anext(client.stream_timeline(keep_alive_seconds=-1))
