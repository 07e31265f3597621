"""StreamTimeline: replay, live delivery, keep-alives, exactly-once across reconnects, fan-out, shutdown."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from grpc import aio

from makima.server.app import App, start
from makima.server.config import Settings
from makima.server.domain import contracts
from makima.server.domain.auth import create_api_key
from makima.server.domain.runtime import Principal, Runtime
from makima.server.store import timeline
from makima.server.store.engine import Database
from makima.server.store.timeline import NewHistoryEvent
from makima.server.store.types import utcnow
from makima.server.timeline.tail import REPLAYS_PER_OWNER
from makima.v1 import history_pb2, resources_pb2
from tests.helpers import Api, append_messages, create_contract, create_task, fails, free_port


def stream(api: Api, **fields: object) -> aio.UnaryStreamCall:
    return api.history.StreamTimeline(history_pb2.StreamTimelineRequest(**fields), metadata=api.md)


async def next_event(call: aio.UnaryStreamCall) -> resources_pb2.TimelineEvent:
    while True:
        item = await asyncio.wait_for(call.read(), 10)
        assert item is not aio.EOF, "stream ended"
        if item.HasField("event"):
            return item.event


async def test_replays_then_delivers_live_events(api: Api) -> None:
    first = await create_contract(api, "before")
    call = stream(api)
    replayed = await next_event(call)
    assert (replayed.cursor, replayed.contract_id) == (1, first.id)
    second = await create_contract(api, "after")
    live = await next_event(call)
    assert (live.cursor, live.contract_id, live.kind) == (
        2,
        second.id,
        resources_pb2.TIMELINE_EVENT_KIND_CONTRACT_CREATED,
    )
    call.cancel()


async def test_the_end_of_the_replay_is_marked_at_once(api: Api) -> None:
    """Right after the past events, long before the first keep-alive (15 s by default), then live ones."""
    for name in ("one", "two", "three"):
        await create_contract(api, name)
    call = stream(api, after_cursor=1)
    items = [await asyncio.wait_for(call.read(), 5) for _ in range(3)]
    assert [i.WhichOneof("item") for i in items] == ["event", "event", "replay_ended"]
    assert [i.event.cursor for i in items[:2]] == [2, 3]
    assert items[2].replay_ended.cursor == 3 and items[2].replay_ended.server_time.seconds > 0
    live = await create_contract(api, "four")
    item = await asyncio.wait_for(call.read(), 5)
    assert (item.WhichOneof("item"), item.event.contract_id) == ("event", live.id)
    call.cancel()

    caught_up = stream(api, after_cursor=4)
    first = await asyncio.wait_for(caught_up.read(), 5)
    assert (first.WhichOneof("item"), first.replay_ended.cursor) == ("replay_ended", 4)
    caught_up.cancel()


async def test_keep_alive_carries_the_watermark_past_filtered_events(api: Api) -> None:
    task = await create_task(api)
    await create_contract(api)
    call = stream(api, task_id=task.id, keep_alive_seconds=1)
    assert (await next_event(call)).cursor == 1
    assert (await asyncio.wait_for(call.read(), 10)).replay_ended.cursor == 2
    item = await asyncio.wait_for(call.read(), 10)
    assert item.HasField("keep_alive")
    assert item.keep_alive.cursor == 2  # the contract event did not match, but it is behind us
    assert item.keep_alive.server_time.seconds > 0
    call.cancel()


async def test_live_events_are_filtered_as_a_page_is(api: Api) -> None:
    """Every filter field of a stream: what it delivers live (tested in memory) is what ListTimeline
    returns (tested in SQL) for the same filter."""
    contract = await create_contract(api, "filtered")
    started = (await api.history.ListTimeline(history_pb2.ListTimelineRequest(), metadata=api.md)).events[-1]
    created = resources_pb2.TIMELINE_EVENT_KIND_TASK_CREATED
    filters: list[dict[str, object]] = [
        {"contract_id": contract.id},
        {"kinds": [created]},
        {"contract_id": contract.id, "kinds": [created]},
    ]
    calls = [stream(api, after_cursor=started.cursor, keep_alive_seconds=1, **fields) for fields in filters]
    for call in calls:
        assert (await asyncio.wait_for(call.read(), 10)).HasField("replay_ended")
    await create_task(api, "in the contract", contract_id=contract.id)
    await create_task(api, "outside")
    await create_contract(api, "another")

    for fields, call in zip(filters, calls, strict=True):
        page = await api.history.ListTimeline(
            history_pb2.ListTimelineRequest(after_cursor=started.cursor, **fields), metadata=api.md
        )
        expected = [e.cursor for e in page.events]
        live = [(await next_event(call)).cursor for _ in expected]
        after = await asyncio.wait_for(call.read(), 10)  # nothing more matches: a keep-alive comes next
        assert live == expected and expected and after.HasField("keep_alive"), fields
        call.cancel()


async def test_stream_rejects_bad_requests(api: Api, other_api: Api) -> None:
    for fields, field in (
        ({"after_cursor": -1}, "after_cursor"),
        ({"keep_alive_seconds": -1}, "keep_alive_seconds"),
        ({"max_events_per_message": -1}, "max_events_per_message"),
        ({"max_events_per_message": 501}, "max_events_per_message"),
        ({"kinds": [0]}, "kinds[0]"),
        ({"contract_id": "x"}, "contract_id"),
    ):
        failure = await fails(stream(api, **fields).read(), grpc.StatusCode.INVALID_ARGUMENT)
        assert failure.fields == [field]
    task = await create_task(api)
    await fails(stream(other_api, task_id=task.id).read(), grpc.StatusCode.NOT_FOUND)
    await fails(api.history.StreamTimeline(history_pb2.StreamTimelineRequest()).read(), grpc.StatusCode.UNAUTHENTICATED)


async def test_exactly_once_in_order_across_random_reconnects_with_concurrent_writers(api: Api) -> None:
    writers, per_writer = 4, 30
    total = writers * per_writer
    rng = random.Random(7)

    async def writer(n: int) -> None:
        task = await create_task(api, f"writer {n}")
        for i in range(1, per_writer):
            await append_messages(api, task.id, i - 1, f"{n}/{i}")

    seen: list[int] = []

    async def reader() -> None:
        last = 0
        while len(seen) < total:
            call = stream(api, after_cursor=last, keep_alive_seconds=1)
            quota = rng.randint(1, 15)
            try:
                while quota and len(seen) < total:
                    item = await asyncio.wait_for(call.read(), 20)
                    assert item is not aio.EOF
                    if item.HasField("event"):
                        seen.append(item.event.cursor)
                        last = item.event.cursor
                        quota -= 1
                    else:
                        last = max(last, getattr(item, item.WhichOneof("item")).cursor)
            finally:
                call.cancel()
            await asyncio.sleep(rng.random() / 50)

    await asyncio.gather(reader(), *(writer(n) for n in range(writers)))
    assert seen == list(range(1, total + 1))


async def test_cancelled_streams_unsubscribe(api: Api, server: App) -> None:
    before = server.hub.subscriber_count
    calls = [stream(api, keep_alive_seconds=1) for _ in range(3)]
    await asyncio.gather(*(c.read() for c in calls))  # each got a keep-alive (or event): subscribed
    assert server.hub.subscriber_count == before + 3
    for c in calls:
        c.cancel()
    for _ in range(100):
        if server.hub.subscriber_count == before:
            break
        await asyncio.sleep(0.05)
    assert server.hub.subscriber_count == before


async def test_followers_that_leave_mid_replay_give_back_their_turn(api: Api, server: App) -> None:
    """Replays of one owner take turns (REPLAYS_PER_OWNER at once); streams cancelled while their replay
    is held up by an unread window must give their turn back, or later followers never replay."""
    events = [NewHistoryEvent(kind="contract_created", summary=f"{i} " + "x" * 2_000) for i in range(200)]
    async with server.runtime.db.write() as session:
        await timeline.append(session, owner_id=api.owner_id, events=events, now=utcnow())
    stalled = [stream(api) for _ in range(REPLAYS_PER_OWNER + 1)]
    await asyncio.gather(*(next_event(call) for call in stalled))  # then read no more: their windows fill
    for call in stalled:
        call.cancel()
    call = stream(api)
    assert [(await next_event(call)).cursor for _ in events] == list(range(1, len(events) + 1))
    call.cancel()


async def read_until(call: aio.UnaryStreamCall, cursor: int) -> tuple[list[int], list[int], int]:
    """Cursors of the events read up to `cursor` and past the end-of-replay marker, the number of events
    in each message, and how many events came before that marker."""
    cursors: list[int] = []
    sizes: list[int] = []
    replayed = -1
    while replayed == -1 or not cursors or cursors[-1] < cursor:
        item = await asyncio.wait_for(call.read(), 30)
        assert item is not aio.EOF, "stream ended"
        which = item.WhichOneof("item")
        if which == "replay_ended":
            assert replayed == -1, "a second end-of-replay marker"
            replayed = len(cursors)
        elif which in ("event", "events"):
            events = [item.event] if which == "event" else list(item.events.events)
            assert events, "an empty batch"
            sizes.append(len(events))
            cursors.extend(e.cursor for e in events)
    call.cancel()
    return cursors, sizes, replayed


async def test_batched_and_single_followers_replaying_shared_chunks_see_the_same_events(api: Api, server: App) -> None:
    """Past events are read by chunks that every stream replaying them shares; each stream still gets
    every event once, in order, one per message or in batches of at most what it asked."""
    history = 1_234  # two whole chunks and a part of one
    events = [NewHistoryEvent(kind="contract_created", summary=f"{i}") for i in range(history)]
    async with server.runtime.db.write() as session:
        await timeline.append(session, owner_id=api.owner_id, events=events, now=utcnow())
    calls = [
        *(stream(api, max_events_per_message=100) for _ in range(3)),
        *(stream(api) for _ in range(3)),
        stream(api, after_cursor=777, max_events_per_message=500),
        stream(api, kinds=[resources_pb2.TIMELINE_EVENT_KIND_CONTRACT_CREATED], max_events_per_message=7),
    ]
    readers = [asyncio.create_task(read_until(call, history + 1)) for call in calls]
    await asyncio.sleep(0.5)
    await create_contract(api, "live")  # one more event, delivered live to all
    results = await asyncio.gather(*readers)
    everything = list(range(1, history + 2))
    for (cursors, sizes, replayed), limit in zip(results, [100] * 3 + [1] * 3 + [500, 7], strict=True):
        assert cursors == (everything if cursors[0] == 1 else list(range(778, history + 2)))
        assert max(sizes) <= limit
        assert 0 < replayed <= len(cursors)
    assert results[6][0][0] == 778
    assert max(results[0][1]) == 100  # the replay did come in full batches


async def test_server_shutdown_ends_streams_cleanly(empty_database_url: str, tmp_path: Path) -> None:
    app = await start(Settings(listen="127.0.0.1:0", database_url=empty_database_url, workspace_root=tmp_path))
    key = await create_api_key(app.runtime, owner_id=uuid.uuid4())
    async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        api = Api(channel=channel, owner_id=key.owner_id, key=key.secret)
        await create_contract(api)
        call = stream(api)
        assert (await next_event(call)).cursor == 1
        assert (await asyncio.wait_for(call.read(), 10)).HasField("replay_ended")
        await app.stop(5)
        assert await asyncio.wait_for(call.read(), 10) is aio.EOF
        assert await call.code() == grpc.StatusCode.OK


@pytest.mark.postgresql_only
async def test_a_commit_on_one_process_wakes_streams_on_another(database_url: str, api: Api, tmp_path: Path) -> None:
    """Two server processes on one PostgreSQL database: LISTEN/NOTIFY carries the wake-up.

    The second process re-checks the database only every 60 s, so delivery within seconds proves the
    notification path.
    """
    port = free_port()
    env = os.environ | {
        "MAKIMA_LISTEN": f"127.0.0.1:{port}",
        "MAKIMA_DATABASE_URL": database_url,
        "MAKIMA_TIMELINE_RECHECK_SECONDS": "60",
        "MAKIMA_KEEP_ALIVE_SECONDS": "60",
    }
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "makima-server"), "serve", env=env, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            remote = Api(channel=channel, owner_id=api.owner_id, key=api.key)
            call = stream(remote)
            first = await create_contract(api, "written on process one")
            assert (await next_event(call)).contract_id == first.id
            await asyncio.sleep(1.5)  # past the first re-check: from now on only a notification wakes it
            second = await create_contract(api, "written later")
            event = await asyncio.wait_for(next_event(call), 5)
            assert event.contract_id == second.id
            call.cancel()
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)


async def test_a_missed_notification_is_caught_by_the_periodic_recheck(empty_database_url: str, tmp_path: Path) -> None:
    """A commit that notifies nobody (no listener, another runtime) still reaches the stream."""
    app = await start(
        Settings(
            listen="127.0.0.1:0",
            database_url=empty_database_url,
            workspace_root=tmp_path,
            timeline_recheck_seconds=0.5,
        )
    )
    if app.listener is not None:
        await app.listener.stop()
    silent = Runtime(Database(empty_database_url))  # commits through it wake no stream
    key = await create_api_key(app.runtime, owner_id=uuid.uuid4())
    principal = Principal(owner_id=key.owner_id, api_key_id=key.key_id)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            api = Api(channel=channel, owner_id=key.owner_id, key=key.secret)
            call = stream(api, keep_alive_seconds=60)
            await create_contract(api, "notified")
            assert (await next_event(call)).cursor == 1
            await silent.mutate(
                principal, lambda tx: contracts.create_contract(tx, contracts.CreateContractInput(name="silent"))
            )
            event = await asyncio.wait_for(next_event(call), 5)
            assert (event.cursor, event.data["name"]) == (2, "silent")
            call.cancel()
    finally:
        await silent.db.dispose()
        await app.stop(1)
