"""The grpc.aio client: one typed call object per makima.v1 RPC, retries, pages and the timeline follower."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, BinaryIO, Generic, TypeVar

import grpc
from grpc import aio

from makima.client._errors import error_from_rpc
from makima.client._options import (
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT,
    PACK_CHUNK_SIZE,
    RetryPolicy,
    Tls,
    auth_metadata,
    resolve_address,
)
from makima.client._requests import (
    Item,
    Req,
    Resp,
    TimelineCursor,
    build_request,
    pack_file,
    push_header,
    request_iterator,
    with_page_token,
)
from makima.v1 import (
    daemon_pb2,
    daemon_pb2_grpc,
    history_pb2,
    history_pb2_grpc,
    resources_pb2,
    supervisor_pb2,
    supervisor_pb2_grpc,
    task_fork_pb2,
    task_fork_pb2_grpc,
)

T = TypeVar("T")
# `timeout` parameters (ruff ASYNC109) are gRPC deadlines: unlike asyncio.timeout() they reach the
# server, which stops working on a call whose caller has given up.


class AsyncUnary(Generic[Req, Resp]):
    """One unary RPC. Call it with a request message or with keyword fields; it returns the response.

    `timeout` is the deadline in seconds of the whole logical call, retries included (None: the
    client's default). Failures raise a MakimaError subclass.
    """

    def __init__(
        self,
        client: AsyncClient,
        method: Any,
        request_type: type[Req],
        response_type: type[Resp],  # only types the call: grpc multicallables carry no types
        *,
        idempotent: bool,
    ) -> None:
        self._client = client
        self._method = method
        self._request_type = request_type
        self._idempotent = idempotent

    async def __call__(
        self,
        request: Req | None = None,
        /,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        **fields: Any,
    ) -> Resp:
        built = build_request(self._request_type, request, fields)
        result: Resp = await self._client._invoke(
            lambda remaining: self._method(built, timeout=remaining, metadata=self._client._metadata),
            timeout=timeout,
            retry=self._idempotent,
        )
        return result


class AsyncPaged(AsyncUnary[Req, Resp], Generic[Req, Resp, Item]):
    """A List/Get RPC with pages: call it for one page, or iterate `pages()` / `items()` across all of them."""

    def __init__(
        self,
        client: AsyncClient,
        method: Any,
        request_type: type[Req],
        response_type: type[Resp],
        items: Callable[[Resp], Iterable[Item]],
    ) -> None:
        super().__init__(client, method, request_type, response_type, idempotent=True)
        self._items = items

    async def pages(
        self,
        request: Req | None = None,
        /,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        **fields: Any,
    ) -> AsyncIterator[Resp]:
        """Every page in order, following `next_page_token` until it is empty; `timeout` is per page."""
        page_request = build_request(self._request_type, request, fields)
        while True:
            page = await self(page_request, timeout=timeout)
            yield page
            token: str = page.next_page_token  # type: ignore[attr-defined]  # every List response has it
            if not token:
                return
            page_request = with_page_token(page_request, token)

    async def items(
        self,
        request: Req | None = None,
        /,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        **fields: Any,
    ) -> AsyncIterator[Item]:
        """Every item of every page, fetching the next page only when the previous one is used up."""
        async for page in self.pages(request, timeout=timeout, **fields):
            for item in self._items(page):
                yield item


class AsyncTimelineFollower:
    """Follows the owner's timeline with StreamTimeline, reconnecting after the last cursor seen.

    `async for event in follower` yields every matching event once, in cursor order, across
    reconnects: when the stream fails with UNAVAILABLE or the server closes it (e.g. on shutdown),
    it reconnects with backoff from `cursor`, the last position seen in an event or a keep-alive.
    Persist `cursor` to resume later with `follow_timeline(after_cursor=...)`. Other failures raise
    a MakimaError; once the retry policy's attempts are used up, UNAVAILABLE is raised and a stream
    the server keeps closing ends the iteration.
    """

    def __init__(self, client: AsyncClient, request: history_pb2.StreamTimelineRequest, retry: RetryPolicy) -> None:
        self._client = client
        self._position = TimelineCursor(request)
        self._retry = retry

    @property
    def cursor(self) -> int:
        """Every event up to this cursor has been yielded or filtered out."""
        return self._position.cursor

    def __aiter__(self) -> AsyncGenerator[resources_pb2.TimelineEvent, None]:
        return self._follow()

    async def _follow(self) -> AsyncGenerator[resources_pb2.TimelineEvent, None]:
        failures = 0
        while True:
            call = self._client._history.StreamTimeline(self._position.request(), metadata=self._client._metadata)
            try:
                async for response in call:
                    failures = 0
                    for event in self._position.take(response):
                        self._position.cursor = event.cursor
                        yield event
            except grpc.RpcError as err:
                failures += 1
                delay = self._retry.delay_after(err, failures, None)
                if delay is None:
                    raise error_from_rpc(err) from err
            else:  # the server closed the stream, e.g. while shutting down: reconnect to another one
                failures += 1
                delay = self._retry.backoff(failures)
                if delay is None:
                    return
            finally:
                call.cancel()
            await asyncio.sleep(delay)


class AsyncClient:
    """grpc.aio client of the four makima.v1 services, as one flat set of typed call objects.

    `address` defaults to MAKIMA_ADDRESS, then 127.0.0.1:50051; `api_key` to MAKIMA_API_KEY ("" sends
    none) and goes out as `authorization: Bearer <key>`. `timeout` is the default deadline of a call
    in seconds (None: no deadline). Reads, and mutations (which always carry a request_id, made once
    per logical call), are retried on UNAVAILABLE as `retry` says; ClaimTask never is: after a lost
    answer a retry would claim a second task while the first waits for its lease to run out.

    A daemon passes the `lease_token` of its claim (`claim_task(...).claimed.lease_token`) to every
    append_messages, record_task_events and report_task_status of the task. FailedPreconditionError
    with reason LEASE_LOST then means the task is not the daemon's any more (it was interrupted or
    claimed again): stop working on it, nothing of the refused write was stored.

    `tls` (default: as MAKIMA_TLS_CA, MAKIMA_TLS_CERT and MAKIMA_TLS_KEY say; none set: plaintext)
    connects over TLS, with a client certificate for a server that requires one.

        async with AsyncClient() as client:
            contract = (await client.create_contract(name="login page")).contract
            async for event in client.list_timeline.items(contract_id=contract.id):
                print(event.summary)
    """

    def __init__(
        self,
        address: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
        tls: Tls | None = None,
    ) -> None:
        self.address = resolve_address(address)
        self._metadata = auth_metadata(api_key)
        self._timeout = timeout
        self._retry = retry
        tls = tls or Tls.resolve()
        self._channel = (
            aio.insecure_channel(self.address) if tls is None else aio.secure_channel(self.address, tls.credentials())
        )
        history = history_pb2_grpc.HistoryServiceStub(self._channel)
        supervisor = supervisor_pb2_grpc.SupervisorServiceStub(self._channel)
        task_fork = task_fork_pb2_grpc.TaskForkServiceStub(self._channel)
        daemon = daemon_pb2_grpc.DaemonServiceStub(self._channel)
        self._history, self._daemon = history, daemon
        # <rpc table: generated by scripts/gen_protos.py from the services' descriptors>
        # DaemonService
        self.register_daemon = AsyncUnary(
            self,
            daemon.RegisterDaemon,
            daemon_pb2.RegisterDaemonRequest,
            daemon_pb2.RegisterDaemonResponse,
            idempotent=True,
        )
        self.heartbeat = AsyncUnary(
            self, daemon.Heartbeat, daemon_pb2.HeartbeatRequest, daemon_pb2.HeartbeatResponse, idempotent=True
        )
        # Not retried: a repeated claim could hand out a second task.
        self.claim_task = AsyncUnary(
            self, daemon.ClaimTask, daemon_pb2.ClaimTaskRequest, daemon_pb2.ClaimTaskResponse, idempotent=False
        )
        self.append_messages = AsyncUnary(
            self,
            daemon.AppendMessages,
            daemon_pb2.AppendMessagesRequest,
            daemon_pb2.AppendMessagesResponse,
            idempotent=True,
        )
        self.report_task_status = AsyncUnary(
            self,
            daemon.ReportTaskStatus,
            daemon_pb2.ReportTaskStatusRequest,
            daemon_pb2.ReportTaskStatusResponse,
            idempotent=True,
        )
        # HistoryService
        self.get_contract_history = AsyncPaged(
            self,
            history.GetContractHistory,
            history_pb2.GetContractHistoryRequest,
            history_pb2.GetContractHistoryResponse,
            lambda r: r.events,
        )
        self.get_supervisor_conversation = AsyncPaged(
            self,
            history.GetSupervisorConversation,
            history_pb2.GetSupervisorConversationRequest,
            history_pb2.GetSupervisorConversationResponse,
            lambda r: r.messages,
        )
        self.get_task_conversation = AsyncPaged(
            self,
            history.GetTaskConversation,
            history_pb2.GetTaskConversationRequest,
            history_pb2.GetTaskConversationResponse,
            lambda r: r.messages,
        )
        self.list_conversation_snapshots = AsyncPaged(
            self,
            history.ListConversationSnapshots,
            history_pb2.ListConversationSnapshotsRequest,
            history_pb2.ListConversationSnapshotsResponse,
            lambda r: r.snapshots,
        )
        self.list_task_events = AsyncPaged(
            self,
            history.ListTaskEvents,
            history_pb2.ListTaskEventsRequest,
            history_pb2.ListTaskEventsResponse,
            lambda r: r.events,
        )
        self.list_checkpoints = AsyncPaged(
            self,
            history.ListCheckpoints,
            history_pb2.ListCheckpointsRequest,
            history_pb2.ListCheckpointsResponse,
            lambda r: r.checkpoints,
        )
        self.list_timeline = AsyncPaged(
            self,
            history.ListTimeline,
            history_pb2.ListTimelineRequest,
            history_pb2.ListTimelineResponse,
            lambda r: r.events,
        )
        self.get_task_lineage = AsyncUnary(
            self,
            history.GetTaskLineage,
            history_pb2.GetTaskLineageRequest,
            history_pb2.GetTaskLineageResponse,
            idempotent=True,
        )
        self.list_contracts = AsyncPaged(
            self,
            history.ListContracts,
            history_pb2.ListContractsRequest,
            history_pb2.ListContractsResponse,
            lambda r: r.contracts,
        )
        self.list_tasks = AsyncPaged(
            self, history.ListTasks, history_pb2.ListTasksRequest, history_pb2.ListTasksResponse, lambda r: r.tasks
        )
        # SupervisorService
        self.create_contract = AsyncUnary(
            self,
            supervisor.CreateContract,
            supervisor_pb2.CreateContractRequest,
            supervisor_pb2.CreateContractResponse,
            idempotent=True,
        )
        self.get_contract = AsyncUnary(
            self,
            supervisor.GetContract,
            supervisor_pb2.GetContractRequest,
            supervisor_pb2.GetContractResponse,
            idempotent=True,
        )
        self.advance_phase = AsyncUnary(
            self,
            supervisor.AdvancePhase,
            supervisor_pb2.AdvancePhaseRequest,
            supervisor_pb2.AdvancePhaseResponse,
            idempotent=True,
        )
        self.start_supervisor = AsyncUnary(
            self,
            supervisor.StartSupervisor,
            supervisor_pb2.StartSupervisorRequest,
            supervisor_pb2.StartSupervisorResponse,
            idempotent=True,
        )
        self.resume_supervisor = AsyncUnary(
            self,
            supervisor.ResumeSupervisor,
            supervisor_pb2.ResumeSupervisorRequest,
            supervisor_pb2.ResumeSupervisorResponse,
            idempotent=True,
        )
        self.rewind_conversation = AsyncUnary(
            self,
            supervisor.RewindConversation,
            supervisor_pb2.RewindConversationRequest,
            supervisor_pb2.RewindConversationResponse,
            idempotent=True,
        )
        self.restore_conversation = AsyncUnary(
            self,
            supervisor.RestoreConversation,
            supervisor_pb2.RestoreConversationRequest,
            supervisor_pb2.RestoreConversationResponse,
            idempotent=True,
        )
        # TaskForkService
        self.create_task = AsyncUnary(
            self,
            task_fork.CreateTask,
            task_fork_pb2.CreateTaskRequest,
            task_fork_pb2.CreateTaskResponse,
            idempotent=True,
        )
        self.get_task = AsyncUnary(
            self, task_fork.GetTask, task_fork_pb2.GetTaskRequest, task_fork_pb2.GetTaskResponse, idempotent=True
        )
        self.create_checkpoint = AsyncUnary(
            self,
            task_fork.CreateCheckpoint,
            task_fork_pb2.CreateCheckpointRequest,
            task_fork_pb2.CreateCheckpointResponse,
            idempotent=True,
        )
        self.compare_checkpoints = AsyncUnary(
            self,
            task_fork.CompareCheckpoints,
            task_fork_pb2.CompareCheckpointsRequest,
            task_fork_pb2.CompareCheckpointsResponse,
            idempotent=True,
        )
        self.rewind_task = AsyncUnary(
            self,
            task_fork.RewindTask,
            task_fork_pb2.RewindTaskRequest,
            task_fork_pb2.RewindTaskResponse,
            idempotent=True,
        )
        self.resume_task = AsyncUnary(
            self,
            task_fork.ResumeTask,
            task_fork_pb2.ResumeTaskRequest,
            task_fork_pb2.ResumeTaskResponse,
            idempotent=True,
        )
        self.resume_task_from_checkpoint = AsyncUnary(
            self,
            task_fork.ResumeTaskFromCheckpoint,
            task_fork_pb2.ResumeTaskFromCheckpointRequest,
            task_fork_pb2.ResumeTaskFromCheckpointResponse,
            idempotent=True,
        )
        self.create_branch = AsyncUnary(
            self,
            task_fork.CreateBranch,
            task_fork_pb2.CreateBranchRequest,
            task_fork_pb2.CreateBranchResponse,
            idempotent=True,
        )
        self.fork_task = AsyncUnary(
            self, task_fork.ForkTask, task_fork_pb2.ForkTaskRequest, task_fork_pb2.ForkTaskResponse, idempotent=True
        )
        self.continue_task = AsyncUnary(
            self,
            task_fork.ContinueTask,
            task_fork_pb2.ContinueTaskRequest,
            task_fork_pb2.ContinueTaskResponse,
            idempotent=True,
        )
        # </rpc table>

    async def record_task_events(
        self,
        requests: Iterable[daemon_pb2.RecordTaskEventsRequest] | AsyncIterable[daemon_pb2.RecordTaskEventsRequest],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> daemon_pb2.RecordTaskEventsResponse:
        """Stream task events to the server (DaemonService.RecordTaskEvents).

        A list or tuple of requests is resent whole on UNAVAILABLE, which is safe because the server
        acknowledges an unchanged resend of a (task, sequence) as a duplicate; a one-shot iterator is
        sent once. A daemon puts its claim's `lease_token` on every request.
        """
        result: daemon_pb2.RecordTaskEventsResponse = await self._invoke(
            lambda remaining: self._daemon.RecordTaskEvents(
                request_iterator(requests),
                timeout=remaining,
                metadata=self._metadata,
            ),
            timeout=timeout,
            retry=isinstance(requests, Sequence),
        )
        return result

    async def push_checkpoint(
        self,
        header: daemon_pb2.PushCheckpointHeader | None = None,
        /,
        *,
        pack: bytes | BinaryIO = b"",
        timeout: float | None = None,  # noqa: ASYNC109
        **fields: Any,
    ) -> daemon_pb2.PushCheckpointResponse:
        """Upload a daemon-held worktree's checkpoint (DaemonService.PushCheckpoint): the header (a
        message or its fields), then `pack` in chunks.

        `pack` is the git pack of the objects the service lacks (bytes, or a seekable binary file read
        whole from its start); the header's `pack_size` is set from it. The request_id is made once,
        so a retry on UNAVAILABLE (the pack re-read from its start) answers as the first push did.
        """
        source = pack_file(pack)
        built = push_header(header, fields, source)

        async def messages() -> AsyncIterator[daemon_pb2.PushCheckpointRequest]:
            yield daemon_pb2.PushCheckpointRequest(header=built)
            await asyncio.to_thread(source.seek, 0)
            while chunk := await asyncio.to_thread(source.read, PACK_CHUNK_SIZE):
                yield daemon_pb2.PushCheckpointRequest(pack_chunk=chunk)

        result: daemon_pb2.PushCheckpointResponse = await self._invoke(
            lambda remaining: self._daemon.PushCheckpoint(messages(), timeout=remaining, metadata=self._metadata),
            timeout=timeout,
            retry=True,
        )
        return result

    async def fetch_objects(
        self,
        request: daemon_pb2.FetchObjectsRequest | None = None,
        /,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        **fields: Any,
    ) -> AsyncGenerator[daemon_pb2.FetchObjectsResponse, None]:
        """The messages of one DaemonService.FetchObjects call: its header, then the pack in chunks.

        `timeout` (default: the client's) bounds the whole download. UNAVAILABLE is retried until the
        first message arrives; after that a failure raises, since part of the pack was handed out.
        """
        built = build_request(daemon_pb2.FetchObjectsRequest, request, fields)

        async def opened(remaining: float | None) -> tuple[Any, Any]:
            call = self._daemon.FetchObjects(built, timeout=remaining, metadata=self._metadata)
            try:
                return call, await call.read()
            except BaseException:
                call.cancel()
                raise

        call, response = await self._invoke(opened, timeout=timeout, retry=True)
        try:
            while response is not aio.EOF:
                yield response
                response = await call.read()
        except grpc.RpcError as err:
            raise error_from_rpc(err) from err
        finally:
            call.cancel()

    async def stream_timeline(
        self,
        request: history_pb2.StreamTimelineRequest | None = None,
        /,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        **fields: Any,
    ) -> AsyncGenerator[history_pb2.StreamTimelineResponse, None]:
        """One StreamTimeline call as it comes, keep-alives included, without reconnecting (see
        `follow_timeline` for that). A stream has no deadline unless `timeout` is given."""
        call = self._history.StreamTimeline(
            build_request(history_pb2.StreamTimelineRequest, request, fields), timeout=timeout, metadata=self._metadata
        )
        try:
            async for response in call:
                yield response
        except grpc.RpcError as err:
            raise error_from_rpc(err) from err
        finally:
            call.cancel()

    def follow_timeline(
        self,
        request: history_pb2.StreamTimelineRequest | None = None,
        /,
        *,
        retry: RetryPolicy | None = None,
        **fields: Any,
    ) -> AsyncTimelineFollower:
        """A follower of the timeline from `after_cursor` (0: from the start), filtered like
        StreamTimeline; `retry` bounds consecutive failed reconnects (default: the client's policy)."""
        return AsyncTimelineFollower(
            self, build_request(history_pb2.StreamTimelineRequest, request, fields), retry or self._retry
        )

    async def _invoke(
        self,
        attempt: Callable[[float | None], Awaitable[T]],
        *,
        timeout: float | None,  # noqa: ASYNC109
        retry: bool,
    ) -> T:
        """Run `attempt(remaining_seconds)` until it answers, retrying UNAVAILABLE within the deadline."""
        budget = self._timeout if timeout is None else timeout
        deadline = None if budget is None else time.monotonic() + budget
        failures = 0
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                return await attempt(remaining)
            except grpc.RpcError as err:
                failures += 1
                delay = self._retry.delay_after(err, failures, deadline) if retry else None
                if delay is None:
                    raise error_from_rpc(err) from err
            await asyncio.sleep(delay)

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
