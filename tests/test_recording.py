"""DaemonService recording RPCs: RecordTaskEvents and AppendMessages, read back through HistoryService."""

from __future__ import annotations

import uuid

import grpc
import pytest

from makima.server.app import App
from makima.v1 import daemon_pb2, history_pb2, resources_pb2
from tests.helpers import Api, append_messages, create_contract, create_task, fails, record_events
from tests.test_contracts import timeline_of

OUTPUT = resources_pb2.TASK_EVENT_KIND_OUTPUT
TOOL_CALL = resources_pb2.TASK_EVENT_KIND_TOOL_CALL
TOOL_RESULT = resources_pb2.TASK_EVENT_KIND_TOOL_RESULT


async def test_events_are_stored_once_with_gaps_reported(api: Api, server: App) -> None:
    task = await create_task(api)
    first = await record_events(api, task.id, [(1, OUTPUT), (2, TOOL_CALL)], [(5, TOOL_RESULT)])
    assert (first.stored_count, first.duplicate_count, first.last_sequence) == (3, 0, 5)
    assert [(g.from_sequence, g.to_sequence) for g in first.gaps] == [(3, 4)]

    resent = await record_events(api, task.id, [(2, TOOL_CALL), (3, OUTPUT), (3, OUTPUT)])
    assert (resent.stored_count, resent.duplicate_count, resent.last_sequence) == (1, 2, 5)
    assert [(g.from_sequence, g.to_sequence) for g in resent.gaps] == [(4, 4)]

    listed = await api.history.ListTaskEvents(history_pb2.ListTaskEventsRequest(task_id=task.id), metadata=api.md)
    assert [(e.sequence, e.kind, e.text) for e in listed.events] == [
        (1, OUTPUT, "event 1"),
        (2, TOOL_CALL, "event 2"),
        (3, OUTPUT, "event 3"),
        (5, TOOL_RESULT, "event 5"),
    ]
    assert all(e.event_time.seconds > 0 and e.record_time.seconds > 0 for e in listed.events)

    recorded = [e for e in await timeline_of(server, api) if e.kind == "task_events_recorded"]
    assert [e.data["count"] for e in recorded] == [3, 1]  # one per call (one transaction each)


async def test_event_payloads_and_filters(api: Api) -> None:
    task = await create_task(api)
    request = daemon_pb2.RecordTaskEventsRequest(task_id=task.id)
    event = request.events.add(sequence=1, kind=TOOL_CALL, text="bash")
    event.data.update({"command": "ls -la", "args": [1, 2]})
    event.event_time.FromSeconds(1_700_000_000)
    request.events.add(sequence=2, kind=OUTPUT, text="done")

    async def one() -> object:
        yield request

    await api.daemon.RecordTaskEvents(one(), metadata=api.md)
    calls = await api.history.ListTaskEvents(
        history_pb2.ListTaskEventsRequest(task_id=task.id, kinds=[TOOL_CALL]), metadata=api.md
    )
    (call,) = calls.events
    assert dict(call.data) == {"command": "ls -la", "args": [1.0, 2.0]}
    assert call.event_time.seconds == 1_700_000_000
    late = history_pb2.ListTaskEventsRequest(task_id=task.id)
    late.start_time.FromSeconds(1_700_000_001)
    assert [e.sequence for e in (await api.history.ListTaskEvents(late, metadata=api.md)).events] == [2]


async def test_task_events_page_through(api: Api) -> None:
    task = await create_task(api)
    await record_events(api, task.id, [(s, OUTPUT) for s in range(1, 26)])
    seen, token = [], ""
    while True:
        page = await api.history.ListTaskEvents(
            history_pb2.ListTaskEventsRequest(task_id=task.id, page_size=10, page_token=token), metadata=api.md
        )
        seen += [e.sequence for e in page.events]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(range(1, 26))


@pytest.mark.parametrize(
    ("events", "field"),
    [
        ([resources_pb2.NewTaskEvent(sequence=0, kind=OUTPUT)], "events[0].sequence"),
        (
            [resources_pb2.NewTaskEvent(sequence=1, kind=OUTPUT), resources_pb2.NewTaskEvent(sequence=2)],
            "events[1].kind",
        ),
        ([resources_pb2.NewTaskEvent(sequence=1, kind=42)], "events[0].kind"),
    ],
)
async def test_bad_events_are_rejected_and_nothing_written(api: Api, events: list, field: str) -> None:
    task = await create_task(api)

    async def stream() -> object:
        yield daemon_pb2.RecordTaskEventsRequest(task_id=task.id, events=events)

    failure = await fails(api.daemon.RecordTaskEvents(stream(), metadata=api.md), grpc.StatusCode.INVALID_ARGUMENT)
    assert failure.fields == [field]
    listed = await api.history.ListTaskEvents(history_pb2.ListTaskEventsRequest(task_id=task.id), metadata=api.md)
    assert list(listed.events) == []


async def test_stream_must_name_one_task(api: Api) -> None:
    a, b = await create_task(api, "a"), await create_task(api, "b")
    failure = await fails(record_events_two(api, a.id, b.id), grpc.StatusCode.INVALID_ARGUMENT)
    assert failure.fields == ["task_id"]

    async def empty() -> object:
        return
        yield

    await fails(api.daemon.RecordTaskEvents(empty(), metadata=api.md), grpc.StatusCode.INVALID_ARGUMENT)


def record_events_two(api: Api, first: str, second: str) -> object:
    async def stream() -> object:
        yield daemon_pb2.RecordTaskEventsRequest(task_id=first, events=[resources_pb2.NewTaskEvent(sequence=1, kind=1)])
        yield daemon_pb2.RecordTaskEventsRequest(
            task_id=second, events=[resources_pb2.NewTaskEvent(sequence=1, kind=1)]
        )

    return api.daemon.RecordTaskEvents(stream(), metadata=api.md)


async def test_events_for_another_owners_task_are_not_found(api: Api, other_api: Api) -> None:
    task = await create_task(api)
    await fails(record_events(other_api, task.id, [(1, OUTPUT)]), grpc.StatusCode.NOT_FOUND)
    await fails(
        other_api.history.ListTaskEvents(history_pb2.ListTaskEventsRequest(task_id=task.id), metadata=other_api.md),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_append_messages_and_read_the_conversation(api: Api, server: App) -> None:
    task = await create_task(api)
    first = await append_messages(api, task.id, 0, "hello", "world")
    assert (first.task_id, first.first_index, first.next_index) == (task.id, 0, 2)
    second = await append_messages(api, task.id, 2, "again")
    assert (second.first_index, second.next_index) == (2, 3)

    conversation = await api.history.GetTaskConversation(
        history_pb2.GetTaskConversationRequest(task_id=task.id, page_size=2), metadata=api.md
    )
    assert conversation.message_count == 3
    assert [(m.index, m.content) for m in conversation.messages] == [(0, "hello"), (1, "world")]
    rest = await api.history.GetTaskConversation(
        history_pb2.GetTaskConversationRequest(task_id=task.id, page_size=2, page_token=conversation.next_page_token),
        metadata=api.md,
    )
    assert [(m.index, m.content, m.role) for m in rest.messages] == [(2, "again", resources_pb2.MESSAGE_ROLE_ASSISTANT)]
    assert rest.next_page_token == ""

    appended = [e for e in await timeline_of(server, api) if e.kind == "messages_appended"]
    assert [e.data for e in appended] == [
        {"count": 2, "first_index": 0, "next_index": 2},
        {"count": 1, "first_index": 2, "next_index": 3},
    ]


async def test_append_at_the_wrong_index_is_aborted_and_writes_nothing(api: Api, server: App) -> None:
    task = await create_task(api)
    await append_messages(api, task.id, 0, "one")
    before = await timeline_of(server, api)
    failure = await fails(
        append_messages(api, task.id, 0, "stale"), grpc.StatusCode.ABORTED, reason="CONVERSATION_CHANGED"
    )
    assert failure.metadata["message_count"] == "1"
    got = await api.history.GetTaskConversation(
        history_pb2.GetTaskConversationRequest(task_id=task.id), metadata=api.md
    )
    assert [m.content for m in got.messages] == ["one"]
    assert await timeline_of(server, api) == before


async def test_append_is_idempotent_with_request_id(api: Api) -> None:
    task = await create_task(api)
    request_id = str(uuid.uuid4())
    first = await append_messages(api, task.id, 0, "once", request_id=request_id)
    again = await append_messages(api, task.id, 0, "once", request_id=request_id)
    assert again == first
    got = await api.history.GetTaskConversation(
        history_pb2.GetTaskConversationRequest(task_id=task.id), metadata=api.md
    )
    assert got.message_count == 1


async def test_append_rejects_bad_input(api: Api, other_api: Api) -> None:
    task = await create_task(api)
    bad_role = daemon_pb2.AppendMessagesRequest(
        task_id=task.id, messages=[resources_pb2.NewConversationMessage(content="x")]
    )
    assert (
        await fails(api.daemon.AppendMessages(bad_role, metadata=api.md), grpc.StatusCode.INVALID_ARGUMENT)
    ).fields == ["messages[0].role"]
    empty = daemon_pb2.AppendMessagesRequest(task_id=task.id)
    assert (
        await fails(api.daemon.AppendMessages(empty, metadata=api.md), grpc.StatusCode.INVALID_ARGUMENT)
    ).fields == ["messages"]
    nowhere = daemon_pb2.AppendMessagesRequest(messages=[resources_pb2.NewConversationMessage(role=1)])
    assert (
        await fails(api.daemon.AppendMessages(nowhere, metadata=api.md), grpc.StatusCode.INVALID_ARGUMENT)
    ).fields == ["task_id"]
    await fails(append_messages(other_api, task.id, 0, "x"), grpc.StatusCode.NOT_FOUND)
    contract = await create_contract(api)
    supervisor = daemon_pb2.AppendMessagesRequest(
        contract_id=contract.id, messages=[resources_pb2.NewConversationMessage(role=1, content="x")]
    )
    await fails(
        api.daemon.AppendMessages(supervisor, metadata=api.md), grpc.StatusCode.NOT_FOUND, reason="NO_SUPERVISOR_STATE"
    )


async def test_a_call_is_one_transaction_within_its_bound(api: Api) -> None:
    """A call past MAX_EVENTS_PER_CALL is refused naming the limit, and nothing of it is stored."""
    task = await create_task(api)
    per_message = 10_000
    batches = [[(m * per_message + i + 1, OUTPUT) for i in range(per_message)] for m in range(11)]
    failure = await fails(record_events(api, task.id, *batches), grpc.StatusCode.INVALID_ARGUMENT)
    assert failure.reason == "LIMIT_EXCEEDED" and failure.fields == ["events"]
    assert "100000 events" in failure.message
    listed = await api.history.ListTaskEvents(history_pb2.ListTaskEventsRequest(task_id=task.id), metadata=api.md)
    assert list(listed.events) == []
