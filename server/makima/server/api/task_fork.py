"""TaskForkService: tasks, their checkpoints, rewinds, branches, forks and continuations."""

from __future__ import annotations

from makima.server.api import convert
from makima.server.api.base import Servicer
from makima.server.api.interceptor import ServicerContext
from makima.server.api.validate import optional_uuid, text_field, uuid_field
from makima.server.domain import code, tasks
from makima.server.domain.enums import WorktreePlacement
from makima.server.domain.errors import InvalidArgument
from makima.server.domain.worktrees import WorktreeRequest
from makima.v1 import resources_pb2, task_fork_pb2_grpc
from makima.v1 import task_fork_pb2 as pb


def placement_field(value: int, name: str) -> WorktreePlacement | None:
    """A WorktreePlacement field; None when unspecified."""
    if value == resources_pb2.WORKTREE_PLACEMENT_UNSPECIFIED:
        return None
    placement = convert.enum_from_pb(resources_pb2.WorktreePlacement, "WORKTREE_PLACEMENT", value, WorktreePlacement)
    if placement is None:
        raise InvalidArgument.of(name, f"is not a valid placement ({value})")
    return placement


def worktree_request(spec: resources_pb2.WorktreeSpec) -> WorktreeRequest | None:
    if spec.source == resources_pb2.WorktreeSpec.SOURCE_UNSPECIFIED:
        return None
    placement = placement_field(spec.placement, "worktree.placement") or WorktreePlacement.SERVICE
    if spec.source == resources_pb2.WorktreeSpec.SOURCE_EMPTY:
        return WorktreeRequest(placement=placement)
    if spec.source != resources_pb2.WorktreeSpec.SOURCE_REPOSITORY:
        raise InvalidArgument.of("worktree.source", f"unknown source {spec.source}")
    repository = text_field(spec.repository, "worktree.repository")
    return WorktreeRequest(repository=repository, ref=spec.ref or None, placement=placement)


def _mode(value: pb.RewindMode.ValueType) -> code.RewindMode:
    modes = {
        pb.REWIND_MODE_CODE: code.RewindMode.CODE,
        pb.REWIND_MODE_CONVERSATION: code.RewindMode.CONVERSATION,
        pb.REWIND_MODE_BOTH: code.RewindMode.BOTH,
    }
    if value not in modes:
        raise InvalidArgument.of("mode", "must be CODE, CONVERSATION or BOTH")
    return modes[value]


def resumed_from(done: code.TaskResumed) -> resources_pb2.ResumedFrom:
    task, resumed = done.task, done.resumed_from
    return resources_pb2.ResumedFrom(
        phase=resumed.phase,
        last_activity_time=convert.ts(task.last_activity_time),
        message_count=task.message_count,
        daemon_id=str(task.daemon_id) if task.daemon_id else "",
        checkpoint_id=str(resumed.checkpoint_id) if resumed.checkpoint_id else "",
        previous_status=convert.enum_to_pb(resources_pb2.TaskStatus, "TASK_STATUS", resumed.previous_status),
    )


def _rewound(done: code.Rewound) -> pb.RewindTaskResponse:
    return pb.RewindTaskResponse(
        task=convert.task(done.task),
        code_rewound=done.safety is not None,
        safety_checkpoint=convert.checkpoint(done.safety) if done.safety else None,
        conversation_rewound=done.conversation_snapshot is not None,
        conversation_snapshot=convert.snapshot(done.conversation_snapshot) if done.conversation_snapshot else None,
        rewind_checkpoint=convert.checkpoint(done.rewind) if done.rewind else None,
    )


def _resumed_from_checkpoint(done: code.TaskResumedFromCheckpoint) -> pb.ResumeTaskFromCheckpointResponse:
    rewound = done.rewound
    return pb.ResumeTaskFromCheckpointResponse(
        task=convert.task(done.task),
        resumed_from=resumed_from(done),
        safety_checkpoint=convert.checkpoint(rewound.safety) if rewound.safety else None,
        conversation_snapshot=convert.snapshot(rewound.conversation_snapshot)
        if rewound.conversation_snapshot
        else None,
        rewind_checkpoint=convert.checkpoint(rewound.rewind) if rewound.rewind else None,
    )


def _continued(done: code.Continued) -> pb.ContinueTaskResponse:
    return pb.ContinueTaskResponse(
        task=convert.task(done.task),
        source_checkpoint=convert.checkpoint(done.source_checkpoint) if done.source_checkpoint else None,
    )


class TaskForkServicer(Servicer, task_fork_pb2_grpc.TaskForkServiceServicer):
    async def CreateTask(self, request: pb.CreateTaskRequest, context: ServicerContext) -> pb.CreateTaskResponse:
        inp = tasks.CreateTaskInput(
            name=text_field(request.name, "name"),
            instructions=request.instructions,
            contract_id=optional_uuid(request.contract_id, "contract_id"),
            parent_task_id=optional_uuid(request.parent_task_id, "parent_task_id"),
            worktree=worktree_request(request.worktree),
        )
        return await self.mutate(
            request,
            pb.CreateTaskResponse,
            tasks.create_task,
            inp,
            lambda t: pb.CreateTaskResponse(task=convert.task(t)),
        )

    async def GetTask(self, request: pb.GetTaskRequest, context: ServicerContext) -> pb.GetTaskResponse:
        task = await self.call(tasks.get_task, tasks.GetTaskInput(task_id=uuid_field(request.task_id, "task_id")))
        return pb.GetTaskResponse(task=convert.task(task))

    async def CreateCheckpoint(
        self, request: pb.CreateCheckpointRequest, context: ServicerContext
    ) -> pb.CreateCheckpointResponse:
        inp = code.CreateCheckpointInput(
            task_id=uuid_field(request.task_id, "task_id"),
            message=text_field(request.message, "message", required=False) or "checkpoint",
        )
        return await self.mutate(
            request,
            pb.CreateCheckpointResponse,
            code.create_checkpoint,
            inp,
            lambda c: pb.CreateCheckpointResponse(checkpoint=convert.checkpoint(c)),
        )

    async def CompareCheckpoints(
        self, request: pb.CompareCheckpointsRequest, context: ServicerContext
    ) -> pb.CompareCheckpointsResponse:
        inp = code.CompareCheckpointsInput(
            task_id=uuid_field(request.task_id, "task_id"),
            base_checkpoint_id=uuid_field(request.base_checkpoint_id, "base_checkpoint_id"),
            target_checkpoint_id=optional_uuid(request.target_checkpoint_id, "target_checkpoint_id"),
        )
        result = await self.call(code.compare_checkpoints, inp)
        return pb.CompareCheckpointsResponse(
            base_commit_sha=result.base.commit_sha,
            target_commit_sha=result.target.commit_sha if result.target else "",
            changes=[convert.file_change(c) for c in result.changes],
        )

    async def RewindTask(self, request: pb.RewindTaskRequest, context: ServicerContext) -> pb.RewindTaskResponse:
        inp = code.RewindTaskInput(
            task_id=uuid_field(request.task_id, "task_id"),
            checkpoint_id=uuid_field(request.checkpoint_id, "checkpoint_id"),
            mode=_mode(request.mode),
            force=request.force,
        )
        return await self.mutate(request, pb.RewindTaskResponse, code.rewind_task, inp, _rewound)

    async def ResumeTask(self, request: pb.ResumeTaskRequest, context: ServicerContext) -> pb.ResumeTaskResponse:
        inp = code.ResumeTaskInput(task_id=uuid_field(request.task_id, "task_id"))
        return await self.mutate(
            request,
            pb.ResumeTaskResponse,
            code.resume_task,
            inp,
            lambda done: pb.ResumeTaskResponse(task=convert.task(done.task), resumed_from=resumed_from(done)),
        )

    async def ResumeTaskFromCheckpoint(
        self, request: pb.ResumeTaskFromCheckpointRequest, context: ServicerContext
    ) -> pb.ResumeTaskFromCheckpointResponse:
        inp = code.ResumeFromCheckpointInput(
            task_id=uuid_field(request.task_id, "task_id"),
            checkpoint_id=uuid_field(request.checkpoint_id, "checkpoint_id"),
        )
        return await self.mutate(
            request, pb.ResumeTaskFromCheckpointResponse, code.resume_from_checkpoint, inp, _resumed_from_checkpoint
        )

    async def CreateBranch(self, request: pb.CreateBranchRequest, context: ServicerContext) -> pb.CreateBranchResponse:
        inp = code.CreateBranchInput(
            task_id=uuid_field(request.task_id, "task_id"),
            checkpoint_id=uuid_field(request.checkpoint_id, "checkpoint_id"),
            name=text_field(request.branch_name, "branch_name"),
        )
        code.git_name_ok(inp.name)
        return await self.mutate(
            request,
            pb.CreateBranchResponse,
            code.create_branch,
            inp,
            lambda branch: pb.CreateBranchResponse(ref=branch.ref, commit_sha=branch.commit_sha),
        )

    async def ForkTask(self, request: pb.ForkTaskRequest, context: ServicerContext) -> pb.ForkTaskResponse:
        point = request.WhichOneof("point")
        if point is None:
            raise InvalidArgument.of("checkpoint_id", "set checkpoint_id or message_index")
        if request.branch_name:
            code.git_name_ok(request.branch_name)
        inp = code.ForkInput(
            task_id=uuid_field(request.task_id, "task_id"),
            checkpoint_id=uuid_field(request.checkpoint_id, "checkpoint_id") if point == "checkpoint_id" else None,
            message_index=request.message_index if point == "message_index" else None,
            name=text_field(request.name, "name", required=False),
            branch_name=request.branch_name,
            placement=placement_field(request.placement, "placement"),
        )
        return await self.mutate(
            request,
            pb.ForkTaskResponse,
            code.fork_task,
            inp,
            lambda forked: pb.ForkTaskResponse(task=convert.task(forked.task), commit_sha=forked.commit_sha),
        )

    async def ContinueTask(self, request: pb.ContinueTaskRequest, context: ServicerContext) -> pb.ContinueTaskResponse:
        inp = code.ContinueInput(
            task_id=uuid_field(request.task_id, "task_id"),
            name=text_field(request.name, "name", required=False),
            instructions=request.instructions,
            placement=placement_field(request.placement, "placement"),
        )
        return await self.mutate(request, pb.ContinueTaskResponse, code.continue_task, inp, _continued)
