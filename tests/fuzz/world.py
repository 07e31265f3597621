"""The resources the fuzz starts from, made through the API for two owners.

Each owner gets contracts (one with a started supervisor), tasks with and without worktrees, files
in the worktrees, messages, events, checkpoints, a rewound conversation (so snapshots), a branch, a
fork, a continuation, daemons (one holding a claimed task, a failed task reported by it) and page
tokens of every paged RPC. The other owner's every text carries its marker, so that any answer to
the owner under test that shows it is a leak.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from google.protobuf import duration_pb2, struct_pb2
from google.protobuf.message import Message

from makima.v1 import daemon_pb2, history_pb2, resources_pb2, supervisor_pb2, task_fork_pb2
from tests.fuzz.pool import ID_KINDS, Holdings, id_kind
from tests.fuzz.rpcs import Answer, all_rpcs, invoke
from tests.helpers import Api

EMPTY = resources_pb2.WorktreeSpec(source=resources_pb2.WorktreeSpec.SOURCE_EMPTY)
USER = resources_pb2.MESSAGE_ROLE_USER
ASSISTANT = resources_pb2.MESSAGE_ROLE_ASSISTANT


class _Maker:
    """Calls through the typed stubs, remembering everything the answers name."""

    def __init__(self, api: Api, marker: str) -> None:
        self.api = api
        self.marker = marker
        self.held = Holdings()

    def text(self, words: str) -> str:
        return f"{self.marker} {words}".strip()

    def data(self, words: str) -> struct_pb2.Struct:
        out = struct_pb2.Struct()
        out.update({"note": self.text(words), "n": 1})
        return out

    async def call(self, method: Callable[..., Awaitable[Message]], request: Message) -> Any:
        response = await method(request, metadata=self.api.md)
        self.held.absorb(response)
        return response

    async def events(self, task_id: str, first: int, count: int) -> None:
        request = daemon_pb2.RecordTaskEventsRequest(
            task_id=task_id,
            events=[
                resources_pb2.NewTaskEvent(
                    sequence=s,
                    kind=resources_pb2.TASK_EVENT_KIND_OUTPUT,
                    text=self.text(f"event {s}"),
                    data=self.data("e"),
                )
                for s in range(first, first + count)
            ],
        )
        self.held.absorb(await self.api.daemon.RecordTaskEvents(iter([request]), metadata=self.api.md))

    async def messages(self, expected: int, *words: str, **target: str) -> None:
        await self.call(
            self.api.daemon.AppendMessages,
            daemon_pb2.AppendMessagesRequest(
                request_id=self.held.new_request_id(),
                expected_next_index=expected,
                messages=[
                    resources_pb2.NewConversationMessage(
                        role=USER if i % 2 == 0 else ASSISTANT, content=self.text(w), metadata=self.data(w)
                    )
                    for i, w in enumerate(words)
                ],
                **target,
            ),
        )

    def write(self, worktree: str, files: dict[str, str]) -> None:
        for name, content in files.items():
            path = Path(worktree) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.text(content))


async def populate(api: Api, marker: str = "") -> Holdings:
    """Make one owner's resources; every text, file name and file content carries `marker`."""
    m = _Maker(api, marker)
    s, t, d, rid = api.supervisor, api.tasks, api.daemon, m.held.new_request_id
    c1 = (
        await m.call(
            s.CreateContract,
            supervisor_pb2.CreateContractRequest(
                request_id=rid(), name=m.text("contract"), description=m.text("what for"), initial_phase=m.text("plan")
            ),
        )
    ).contract
    c2 = (await m.call(s.CreateContract, supervisor_pb2.CreateContractRequest(name=m.text("second")))).contract
    await m.call(
        s.StartSupervisor,
        supervisor_pb2.StartSupervisorRequest(
            request_id=rid(), contract_id=c1.id, instructions=m.text("supervise"), worktree=EMPTY
        ),
    )
    await m.messages(0, "hello", "a plan", contract_id=c1.id)
    await m.call(s.AdvancePhase, supervisor_pb2.AdvancePhaseRequest(contract_id=c1.id, phase=m.text("execute")))

    coder = (
        await m.call(
            t.CreateTask,
            task_fork_pb2.CreateTaskRequest(
                request_id=rid(), contract_id=c1.id, name=m.text("coder"), instructions=m.text("code"), worktree=EMPTY
            ),
        )
    ).task
    tag = marker or "own"
    m.write(coder.worktree_path, {f"{tag}-notes.txt": "notes", "src/app.py": "print('app')"})
    await m.messages(0, "do it", "on it", "done", task_id=coder.id)
    await m.events(coder.id, 1, 4)
    first = (
        await m.call(t.CreateCheckpoint, task_fork_pb2.CreateCheckpointRequest(task_id=coder.id, message=m.text("one")))
    ).checkpoint
    m.write(coder.worktree_path, {"src/app.py": "print('two')", f"src/{tag}-new.txt": "new"})
    await m.call(t.CreateCheckpoint, task_fork_pb2.CreateCheckpointRequest(task_id=coder.id, message=m.text("two")))
    await m.call(s.RewindConversation, supervisor_pb2.RewindConversationRequest(task_id=coder.id, by_message_count=1))
    await m.call(
        t.CreateBranch,
        task_fork_pb2.CreateBranchRequest(task_id=coder.id, checkpoint_id=first.id, branch_name=f"fuzz/{tag}-branch"),
    )
    helper = (
        await m.call(
            t.CreateTask,
            task_fork_pb2.CreateTaskRequest(contract_id=c2.id, name=m.text("helper"), parent_task_id=coder.id),
        )
    ).task
    await m.messages(0, "help", task_id=helper.id)
    await m.events(helper.id, 1, 2)
    await m.call(
        t.ForkTask, task_fork_pb2.ForkTaskRequest(task_id=coder.id, checkpoint_id=first.id, name=m.text("fork"))
    )

    daemon = (
        await m.call(d.RegisterDaemon, daemon_pb2.RegisterDaemonRequest(name=m.text("daemon"), hostname=m.text("host")))
    ).daemon
    await m.call(d.RegisterDaemon, daemon_pb2.RegisterDaemonRequest(name=m.text("idle daemon")))
    claim = daemon_pb2.ClaimTaskRequest(daemon_id=daemon.id, wait=duration_pb2.Duration())
    await m.call(d.ClaimTask, claim)  # the supervisor, left running
    failed = (await m.call(d.ClaimTask, claim)).claimed.task  # the coder, reported failed
    await m.call(
        d.ReportTaskStatus,
        daemon_pb2.ReportTaskStatusRequest(
            daemon_id=daemon.id, task_id=failed.id, status=resources_pb2.TASK_STATUS_FAILED, message=m.text("broke")
        ),
    )
    await m.call(t.ContinueTask, task_fork_pb2.ContinueTaskRequest(task_id=failed.id, name=m.text("continued")))
    for task_id in list(m.held.ids["task"]):
        await m.call(api.history.ListCheckpoints, history_pb2.ListCheckpointsRequest(task_id=task_id))
        await m.call(
            api.history.ListConversationSnapshots, history_pb2.ListConversationSnapshotsRequest(task_id=task_id)
        )
    await seed_tokens(api, m.held)
    return m.held


async def seed_tokens(api: Api, held: Holdings) -> None:
    """Ask every paged RPC (a request with `page_token`) for one-item pages until one answers with a token.

    The first try sets no id; later ones fill every id field with the owner's n-th id of its kind.
    Nothing here names an RPC.
    """
    for rpc in all_rpcs():
        fields = rpc.method.input_type.fields_by_name
        if "page_token" not in fields or rpc.client_streaming or rpc.server_streaming:
            continue
        for attempt in range(-1, 5):
            request = rpc.request_type()
            for name, fd in fields.items():
                kind = id_kind(name)
                if attempt >= 0 and kind in ID_KINDS and not fd.is_repeated and held.ids[kind]:
                    choices = held.ids[kind]
                    setattr(request, name, choices[attempt % len(choices)])
            if "page_size" in fields:
                request.page_size = 1  # type: ignore[attr-defined]
            answer: Answer = await invoke(api.channel, rpc, [request], api.md)
            for response in answer.responses:
                held.absorb(response)
            if any(getattr(r, "next_page_token", "") for r in answer.responses):
                break
