"""DaemonService: what daemons call to record history (the work loop RPCs come with the resume issue)."""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

from google.protobuf import json_format
from grpc import aio

from makima.server.api.base import Servicer
from makima.server.api.convert import enum_from_pb
from makima.server.api.interceptor import current_principal
from makima.server.api.validate import uuid_field
from makima.server.domain import recording
from makima.server.domain.enums import MessageRole, TaskEventKind
from makima.server.domain.errors import InvalidArgument
from makima.server.domain.runtime import Tx
from makima.v1 import daemon_pb2 as pb
from makima.v1 import daemon_pb2_grpc, resources_pb2

MAX_EVENTS_PER_MESSAGE = 10_000
MAX_MESSAGES_PER_APPEND = 1_000


def _struct(message: Any, field: str) -> dict[str, Any] | None:
    return json_format.MessageToDict(getattr(message, field)) if message.HasField(field) else None


def _events(request: pb.RecordTaskEventsRequest) -> list[recording.NewEvent]:
    if len(request.events) > MAX_EVENTS_PER_MESSAGE:
        raise InvalidArgument.of("events", f"at most {MAX_EVENTS_PER_MESSAGE} events per message")
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


def _conversation_target(request: Any) -> dict[str, uuid.UUID]:
    which = request.WhichOneof("conversation")
    if which is None:
        raise InvalidArgument.of("task_id", "set task_id or contract_id")
    return {which: uuid_field(getattr(request, which), which)}


class DaemonServicer(Servicer, daemon_pb2_grpc.DaemonServiceServicer):
    async def RecordTaskEvents(
        self, request_iterator: AsyncIterator[pb.RecordTaskEventsRequest], context: aio.ServicerContext
    ) -> pb.RecordTaskEventsResponse:
        """Each stream message is stored in its own transaction as it arrives."""
        principal = current_principal()
        task_id: uuid.UUID | None = None
        stored = duplicates = 0
        async for request in request_iterator:
            this_task = uuid_field(request.task_id, "task_id")
            if task_id is not None and this_task != task_id:
                raise InvalidArgument.of("task_id", "every message of one stream must name the same task")
            task_id = this_task
            batch = _events(request)
            if not batch:
                continue
            outcome = await self.rt.mutate(
                principal, functools.partial(recording.record_task_events, task_id=this_task, batch=batch)
            )
            stored += outcome.stored
            duplicates += outcome.duplicates
        if task_id is None:
            raise InvalidArgument.of("task_id", "the stream carried no message")
        summary = await recording.summarize_task_events(self.rt, principal, task_id)
        return pb.RecordTaskEventsResponse(
            stored_count=stored,
            duplicate_count=duplicates,
            last_sequence=summary.last_sequence,
            gaps=[pb.SequenceGap(from_sequence=a, to_sequence=b) for a, b in summary.gaps],
        )

    async def AppendMessages(
        self, request: pb.AppendMessagesRequest, context: aio.ServicerContext
    ) -> pb.AppendMessagesResponse:
        target = _conversation_target(request)
        if request.expected_next_index < 0:
            raise InvalidArgument.of("expected_next_index", "must not be negative")
        if not request.messages:
            raise InvalidArgument.of("messages", "at least one message is required")
        if len(request.messages) > MAX_MESSAGES_PER_APPEND:
            raise InvalidArgument.of("messages", f"at most {MAX_MESSAGES_PER_APPEND} messages per call")
        messages = []
        for i, m in enumerate(request.messages):
            role = enum_from_pb(resources_pb2.MessageRole, "MESSAGE_ROLE", m.role, MessageRole)
            if role is None:
                raise InvalidArgument.of(f"messages[{i}].role", f"is not a valid role ({m.role})")
            messages.append(recording.NewMessage(role=role, content=m.content, metadata=_struct(m, "metadata")))
        inp = recording.AppendMessagesInput(
            expected_next_index=request.expected_next_index, messages=messages, **target
        )

        async def body(tx: Tx) -> pb.AppendMessagesResponse:
            done = await recording.append_messages(tx, inp)
            return pb.AppendMessagesResponse(
                task_id=str(done.task_id), first_index=done.first_index, next_index=done.next_index
            )

        return await self.mutate(request, pb.AppendMessagesResponse, body)
