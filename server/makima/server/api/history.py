"""HistoryService: everything that happened, as pages and as a live stream."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from google.protobuf.message import Message

from makima.server.api import convert
from makima.server.api.base import Servicer
from makima.server.api.interceptor import ServicerContext, current_principal
from makima.server.api.paging import (
    decode_token,
    encode_token,
    kinds,
    page_size,
    time_range,
    token_newest,
    token_position,
)
from makima.server.api.validate import optional_uuid, text_field, uuid_field
from makima.server.domain import history, streaming
from makima.server.domain.errors import InvalidArgument
from makima.server.domain.page_tokens import PageTokenKeys
from makima.server.domain.runtime import Runtime
from makima.server.store.events import TaskEventFilter
from makima.server.store.timeline import TimelineFilter
from makima.v1 import history_pb2 as pb
from makima.v1 import history_pb2_grpc, resources_pb2

MAX_KEEP_ALIVE_SECONDS = 3600
MAX_EVENTS_PER_MESSAGE = 500


def _timeline_kinds(request: Any) -> tuple[str, ...]:
    return kinds(request.kinds, resources_pb2.TimelineEventKind, "TIMELINE_EVENT_KIND")


class HistoryServicer(Servicer, history_pb2_grpc.HistoryServiceServicer):
    def __init__(self, rt: Runtime, tokens: PageTokenKeys, *, keep_alive: float, recheck: float) -> None:
        super().__init__(rt)
        self.tokens = tokens
        self.keep_alive = keep_alive
        self.recheck = recheck

    async def _key(self, request: Message) -> list[Any] | None:
        """The verified key of the request's page token (None on the first page)."""
        return await decode_token(self.tokens, request, current_principal())

    async def _token(self, request: Message, key: list[Any]) -> str:
        return await encode_token(self.tokens, request, current_principal(), key)

    async def _next_cursor(self, request: Message, page: history.Page[Any], attr: str) -> str:
        return await self._token(request, [getattr(page.items[-1], attr)]) if page.more else ""

    async def _next_newest(
        self, request: Message, page: history.Page[Any], row: Callable[[Any], Any] = lambda item: item
    ) -> str:
        """The token after the last item of a newest-first page; `row` gives the item's stored row."""
        if not page.more:
            return ""
        last = row(page.items[-1])
        return await self._token(request, [last.create_time.isoformat(), str(last.id)])

    async def GetContractHistory(
        self, request: pb.GetContractHistoryRequest, context: ServicerContext
    ) -> pb.GetContractHistoryResponse:
        contract_id = uuid_field(request.contract_id, "contract_id")
        start, end = time_range(request)
        where = TimelineFilter(
            kinds=_timeline_kinds(request),
            phase=text_field(request.phase, "phase", required=False) or None,
            start_time=start,
            end_time=end,
        )
        limit = page_size(request.page_size)
        after = token_position(await self._key(request), 0)
        inp = history.ContractHistoryInput(contract_id=contract_id, where=where, after=after, limit=limit)
        result = await self.call(history.contract_history, inp)
        return pb.GetContractHistoryResponse(
            contract=convert.contract(result.view),
            phases=[
                pb.PhaseSpan(phase=p.phase, start_time=convert.ts(p.start_time), end_time=convert.ts(p.end_time))
                for p in result.phases
            ],
            events=[convert.timeline_event(e) for e in result.events.items],
            next_page_token=await self._next_cursor(request, result.events, "cursor"),
        )

    async def _conversation(self, request: Any, **target: uuid.UUID) -> history.ConversationPage:
        limit = page_size(request.page_size)
        start = token_position(await self._key(request), 0)
        inp = history.ConversationInput(
            snapshot_id=optional_uuid(request.snapshot_id, "snapshot_id"), start=start, limit=limit, **target
        )
        return await self.call(history.conversation, inp)

    async def _conversation_token(self, request: Any, page: history.ConversationPage) -> str:
        if not page.messages.more:
            return ""
        return await self._token(request, [page.messages.items[-1].position + 1])

    async def GetSupervisorConversation(
        self, request: pb.GetSupervisorConversationRequest, context: ServicerContext
    ) -> pb.GetSupervisorConversationResponse:
        page = await self._conversation(request, contract_id=uuid_field(request.contract_id, "contract_id"))
        return pb.GetSupervisorConversationResponse(
            task_id=str(page.task_id),
            messages=[convert.message(m) for m in page.messages.items],
            message_count=page.message_count,
            next_page_token=await self._conversation_token(request, page),
        )

    async def GetTaskConversation(
        self, request: pb.GetTaskConversationRequest, context: ServicerContext
    ) -> pb.GetTaskConversationResponse:
        page = await self._conversation(request, task_id=uuid_field(request.task_id, "task_id"))
        return pb.GetTaskConversationResponse(
            task_id=str(page.task_id),
            messages=[convert.message(m) for m in page.messages.items],
            message_count=page.message_count,
            next_page_token=await self._conversation_token(request, page),
        )

    async def ListConversationSnapshots(
        self, request: pb.ListConversationSnapshotsRequest, context: ServicerContext
    ) -> pb.ListConversationSnapshotsResponse:
        task_id = uuid_field(request.task_id, "task_id")
        limit = page_size(request.page_size)
        inp = history.ListSnapshotsInput(task_id=task_id, before=token_newest(await self._key(request)), limit=limit)
        page = await self.call(history.list_snapshots, inp)
        return pb.ListConversationSnapshotsResponse(
            snapshots=[convert.snapshot(s) for s in page.items],
            next_page_token=await self._next_newest(request, page),
        )

    async def ListTaskEvents(
        self, request: pb.ListTaskEventsRequest, context: ServicerContext
    ) -> pb.ListTaskEventsResponse:
        task_id = uuid_field(request.task_id, "task_id")
        start, end = time_range(request)
        event_kinds = kinds(request.kinds, resources_pb2.TaskEventKind, "TASK_EVENT_KIND")
        limit = page_size(request.page_size)
        inp = history.ListTaskEventsInput(
            task_id=task_id,
            where=TaskEventFilter(kinds=event_kinds, start_time=start, end_time=end),
            after=token_position(await self._key(request), 0),
            limit=limit,
        )
        page = await self.call(history.list_task_events, inp)
        return pb.ListTaskEventsResponse(
            events=[convert.task_event(e) for e in page.items],
            next_page_token=await self._next_cursor(request, page, "sequence"),
        )

    async def ListCheckpoints(
        self, request: pb.ListCheckpointsRequest, context: ServicerContext
    ) -> pb.ListCheckpointsResponse:
        task_id = uuid_field(request.task_id, "task_id")
        limit = page_size(request.page_size)
        inp = history.ListCheckpointsInput(task_id=task_id, before=token_newest(await self._key(request)), limit=limit)
        page = await self.call(history.list_checkpoints, inp)
        return pb.ListCheckpointsResponse(
            checkpoints=[convert.checkpoint(c) for c in page.items],
            next_page_token=await self._next_newest(request, page),
        )

    async def ListContracts(
        self, request: pb.ListContractsRequest, context: ServicerContext
    ) -> pb.ListContractsResponse:
        statuses = kinds(request.statuses, resources_pb2.ContractStatus, "CONTRACT_STATUS", "statuses")
        limit = page_size(request.page_size)
        inp = history.ListContractsInput(statuses=statuses, before=token_newest(await self._key(request)), limit=limit)
        page = await self.call(history.list_contracts, inp)
        return pb.ListContractsResponse(
            contracts=[convert.contract(view) for view in page.items],
            next_page_token=await self._next_newest(request, page, lambda view: view.contract),
        )

    async def ListTasks(self, request: pb.ListTasksRequest, context: ServicerContext) -> pb.ListTasksResponse:
        contract_id = optional_uuid(request.contract_id, "contract_id")
        statuses = kinds(request.statuses, resources_pb2.TaskStatus, "TASK_STATUS", "statuses")
        limit = page_size(request.page_size)
        inp = history.ListTasksInput(
            contract_id=contract_id, statuses=statuses, before=token_newest(await self._key(request)), limit=limit
        )
        page = await self.call(history.list_tasks, inp)
        return pb.ListTasksResponse(
            tasks=[convert.task(t) for t in page.items], next_page_token=await self._next_newest(request, page)
        )

    def _filter(self, request: Any) -> TimelineFilter:
        start, end = time_range(request) if request.DESCRIPTOR.fields_by_name.get("start_time") else (None, None)
        return TimelineFilter(
            contract_id=optional_uuid(request.contract_id, "contract_id"),
            task_id=optional_uuid(request.task_id, "task_id"),
            kinds=_timeline_kinds(request),
            start_time=start,
            end_time=end,
        )

    async def ListTimeline(self, request: pb.ListTimelineRequest, context: ServicerContext) -> pb.ListTimelineResponse:
        where = self._filter(request)
        if request.after_cursor < 0:
            raise InvalidArgument.of("after_cursor", "must not be negative")
        limit = page_size(request.page_size)
        after = token_position(await self._key(request), request.after_cursor)
        page = await self.call(history.list_timeline, history.ListTimelineInput(where=where, after=after, limit=limit))
        return pb.ListTimelineResponse(
            events=[convert.timeline_event(e) for e in page.items],
            next_page_token=await self._next_cursor(request, page, "cursor"),
        )

    async def StreamTimeline(
        self, request: pb.StreamTimelineRequest, context: ServicerContext
    ) -> AsyncIterator[pb.StreamTimelineResponse]:
        where = self._filter(request)
        if request.after_cursor < 0:
            raise InvalidArgument.of("after_cursor", "must not be negative")
        if not 0 <= request.keep_alive_seconds <= MAX_KEEP_ALIVE_SECONDS:
            raise InvalidArgument.of("keep_alive_seconds", f"must be between 0 and {MAX_KEEP_ALIVE_SECONDS}")
        if not 0 <= request.max_events_per_message <= MAX_EVENTS_PER_MESSAGE:
            raise InvalidArgument.of("max_events_per_message", f"must be between 0 and {MAX_EVENTS_PER_MESSAGE}")
        per_message = request.max_events_per_message
        inp = streaming.FollowTimelineInput(
            where=where,
            after=request.after_cursor,
            keep_alive=float(request.keep_alive_seconds) or self.keep_alive,
            recheck=self.recheck,
        )
        async for item in streaming.follow_timeline(self.caller(), inp, render=convert.timeline_event):
            if isinstance(item, streaming.KeepAlive):
                yield pb.StreamTimelineResponse(
                    keep_alive=pb.KeepAlive(cursor=item.cursor, server_time=convert.ts(item.server_time))
                )
            elif isinstance(item, streaming.ReplayEnded):
                yield pb.StreamTimelineResponse(
                    replay_ended=pb.ReplayEnded(cursor=item.cursor, server_time=convert.ts(item.server_time))
                )
            elif per_message == 0:
                for event in item:
                    yield pb.StreamTimelineResponse(event=event)
            else:
                for start in range(0, len(item), per_message):
                    batch = pb.TimelineEvents(events=item[start : start + per_message])
                    yield pb.StreamTimelineResponse(events=batch)

    async def GetTaskLineage(
        self, request: pb.GetTaskLineageRequest, context: ServicerContext
    ) -> pb.GetTaskLineageResponse:
        lineage = await self.call(
            history.task_lineage, history.TaskLineageInput(task_id=uuid_field(request.task_id, "task_id"))
        )
        return pb.GetTaskLineageResponse(
            root_task_id=str(lineage.root.id),
            nodes=[
                pb.LineageNode(
                    task=convert.task(n.task),
                    parent_task_id=str(n.parent_task_id) if n.parent_task_id else "",
                    relation=convert.enum_to_pb(pb.LineageRelation, "LINEAGE_RELATION", n.relation),
                    depth=n.depth,
                )
                for n in lineage.nodes
            ],
        )
