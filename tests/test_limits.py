"""Every request field is checked before any servicer runs: NUL characters, sizes, Struct payloads,
Timestamps and Durations (see protos/makima/v1/limits.proto).

The string, repeated and time fields are enumerated from the service descriptors, so a field added
to the API is covered here without an edit.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from makima.server.api.checks import DEFAULT_LIMITS
from makima.v1 import daemon_pb2, history_pb2, limits_pb2, resources_pb2, supervisor_pb2, task_fork_pb2
from tests.helpers import Api, create_task, fails

SERVICES = [
    module.DESCRIPTOR.services_by_name[name]
    for module, name in (
        (history_pb2, "HistoryService"),
        (supervisor_pb2, "SupervisorService"),
        (task_fork_pb2, "TaskForkService"),
        (daemon_pb2, "DaemonService"),
    )
]
METHODS = [method for service in SERVICES for method in service.methods]
WELL_KNOWN = ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue")

Setter = Callable[[Message, Any], None]


def _leaves(
    descriptor: Descriptor, want: Callable[[FieldDescriptor], bool]
) -> Iterator[tuple[str, FieldDescriptor, Setter]]:
    """(field path, field, setter) of every field that `want` selects, nested messages included
    (a repeated message through its first element)."""
    for field in descriptor.fields:
        if want(field):
            if field.is_repeated:
                yield f"{field.name}[0]", field, lambda m, v, f=field: getattr(m, f.name).append(v)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                yield field.name, field, lambda m, v, f=field: getattr(m, f.name).CopyFrom(v)
            else:
                yield field.name, field, lambda m, v, f=field: setattr(m, f.name, v)
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not field.message_type.full_name.startswith("google."):
            for path, leaf, setter in _leaves(field.message_type, want):
                if field.is_repeated:
                    yield f"{field.name}[0].{path}", leaf, lambda m, v, f=field, s=setter: s(_first(m, f.name), v)
                else:
                    yield f"{field.name}.{path}", leaf, lambda m, v, f=field, s=setter: s(getattr(m, f.name), v)


def _first(message: Message, name: str) -> Message:
    items = getattr(message, name)
    return items[0] if items else items.add()


def _cases(want: Callable[[FieldDescriptor], bool]) -> list[Any]:
    return [
        pytest.param(method, path, field, setter, id=f"{method.name}.{path}")
        for method in METHODS
        for path, field, setter in _leaves(method.input_type, want)
    ]


def _is_string(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_STRING


def _is_timestamp(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.full_name == "google.protobuf.Timestamp"


def _max_length(field: FieldDescriptor) -> int:
    options = field.GetOptions()
    if options.HasExtension(limits_pb2.max_length):
        return int(options.Extensions[limits_pb2.max_length])
    return int(DEFAULT_LIMITS.max_string_length)


async def call(api: Api, method: MethodDescriptor, request: Message) -> Any:
    """Call `method` through its generated stub (a client stream sends `request` as its one message;
    a server stream is read up to its first message)."""
    stub = {
        "HistoryService": api.history,
        "SupervisorService": api.supervisor,
        "TaskForkService": api.tasks,
        "DaemonService": api.daemon,
    }[method.containing_service.name]
    rpc = getattr(stub, method.name)
    if method.client_streaming:

        async def one() -> AsyncIterator[Message]:
            yield request

        return await rpc(one(), metadata=api.md, timeout=10)
    if method.server_streaming:
        async for item in rpc(request, metadata=api.md, timeout=10):
            return item
        return None
    return await rpc(request, metadata=api.md, timeout=10)


def new_request(method: MethodDescriptor) -> Message:
    return GetMessageClass(method.input_type)()


@pytest.mark.parametrize(("method", "path", "field", "setter"), _cases(_is_string))
async def test_every_string_refuses_nul_and_its_length_limit(
    api: Api, method: MethodDescriptor, path: str, field: FieldDescriptor, setter: Setter
) -> None:
    request = new_request(method)
    setter(request, "a\x00b")
    failure = await fails(call(api, method, request), grpc.StatusCode.INVALID_ARGUMENT, reason="NUL_CHARACTER")
    assert failure.fields == [path]

    limit = _max_length(field)
    request = new_request(method)
    setter(request, "x" * (limit + 1))
    failure = await fails(call(api, method, request), grpc.StatusCode.INVALID_ARGUMENT, reason="LIMIT_EXCEEDED")
    assert failure.fields == [path]
    assert failure.metadata == {"field": path, "limit": "max_length", "max": str(limit)}


@pytest.mark.parametrize(("method", "path", "field", "setter"), _cases(_is_timestamp))
@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [
        (253_402_300_800, 0),  # 10000-01-01T00:00:00Z
        (0, -1),
        (0, 1_000_000_000),
        (-62_135_596_801, 0),  # one second before 0001-01-01
        (-(2**63), 0),
    ],
)
async def test_every_timestamp_must_be_in_protobuf_range(
    api: Api, method: MethodDescriptor, path: str, field: FieldDescriptor, setter: Setter, seconds: int, nanos: int
) -> None:
    request = new_request(method)
    setter(request, timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos))
    failure = await fails(call(api, method, request), grpc.StatusCode.INVALID_ARGUMENT, reason="TIMESTAMP_OUT_OF_RANGE")
    assert failure.fields == [path]


def test_the_enumeration_finds_the_fields_of_the_issue() -> None:
    """The time filters, event_time and the texts that PostgreSQL refused are among the checked fields."""
    times = {f"{m.name}.{p}" for m in METHODS for p, _, _ in _leaves(m.input_type, _is_timestamp)}
    assert {
        "GetContractHistory.start_time",
        "GetContractHistory.end_time",
        "ListTaskEvents.start_time",
        "ListTaskEvents.end_time",
        "ListTimeline.start_time",
        "ListTimeline.end_time",
        "RecordTaskEvents.events[0].event_time",
    } <= times
    texts = {f"{m.name}.{p}" for m in METHODS for p, _, _ in _leaves(m.input_type, _is_string)}
    assert {
        "CreateContract.name",
        "CreateContract.description",
        "CreateContract.initial_phase",
        "AdvancePhase.phase",
        "StartSupervisor.instructions",
        "CreateTask.name",
        "CreateTask.instructions",
        "CreateTask.worktree.repository",
        "ContinueTask.instructions",
        "ForkTask.branch_name",
        "CreateCheckpoint.message",
        "AppendMessages.messages[0].content",
        "RecordTaskEvents.events[0].text",
        "RegisterDaemon.name",
        "RegisterDaemon.hostname",
        "ReportTaskStatus.message",
        "GetContractHistory.phase",
    } <= texts


async def test_timestamps_at_the_ends_of_the_range_are_accepted(api: Api) -> None:
    first = timestamp_pb2.Timestamp(seconds=-62_135_596_800)
    last = timestamp_pb2.Timestamp(seconds=253_402_300_799, nanos=999_999_999)
    listed = await api.history.ListTimeline(
        history_pb2.ListTimelineRequest(start_time=first, end_time=last), metadata=api.md
    )
    assert list(listed.events) == []
    task = await create_task(api)
    events = [resources_pb2.NewTaskEvent(sequence=i + 1, kind=1, event_time=t) for i, t in enumerate((first, last))]

    async def one() -> AsyncIterator[daemon_pb2.RecordTaskEventsRequest]:
        yield daemon_pb2.RecordTaskEventsRequest(task_id=task.id, events=events)

    recorded = await api.daemon.RecordTaskEvents(one(), metadata=api.md)
    assert recorded.stored_count == 2
    listed_events = await api.history.ListTaskEvents(
        history_pb2.ListTaskEventsRequest(task_id=task.id), metadata=api.md
    )
    stored = [e.event_time.ToDatetime() for e in listed_events.events]
    assert stored == [first.ToDatetime(), last.ToDatetime()]  # microseconds are what the store keeps


async def test_a_duration_outside_protobuf_range_is_refused(api: Api) -> None:
    for wait in ({"seconds": 315_576_000_001}, {"seconds": 1, "nanos": -1}, {"nanos": 1_000_000_000}):
        request = daemon_pb2.ClaimTaskRequest(daemon_id="00000000-0000-4000-8000-000000000000")
        request.wait.seconds = wait.get("seconds", 0)
        request.wait.nanos = wait.get("nanos", 0)
        failure = await fails(
            api.daemon.ClaimTask(request, metadata=api.md),
            grpc.StatusCode.INVALID_ARGUMENT,
            reason="DURATION_OUT_OF_RANGE",
        )
        assert failure.fields == ["wait"]


# -- Struct payloads -----------------------------------------------------------------------------


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


def _nested(depth: int) -> dict[str, Any]:
    """A Struct `depth` levels deep: {"a": {"a": ... {"leaf": 1}}}."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def _append(task_id: str, metadata: struct_pb2.Struct) -> daemon_pb2.AppendMessagesRequest:
    return daemon_pb2.AppendMessagesRequest(
        task_id=task_id,
        messages=[
            resources_pb2.NewConversationMessage(role=resources_pb2.MESSAGE_ROLE_USER, content="hi", metadata=metadata)
        ],
    )


async def _record(api: Api, task_id: str, data: struct_pb2.Struct) -> Any:
    async def one() -> AsyncIterator[daemon_pb2.RecordTaskEventsRequest]:
        yield daemon_pb2.RecordTaskEventsRequest(
            task_id=task_id, events=[resources_pb2.NewTaskEvent(sequence=1, kind=1, data=data)]
        )

    return await api.daemon.RecordTaskEvents(one(), metadata=api.md)


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
async def test_nan_and_infinity_in_a_struct_are_refused_naming_the_value(api: Api, number: float) -> None:
    task = await create_task(api)
    metadata = _struct({"tool": {"scores": [1.0, number]}})
    failure = await fails(
        api.daemon.AppendMessages(_append(task.id, metadata), metadata=api.md),
        grpc.StatusCode.INVALID_ARGUMENT,
        reason="NOT_FINITE",
    )
    assert failure.fields == ["messages[0].metadata.tool.scores[1]"]
    failure = await fails(
        _record(api, task.id, _struct({"x": number})), grpc.StatusCode.INVALID_ARGUMENT, reason="NOT_FINITE"
    )
    assert failure.fields == ["events[0].data.x"]
    assert (
        await api.tasks.GetTask(task_fork_pb2.GetTaskRequest(task_id=task.id), metadata=api.md)
    ).task.message_count == 0


async def test_nul_in_a_struct_key_or_string_is_refused(api: Api) -> None:
    task = await create_task(api)
    failure = await fails(
        _record(api, task.id, _struct({"foo": "a\x00b"})), grpc.StatusCode.INVALID_ARGUMENT, reason="NUL_CHARACTER"
    )
    assert failure.fields == ["events[0].data.foo"]
    failure = await fails(
        api.daemon.AppendMessages(_append(task.id, _struct({"k\x00": 1})), metadata=api.md),
        grpc.StatusCode.INVALID_ARGUMENT,
        reason="NUL_CHARACTER",
    )
    assert failure.fields == ["messages[0].metadata"]


async def test_struct_depth_is_bounded(api: Api) -> None:
    task = await create_task(api)
    depth = DEFAULT_LIMITS.max_struct_depth
    appended = await api.daemon.AppendMessages(_append(task.id, _struct(_nested(depth))), metadata=api.md)
    assert appended.next_index == 1
    failure = await fails(
        api.daemon.AppendMessages(_append(task.id, _struct(_nested(depth + 1))), metadata=api.md),
        grpc.StatusCode.INVALID_ARGUMENT,
        reason="LIMIT_EXCEEDED",
    )
    assert failure.metadata["limit"] == "max_struct_depth"
    assert failure.metadata["max"] == str(depth)
    assert failure.fields[0].startswith("messages[0].metadata.a.a")


async def test_struct_payload_size_is_bounded(api: Api) -> None:
    task = await create_task(api)
    limit = DEFAULT_LIMITS.max_struct_bytes
    big = _struct({"blob": "x" * limit})
    failure = await fails(_record(api, task.id, big), grpc.StatusCode.INVALID_ARGUMENT, reason="LIMIT_EXCEEDED")
    assert failure.fields == ["events[0].data"]
    assert failure.metadata["limit"] == "max_bytes"
    assert failure.metadata["max"] == str(limit)
    fits = _struct({"blob": "x" * (limit - 100)})
    assert (await _record(api, task.id, fits)).stored_count == 1


# -- repeated fields -------------------------------------------------------------------------------


def _max_items(field: FieldDescriptor) -> int:
    options = field.GetOptions()
    if options.HasExtension(limits_pb2.max_items):
        return int(options.Extensions[limits_pb2.max_items])
    return int(DEFAULT_LIMITS.max_items)


@pytest.mark.parametrize(
    ("method", "field_name", "item"),
    [
        (daemon_pb2.DESCRIPTOR.services_by_name["DaemonService"].methods_by_name["Heartbeat"], "task_ids", "x"),
        (
            daemon_pb2.DESCRIPTOR.services_by_name["DaemonService"].methods_by_name["AppendMessages"],
            "messages",
            resources_pb2.NewConversationMessage(role=resources_pb2.MESSAGE_ROLE_USER),
        ),
        (
            daemon_pb2.DESCRIPTOR.services_by_name["DaemonService"].methods_by_name["RecordTaskEvents"],
            "events",
            resources_pb2.NewTaskEvent(sequence=1, kind=1),
        ),
        (history_pb2.DESCRIPTOR.services_by_name["HistoryService"].methods_by_name["ListTimeline"], "kinds", 1),
        (daemon_pb2.DESCRIPTOR.services_by_name["DaemonService"].methods_by_name["ClaimTask"], "kinds", 1),
    ],
    ids=["task_ids", "messages", "events", "timeline_kinds", "claim_kinds"],
)
async def test_repeated_fields_are_bounded(api: Api, method: MethodDescriptor, field_name: str, item: Any) -> None:
    limit = _max_items(method.input_type.fields_by_name[field_name])
    request = new_request(method)
    getattr(request, field_name).extend([item] * (limit + 1))
    failure = await fails(call(api, method, request), grpc.StatusCode.INVALID_ARGUMENT, reason="LIMIT_EXCEEDED")
    assert failure.metadata == {"field": field_name, "limit": "max_items", "max": str(limit)}


async def test_values_at_their_limit_are_accepted(api: Api) -> None:
    name = "n" * 500
    created = await api.tasks.CreateTask(
        task_fork_pb2.CreateTaskRequest(name=name, instructions="i" * 100_000), metadata=api.md
    )
    assert created.task.name == name
    appended = await api.daemon.AppendMessages(
        daemon_pb2.AppendMessagesRequest(
            task_id=created.task.id,
            messages=[resources_pb2.NewConversationMessage(role=resources_pb2.MESSAGE_ROLE_USER, content="c")] * 1000,
        ),
        metadata=api.md,
    )
    assert appended.next_index == 1000


async def test_names_derived_from_a_name_at_its_limit_still_fit(api: Api) -> None:
    """A fork or continuation of a task named with 500 characters gets a name that the store holds."""
    task = await create_task(api, "n" * 500)
    await api.daemon.AppendMessages(
        daemon_pb2.AppendMessagesRequest(
            task_id=task.id, messages=[resources_pb2.NewConversationMessage(role=resources_pb2.MESSAGE_ROLE_USER)]
        ),
        metadata=api.md,
    )
    forked = await api.tasks.ForkTask(task_fork_pb2.ForkTaskRequest(task_id=task.id, message_index=0), metadata=api.md)
    assert len(forked.task.name) == 500 and forked.task.name.endswith("n (fork)")
    continued = await api.tasks.ContinueTask(task_fork_pb2.ContinueTaskRequest(task_id=task.id), metadata=api.md)
    assert len(continued.task.name) == 500 and continued.task.name.endswith("n (continued)")
    contract = await api.supervisor.CreateContract(
        supervisor_pb2.CreateContractRequest(name="c" * 500), metadata=api.md
    )
    started = await api.supervisor.StartSupervisor(
        supervisor_pb2.StartSupervisorRequest(contract_id=contract.contract.id), metadata=api.md
    )
    assert len(started.supervisor_task.name) == 500 and started.supervisor_task.name.startswith("supervisor of ccc")


async def test_a_request_over_4_mib_is_resource_exhausted(api: Api) -> None:
    """gRPC's own bound on a received message, documented in limits.proto."""
    request = supervisor_pb2.CreateContractRequest(name="big", description="d" * (5 * 1024 * 1024))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.supervisor.CreateContract(request, metadata=api.md)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# -- the limits are documented where they are declared -------------------------------------------------


def test_every_declared_limit_is_stated_in_its_field_comment(repo_root: Path, tmp_path: Path) -> None:
    """grpcurl describe and the generated docs show comments, not options: each must state its number."""
    out = tmp_path / "descriptors.binpb"
    protos = sorted(str(p.relative_to(repo_root / "protos")) for p in (repo_root / "protos/makima/v1").glob("*.proto"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{repo_root / 'protos'}",
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *protos,
        ],
        check=True,
        cwd=repo_root,
    )
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    declared = 0
    for file in files.file:
        if not file.name.startswith("makima/"):
            continue
        comments = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location}
        for m_index, message in enumerate(file.message_type):
            for f_index, field in enumerate(message.field):
                options = field.options
                for ext in (limits_pb2.max_length, limits_pb2.max_items, limits_pb2.max_bytes):
                    if options.HasExtension(ext):
                        declared += 1
                        comment = comments.get((4, m_index, 2, f_index), "")
                        number = str(options.Extensions[ext])
                        assert number in comment, f"{message.name}.{field.name}: comment does not state {number}"
    assert declared >= 20
