"""DaemonService: the daemon work loop (register, claim, heartbeat, report), what daemons record, and
the code of daemon-held worktrees (push a checkpoint, fetch objects)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import UTC, timedelta
from typing import Any

from google.protobuf import duration_pb2, json_format

from makima.server import telemetry
from makima.server.api import convert
from makima.server.api.base import Servicer
from makima.server.api.convert import enum_from_pb
from makima.server.api.interceptor import ServicerContext
from makima.server.api.paging import kinds
from makima.server.api.validate import text_field, uuid_field
from makima.server.domain import daemon_code, recording, work
from makima.server.domain.enums import MessageRole, TaskEventKind, TaskStatus
from makima.server.domain.errors import InvalidArgument
from makima.server.domain.runtime import Runtime
from makima.server.git.objects import is_object_id
from makima.v1 import daemon_pb2 as pb
from makima.v1 import daemon_pb2_grpc, resources_pb2

# A longer ClaimTask wait is shortened to this (no call holds the server longer; the daemon claims again).
MAX_CLAIM_WAIT_SECONDS = 60.0
# One RecordTaskEvents call is one transaction: its events are held until the stream ends.
MAX_EVENTS_PER_CALL = 100_000
MAX_BYTES_PER_CALL = 64 * 1024 * 1024
# A long-poll ends this long before the call's deadline, so that a claimed task reaches the daemon.
DEADLINE_MARGIN_SECONDS = 0.5


def _struct(message: Any, field: str) -> dict[str, Any] | None:
    return json_format.MessageToDict(getattr(message, field)) if message.HasField(field) else None


def _events(request: pb.RecordTaskEventsRequest) -> list[recording.NewEvent]:
    batch = []
    for i, e in enumerate(request.events):
        if e.sequence < 1:
            raise InvalidArgument.of(f"events[{i}].sequence", "must be >= 1")
        kind = enum_from_pb(resources_pb2.TaskEventKind, "TASK_EVENT_KIND", e.kind, TaskEventKind)
        if kind is None:
            raise InvalidArgument.of(f"events[{i}].kind", f"is not a valid task event kind ({e.kind})")
        batch.append(
            recording.NewEvent(
                sequence=e.sequence,
                kind=kind,
                text=e.text,
                data=_struct(e, "data"),
                event_time=e.event_time.ToDatetime(tzinfo=UTC) if e.HasField("event_time") else None,
            )
        )
    return batch


def _lease_token(lease: work.Lease) -> str:
    """The wire form of a lease: opaque to callers, it names the task and the claim's epoch."""
    return f"{lease.task_id}.{lease.epoch}"


def _lease(token: str) -> work.Lease | None:
    """The lease a request's `lease_token` names; None when it carries none (a tool)."""
    if not token:
        return None
    task_id, _, epoch = token.partition(".")
    try:
        lease = work.Lease(task_id=uuid.UUID(task_id), epoch=int(epoch))
    except ValueError:
        lease = None
    if lease is None or lease.epoch < 1 or token != _lease_token(lease):
        raise InvalidArgument.of("lease_token", f"is not a lease token handed out by ClaimTask: {token[:100]!r}")
    return lease


def _conversation_target(request: Any) -> dict[str, uuid.UUID]:
    which = request.WhichOneof("conversation")
    if which is None:
        raise InvalidArgument.of("task_id", "set task_id or contract_id")
    return {which: uuid_field(getattr(request, which), which)}


def _claim_wait(request: pb.ClaimTaskRequest, context: ServicerContext) -> float:
    """Seconds the claim may wait: the requested wait, bounded by the maximum and the call deadline."""
    wait = request.wait
    if wait.seconds < 0 or not 0 <= wait.nanos < 1_000_000_000:
        raise InvalidArgument.of("wait", "must be a non-negative duration")
    seconds = min(wait.seconds + wait.nanos / 1e9, MAX_CLAIM_WAIT_SECONDS)
    remaining = context.time_remaining()
    if remaining is not None:
        seconds = min(seconds, max(0.0, remaining - DEADLINE_MARGIN_SECONDS))
    return seconds


def _final_status(request: pb.ReportTaskStatusRequest) -> TaskStatus:
    status = enum_from_pb(resources_pb2.TaskStatus, "TASK_STATUS", request.status, TaskStatus)
    if status is None or status not in work.FINAL_STATUSES:
        raise InvalidArgument.of("status", f"must be COMPLETED, FAILED or INTERRUPTED ({request.status})")
    return status


def _claimed(claimed: work.ClaimedTask | None) -> pb.ClaimTaskResponse:
    if claimed is None:
        return pb.ClaimTaskResponse()
    task = claimed.task
    worktree = None
    if task.placement:
        worktree = pb.ClaimedWorktree(
            placement=convert.enum_to_pb(resources_pb2.WorktreePlacement, "WORKTREE_PLACEMENT", task.placement),
            branch=task.branch or "",
            start_commit_sha=task.head_commit_sha or "",
            branches=[pb.ClaimedBranch(name=b.name, commit_sha=b.commit_sha) for b in claimed.branches],
        )
    return pb.ClaimTaskResponse(
        claimed=pb.ClaimedTask(
            task=convert.task(task),
            phase=claimed.phase or "",
            conversation=[convert.message(row) for row in claimed.conversation],
            last_event_sequence=claimed.last_event_sequence,
            lease_token=_lease_token(claimed.lease),
            worktree=worktree,
        ),
        lease_expire_time=convert.ts(task.lease_expire_time),
    )


def _sha(value: str, name: str, *, required: bool = True) -> str:
    """A commit sha field: 40 lowercase hex digits (empty when not required)."""
    if not value and not required:
        return ""
    if not is_object_id(value):
        raise InvalidArgument.of(name, f"must be a full commit sha, 40 lowercase hex digits: {value[:64]!r}")
    return value


def _push_input(request: pb.PushCheckpointRequest | None, max_pack_bytes: int) -> daemon_code.PushInput:
    if request is None or request.WhichOneof("part") != "header":
        raise InvalidArgument.of("header", "the first message of the stream must carry the header")
    header = request.header
    if not 0 <= header.pack_size <= max_pack_bytes:
        error = InvalidArgument.of("header.pack_size", f"must be between 0 and {max_pack_bytes} bytes")
        error.metadata.update(limit="max_pack_bytes", max=str(max_pack_bytes))
        raise error
    return daemon_code.PushInput(
        task_id=uuid_field(header.task_id, "header.task_id"),
        lease=_lease(header.lease_token),
        commit_sha=_sha(header.commit_sha, "header.commit_sha"),
        parent_commit_sha=_sha(header.parent_commit_sha, "header.parent_commit_sha", required=False),
        message=text_field(header.message, "header.message", required=False) or "checkpoint",
        pack_size=header.pack_size,
    )


async def _pack_chunks(requests: AsyncIterator[pb.PushCheckpointRequest]) -> AsyncIterator[bytes]:
    """The pack slices of a push, after its header."""
    async for request in requests:
        if request.WhichOneof("part") != "pack_chunk":
            raise InvalidArgument.of("header", "only the first message of the stream carries the header")
        yield request.pack_chunk


def _fetch_input(request: pb.FetchObjectsRequest) -> daemon_code.FetchInput:
    task_id = uuid_field(request.task_id, "task_id") if request.task_id else None
    want = _sha(request.want_commit_sha, "want_commit_sha", required=False) or None
    if task_id is None and want is None:
        raise InvalidArgument.of("want_commit_sha", "set want_commit_sha or task_id")
    haves = tuple(_sha(h, f"have_commit_shas[{i}]") for i, h in enumerate(request.have_commit_shas))
    return daemon_code.FetchInput(task_id=task_id, want_commit_sha=want, have_commit_shas=haves)


def _events_recorded(done: recording.EventsRecorded) -> pb.RecordTaskEventsResponse:
    return pb.RecordTaskEventsResponse(
        stored_count=done.stored,
        duplicate_count=done.duplicates,
        last_sequence=done.summary.last_sequence,
        gaps=[pb.SequenceGap(from_sequence=a, to_sequence=b) for a, b in done.summary.gaps],
    )


class DaemonServicer(Servicer, daemon_pb2_grpc.DaemonServiceServicer):
    def __init__(self, rt: Runtime, *, lease_seconds: float, recheck: float) -> None:
        super().__init__(rt)
        self.lease = timedelta(seconds=lease_seconds)
        self.recheck = recheck

    async def RegisterDaemon(
        self, request: pb.RegisterDaemonRequest, context: ServicerContext
    ) -> pb.RegisterDaemonResponse:
        inp = work.RegisterDaemonInput(
            name=text_field(request.name, "name"),
            hostname=text_field(request.hostname, "hostname", required=False),
        )
        lease = duration_pb2.Duration()
        lease.FromTimedelta(self.lease)
        return await self.mutate(
            request,
            pb.RegisterDaemonResponse,
            work.register_daemon,
            inp,
            lambda daemon: pb.RegisterDaemonResponse(daemon=convert.daemon(daemon), lease_duration=lease),
        )

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: ServicerContext) -> pb.HeartbeatResponse:
        inp = work.HeartbeatInput(
            daemon_id=uuid_field(request.daemon_id, "daemon_id"),
            task_ids=tuple(uuid_field(t, f"task_ids[{i}]") for i, t in enumerate(request.task_ids)),
            lease=self.lease,
        )
        return await self.mutate(
            None,
            pb.HeartbeatResponse,
            work.heartbeat,
            inp,
            lambda renewal: pb.HeartbeatResponse(
                lease_expire_time=convert.ts(renewal.lease_expire_time),
                lost_task_ids=[str(t) for t in renewal.lost_task_ids],
            ),
        )

    async def ClaimTask(self, request: pb.ClaimTaskRequest, context: ServicerContext) -> pb.ClaimTaskResponse:
        """Not idempotent (the request has no request_id): a retried claim may take a second task."""
        inp = work.ClaimTaskInput(
            daemon_id=uuid_field(request.daemon_id, "daemon_id"),
            kinds=kinds(request.kinds, resources_pb2.TaskKind, "TASK_KIND"),
            lease=self.lease,
            wait=_claim_wait(request, context),
            recheck=self.recheck,
        )
        claimed = await self.call(work.claim_task, inp)
        if claimed is not None and telemetry.METRICS is not None:
            telemetry.METRICS.claims.inc()
        return _claimed(claimed)

    async def ReportTaskStatus(
        self, request: pb.ReportTaskStatusRequest, context: ServicerContext
    ) -> pb.ReportTaskStatusResponse:
        inp = work.ReportTaskStatusInput(
            daemon_id=uuid_field(request.daemon_id, "daemon_id"),
            task_id=uuid_field(request.task_id, "task_id"),
            status=_final_status(request),
            message=text_field(request.message, "message", required=False),
            lease=_lease(request.lease_token),
        )
        return await self.mutate(
            request,
            pb.ReportTaskStatusResponse,
            work.report_task_status,
            inp,
            lambda task: pb.ReportTaskStatusResponse(task=convert.task(task)),
        )

    async def RecordTaskEvents(
        self, request_iterator: AsyncIterator[pb.RecordTaskEventsRequest], context: ServicerContext
    ) -> pb.RecordTaskEventsResponse:
        """The whole stream is stored in one transaction once it ends: all or nothing.

        Each message is checked as it arrives (a bad one ends the call at once) and its events are
        held in memory, within MAX_EVENTS_PER_CALL and MAX_BYTES_PER_CALL, so that no lock is held
        while a slow client streams.
        """
        task_id: uuid.UUID | None = None
        token = ""
        lease: work.Lease | None = None
        batch: list[recording.NewEvent] = []
        received = 0
        async for request in request_iterator:
            this_task = uuid_field(request.task_id, "task_id")
            if task_id is not None and this_task != task_id:
                raise InvalidArgument.of("task_id", "every message of one stream must name the same task")
            if task_id is not None and request.lease_token != token:
                raise InvalidArgument.of("lease_token", "every message of one stream must carry the same token")
            task_id, token = this_task, request.lease_token
            lease = _lease(token)
            received += request.ByteSize()
            batch.extend(_events(request))
            if len(batch) > MAX_EVENTS_PER_CALL or received > MAX_BYTES_PER_CALL:
                raise InvalidArgument.of(
                    "events",
                    f"a call carries at most {MAX_EVENTS_PER_CALL} events and {MAX_BYTES_PER_CALL} bytes: "
                    "send the rest in another call",
                    reason="LIMIT_EXCEEDED",
                )
        if task_id is None:
            raise InvalidArgument.of("task_id", "the stream carried no message")
        if batch:
            inp = recording.RecordTaskEventsInput(task_id=task_id, batch=batch, lease=lease)
            return await self.mutate(
                None, pb.RecordTaskEventsResponse, recording.record_task_events, inp, _events_recorded
            )
        summary = await self.call(recording.summarize_task_events, recording.SummarizeTaskEventsInput(task_id=task_id))
        return _events_recorded(recording.EventsRecorded(stored=0, duplicates=0, summary=summary))

    async def AppendMessages(
        self, request: pb.AppendMessagesRequest, context: ServicerContext
    ) -> pb.AppendMessagesResponse:
        target = _conversation_target(request)
        if request.expected_next_index < 0:
            raise InvalidArgument.of("expected_next_index", "must not be negative")
        if not request.messages:
            raise InvalidArgument.of("messages", "at least one message is required")
        messages = []
        for i, m in enumerate(request.messages):
            role = enum_from_pb(resources_pb2.MessageRole, "MESSAGE_ROLE", m.role, MessageRole)
            if role is None:
                raise InvalidArgument.of(f"messages[{i}].role", f"is not a valid role ({m.role})")
            messages.append(recording.NewMessage(role=role, content=m.content, metadata=_struct(m, "metadata")))
        inp = recording.AppendMessagesInput(
            expected_next_index=request.expected_next_index,
            messages=messages,
            lease=_lease(request.lease_token),
            **target,
        )
        return await self.mutate(
            request,
            pb.AppendMessagesResponse,
            recording.append_messages,
            inp,
            lambda done: pb.AppendMessagesResponse(
                task_id=str(done.task_id), first_index=done.first_index, next_index=done.next_index
            ),
        )

    async def PushCheckpoint(
        self, request_iterator: AsyncIterator[pb.PushCheckpointRequest], context: ServicerContext
    ) -> pb.PushCheckpointResponse:
        """Checks first, then the pack, then one transaction; a retried request_id replays the first answer."""
        assert self.rt.objects is not None
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        inp = _push_input(first, self.rt.objects.limits.max_pack_bytes)
        assert first is not None
        if (answer := await self.replay(first.header, pb.PushCheckpointResponse)) is not None:
            return answer
        received = await self.call(
            daemon_code.receive_push, daemon_code.ReceivePushInput(push=inp, chunks=_pack_chunks(requests))
        )
        return await self.mutate(
            first.header,
            pb.PushCheckpointResponse,
            daemon_code.record_push,
            daemon_code.RecordPushInput(push=inp, received=received),
            lambda pushed: pb.PushCheckpointResponse(
                checkpoint=convert.checkpoint(pushed.checkpoint),
                object_count=received.object_count,
                received_bytes=received.received_bytes,
                task=convert.task(pushed.task),
            ),
        )

    async def FetchObjects(
        self, request: pb.FetchObjectsRequest, context: ServicerContext
    ) -> AsyncIterator[pb.FetchObjectsResponse]:
        fetched = await self.call(daemon_code.fetch_objects, _fetch_input(request))
        async with aclosing(fetched.chunks) as chunks:
            yield pb.FetchObjectsResponse(
                header=pb.FetchObjectsHeader(
                    commit_sha=fetched.commit.sha,
                    tree_sha=fetched.commit.tree_sha,
                    object_count=fetched.object_count,
                )
            )
            async for chunk in chunks:
                yield pb.FetchObjectsResponse(pack_chunk=chunk)
