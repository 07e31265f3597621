# Generated from _async.py by scripts/unasync.py: edit _async.py, then run `make unasync`.
"""The blocking client: the calls of the grpc.aio one in _async.py, over a synchronous channel."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, BinaryIO, Generic, TypeVar

import grpc

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


class Unary(Generic[Req, Resp]):
    """One unary RPC. Call it with a request message or with keyword fields; it returns the response.

    `timeout` is the deadline in seconds of the whole logical call, retries included (None: the
    client's default). Failures raise a MakimaError subclass.
    """

    def __init__(
        self,
        client: Client,
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

    def __call__(
        self,
        request: Req | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> Resp:
        built = build_request(self._request_type, request, fields)
        result: Resp = self._client._invoke(
            lambda remaining: self._method(built, timeout=remaining, metadata=self._client._metadata),
            timeout=timeout,
            retry=self._idempotent,
        )
        return result


class Paged(Unary[Req, Resp], Generic[Req, Resp, Item]):
    """A List/Get RPC with pages: call it for one page, or iterate `pages()` / `items()` across all of them."""

    def __init__(
        self,
        client: Client,
        method: Any,
        request_type: type[Req],
        response_type: type[Resp],
        items: Callable[[Resp], Iterable[Item]],
    ) -> None:
        super().__init__(client, method, request_type, response_type, idempotent=True)
        self._items = items

    def pages(
        self,
        request: Req | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> Iterator[Resp]:
        """Every page in order, following `next_page_token` until it is empty; `timeout` is per page."""
        page_request = build_request(self._request_type, request, fields)
        while True:
            page = self(page_request, timeout=timeout)
            yield page
            token: str = page.next_page_token  # type: ignore[attr-defined]  # every List response has it
            if not token:
                return
            page_request = with_page_token(page_request, token)

    def items(
        self,
        request: Req | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> Iterator[Item]:
        """Every item of every page, fetching the next page only when the previous one is used up."""
        for page in self.pages(request, timeout=timeout, **fields):
            yield from self._items(page)


class TimelineFollower:
    """Follows the owner's timeline with StreamTimeline, reconnecting after the last cursor seen.

    `for event in follower` yields every matching event once, in cursor order, across
    reconnects: when the stream fails with UNAVAILABLE or the server closes it (e.g. on shutdown),
    it reconnects with backoff from `cursor`, the last position seen in an event or a keep-alive.
    Persist `cursor` to resume later with `follow_timeline(after_cursor=...)`. Other failures raise
    a MakimaError; once the retry policy's attempts are used up, UNAVAILABLE is raised and a stream
    the server keeps closing ends the iteration.
    """

    def __init__(self, client: Client, request: history_pb2.StreamTimelineRequest, retry: RetryPolicy) -> None:
        self._client = client
        self._position = TimelineCursor(request)
        self._retry = retry

    @property
    def cursor(self) -> int:
        """Every event up to this cursor has been yielded or filtered out."""
        return self._position.cursor

    def __iter__(self) -> Generator[resources_pb2.TimelineEvent, None, None]:
        return self._follow()

    def _follow(self) -> Generator[resources_pb2.TimelineEvent, None, None]:
        failures = 0
        while True:
            call = self._client._history.StreamTimeline(self._position.request(), metadata=self._client._metadata)
            try:
                for response in call:
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
            time.sleep(delay)


class Client:
    """Blocking client of the four makima.v1 services, as one flat set of typed call objects.

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

        with Client() as client:
            contract = (client.create_contract(name="login page")).contract
            for event in client.list_timeline.items(contract_id=contract.id):
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
            grpc.insecure_channel(self.address) if tls is None else grpc.secure_channel(self.address, tls.credentials())
        )
        history = history_pb2_grpc.HistoryServiceStub(self._channel)
        supervisor = supervisor_pb2_grpc.SupervisorServiceStub(self._channel)
        task_fork = task_fork_pb2_grpc.TaskForkServiceStub(self._channel)
        daemon = daemon_pb2_grpc.DaemonServiceStub(self._channel)
        self._history, self._daemon = history, daemon
        # <rpc table: generated by scripts/gen_protos.py from the services' descriptors>
        # DaemonService
        self.register_daemon = Unary(
            self,
            daemon.RegisterDaemon,
            daemon_pb2.RegisterDaemonRequest,
            daemon_pb2.RegisterDaemonResponse,
            idempotent=True,
        )
        self.heartbeat = Unary(
            self, daemon.Heartbeat, daemon_pb2.HeartbeatRequest, daemon_pb2.HeartbeatResponse, idempotent=True
        )
        # Not retried: a repeated claim could hand out a second task.
        self.claim_task = Unary(
            self, daemon.ClaimTask, daemon_pb2.ClaimTaskRequest, daemon_pb2.ClaimTaskResponse, idempotent=False
        )
        self.append_messages = Unary(
            self,
            daemon.AppendMessages,
            daemon_pb2.AppendMessagesRequest,
            daemon_pb2.AppendMessagesResponse,
            idempotent=True,
        )
        self.report_task_status = Unary(
            self,
            daemon.ReportTaskStatus,
            daemon_pb2.ReportTaskStatusRequest,
            daemon_pb2.ReportTaskStatusResponse,
            idempotent=True,
        )
        # HistoryService
        self.get_contract_history = Paged(
            self,
            history.GetContractHistory,
            history_pb2.GetContractHistoryRequest,
            history_pb2.GetContractHistoryResponse,
            lambda r: r.events,
        )
        self.get_supervisor_conversation = Paged(
            self,
            history.GetSupervisorConversation,
            history_pb2.GetSupervisorConversationRequest,
            history_pb2.GetSupervisorConversationResponse,
            lambda r: r.messages,
        )
        self.get_task_conversation = Paged(
            self,
            history.GetTaskConversation,
            history_pb2.GetTaskConversationRequest,
            history_pb2.GetTaskConversationResponse,
            lambda r: r.messages,
        )
        self.list_conversation_snapshots = Paged(
            self,
            history.ListConversationSnapshots,
            history_pb2.ListConversationSnapshotsRequest,
            history_pb2.ListConversationSnapshotsResponse,
            lambda r: r.snapshots,
        )
        self.list_task_events = Paged(
            self,
            history.ListTaskEvents,
            history_pb2.ListTaskEventsRequest,
            history_pb2.ListTaskEventsResponse,
            lambda r: r.events,
        )
        self.list_checkpoints = Paged(
            self,
            history.ListCheckpoints,
            history_pb2.ListCheckpointsRequest,
            history_pb2.ListCheckpointsResponse,
            lambda r: r.checkpoints,
        )
        self.list_timeline = Paged(
            self,
            history.ListTimeline,
            history_pb2.ListTimelineRequest,
            history_pb2.ListTimelineResponse,
            lambda r: r.events,
        )
        self.get_task_lineage = Unary(
            self,
            history.GetTaskLineage,
            history_pb2.GetTaskLineageRequest,
            history_pb2.GetTaskLineageResponse,
            idempotent=True,
        )
        self.list_contracts = Paged(
            self,
            history.ListContracts,
            history_pb2.ListContractsRequest,
            history_pb2.ListContractsResponse,
            lambda r: r.contracts,
        )
        self.list_tasks = Paged(
            self, history.ListTasks, history_pb2.ListTasksRequest, history_pb2.ListTasksResponse, lambda r: r.tasks
        )
        # SupervisorService
        self.create_contract = Unary(
            self,
            supervisor.CreateContract,
            supervisor_pb2.CreateContractRequest,
            supervisor_pb2.CreateContractResponse,
            idempotent=True,
        )
        self.get_contract = Unary(
            self,
            supervisor.GetContract,
            supervisor_pb2.GetContractRequest,
            supervisor_pb2.GetContractResponse,
            idempotent=True,
        )
        self.advance_phase = Unary(
            self,
            supervisor.AdvancePhase,
            supervisor_pb2.AdvancePhaseRequest,
            supervisor_pb2.AdvancePhaseResponse,
            idempotent=True,
        )
        self.start_supervisor = Unary(
            self,
            supervisor.StartSupervisor,
            supervisor_pb2.StartSupervisorRequest,
            supervisor_pb2.StartSupervisorResponse,
            idempotent=True,
        )
        self.resume_supervisor = Unary(
            self,
            supervisor.ResumeSupervisor,
            supervisor_pb2.ResumeSupervisorRequest,
            supervisor_pb2.ResumeSupervisorResponse,
            idempotent=True,
        )
        self.rewind_conversation = Unary(
            self,
            supervisor.RewindConversation,
            supervisor_pb2.RewindConversationRequest,
            supervisor_pb2.RewindConversationResponse,
            idempotent=True,
        )
        self.restore_conversation = Unary(
            self,
            supervisor.RestoreConversation,
            supervisor_pb2.RestoreConversationRequest,
            supervisor_pb2.RestoreConversationResponse,
            idempotent=True,
        )
        # TaskForkService
        self.create_task = Unary(
            self,
            task_fork.CreateTask,
            task_fork_pb2.CreateTaskRequest,
            task_fork_pb2.CreateTaskResponse,
            idempotent=True,
        )
        self.get_task = Unary(
            self, task_fork.GetTask, task_fork_pb2.GetTaskRequest, task_fork_pb2.GetTaskResponse, idempotent=True
        )
        self.create_checkpoint = Unary(
            self,
            task_fork.CreateCheckpoint,
            task_fork_pb2.CreateCheckpointRequest,
            task_fork_pb2.CreateCheckpointResponse,
            idempotent=True,
        )
        self.compare_checkpoints = Unary(
            self,
            task_fork.CompareCheckpoints,
            task_fork_pb2.CompareCheckpointsRequest,
            task_fork_pb2.CompareCheckpointsResponse,
            idempotent=True,
        )
        self.rewind_task = Unary(
            self,
            task_fork.RewindTask,
            task_fork_pb2.RewindTaskRequest,
            task_fork_pb2.RewindTaskResponse,
            idempotent=True,
        )
        self.resume_task = Unary(
            self,
            task_fork.ResumeTask,
            task_fork_pb2.ResumeTaskRequest,
            task_fork_pb2.ResumeTaskResponse,
            idempotent=True,
        )
        self.resume_task_from_checkpoint = Unary(
            self,
            task_fork.ResumeTaskFromCheckpoint,
            task_fork_pb2.ResumeTaskFromCheckpointRequest,
            task_fork_pb2.ResumeTaskFromCheckpointResponse,
            idempotent=True,
        )
        self.create_branch = Unary(
            self,
            task_fork.CreateBranch,
            task_fork_pb2.CreateBranchRequest,
            task_fork_pb2.CreateBranchResponse,
            idempotent=True,
        )
        self.fork_task = Unary(
            self, task_fork.ForkTask, task_fork_pb2.ForkTaskRequest, task_fork_pb2.ForkTaskResponse, idempotent=True
        )
        self.continue_task = Unary(
            self,
            task_fork.ContinueTask,
            task_fork_pb2.ContinueTaskRequest,
            task_fork_pb2.ContinueTaskResponse,
            idempotent=True,
        )
        # </rpc table>

    def record_task_events(
        self,
        requests: Iterable[daemon_pb2.RecordTaskEventsRequest],
        *,
        timeout: float | None = None,
    ) -> daemon_pb2.RecordTaskEventsResponse:
        """Stream task events to the server (DaemonService.RecordTaskEvents).

        A list or tuple of requests is resent whole on UNAVAILABLE, which is safe because the server
        acknowledges an unchanged resend of a (task, sequence) as a duplicate; a one-shot iterator is
        sent once. A daemon puts its claim's `lease_token` on every request.
        """
        result: daemon_pb2.RecordTaskEventsResponse = self._invoke(
            lambda remaining: self._daemon.RecordTaskEvents(
                request_iterator(requests),
                timeout=remaining,
                metadata=self._metadata,
            ),
            timeout=timeout,
            retry=isinstance(requests, Sequence),
        )
        return result

    def push_checkpoint(
        self,
        header: daemon_pb2.PushCheckpointHeader | None = None,
        /,
        *,
        pack: bytes | BinaryIO = b"",
        timeout: float | None = None,
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

        def messages() -> Iterator[daemon_pb2.PushCheckpointRequest]:
            yield daemon_pb2.PushCheckpointRequest(header=built)
            source.seek(0)
            while chunk := source.read(PACK_CHUNK_SIZE):
                yield daemon_pb2.PushCheckpointRequest(pack_chunk=chunk)

        result: daemon_pb2.PushCheckpointResponse = self._invoke(
            lambda remaining: self._daemon.PushCheckpoint(messages(), timeout=remaining, metadata=self._metadata),
            timeout=timeout,
            retry=True,
        )
        return result

    def fetch_objects(
        self,
        request: daemon_pb2.FetchObjectsRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> Generator[daemon_pb2.FetchObjectsResponse, None, None]:
        """The messages of one DaemonService.FetchObjects call: its header, then the pack in chunks.

        `timeout` (default: the client's) bounds the whole download. UNAVAILABLE is retried until the
        first message arrives; after that a failure raises, since part of the pack was handed out.
        """
        built = build_request(daemon_pb2.FetchObjectsRequest, request, fields)

        def opened(remaining: float | None) -> tuple[Any, Any]:
            call = self._daemon.FetchObjects(built, timeout=remaining, metadata=self._metadata)
            try:
                return call, next(call, None)
            except BaseException:
                call.cancel()
                raise

        call, response = self._invoke(opened, timeout=timeout, retry=True)
        try:
            while response is not None:
                yield response
                response = next(call, None)
        except grpc.RpcError as err:
            raise error_from_rpc(err) from err
        finally:
            call.cancel()

    def stream_timeline(
        self,
        request: history_pb2.StreamTimelineRequest | None = None,
        /,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> Generator[history_pb2.StreamTimelineResponse, None, None]:
        """One StreamTimeline call as it comes, keep-alives included, without reconnecting (see
        `follow_timeline` for that). A stream has no deadline unless `timeout` is given."""
        call = self._history.StreamTimeline(
            build_request(history_pb2.StreamTimelineRequest, request, fields), timeout=timeout, metadata=self._metadata
        )
        try:
            yield from call
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
    ) -> TimelineFollower:
        """A follower of the timeline from `after_cursor` (0: from the start), filtered like
        StreamTimeline; `retry` bounds consecutive failed reconnects (default: the client's policy)."""
        return TimelineFollower(
            self, build_request(history_pb2.StreamTimelineRequest, request, fields), retry or self._retry
        )

    def _invoke(
        self,
        attempt: Callable[[float | None], T],
        *,
        timeout: float | None,
        retry: bool,
    ) -> T:
        """Run `attempt(remaining_seconds)` until it answers, retrying UNAVAILABLE within the deadline."""
        budget = self._timeout if timeout is None else timeout
        deadline = None if budget is None else time.monotonic() + budget
        failures = 0
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                return attempt(remaining)
            except grpc.RpcError as err:
                failures += 1
                delay = self._retry.delay_after(err, failures, deadline) if retry else None
                if delay is None:
                    raise error_from_rpc(err) from err
            time.sleep(delay)

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
