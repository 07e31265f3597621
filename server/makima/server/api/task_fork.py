"""TaskForkService: tasks, and (to come) their checkpoints, rewinds, branches and forks."""

from __future__ import annotations

from grpc import aio

from makima.server.api import convert
from makima.server.api.base import Servicer
from makima.server.api.interceptor import current_principal
from makima.server.api.validate import MAX_NAME, optional_uuid, text_field, uuid_field
from makima.server.domain import tasks
from makima.server.domain.errors import InvalidArgument
from makima.server.domain.runtime import Tx
from makima.v1 import resources_pb2, task_fork_pb2_grpc
from makima.v1 import task_fork_pb2 as pb


def _worktree(spec: resources_pb2.WorktreeSpec) -> tasks.WorktreeRequest | None:
    if spec.source == resources_pb2.WorktreeSpec.SOURCE_UNSPECIFIED:
        return None
    if spec.source == resources_pb2.WorktreeSpec.SOURCE_EMPTY:
        return tasks.WorktreeRequest()
    if spec.source != resources_pb2.WorktreeSpec.SOURCE_REPOSITORY:
        raise InvalidArgument.of("worktree.source", f"unknown source {spec.source}")
    repository = text_field(spec.repository, "worktree.repository", max_length=4096)
    return tasks.WorktreeRequest(repository=repository, ref=spec.ref or None)


class TaskForkServicer(Servicer, task_fork_pb2_grpc.TaskForkServiceServicer):
    async def CreateTask(self, request: pb.CreateTaskRequest, context: aio.ServicerContext) -> pb.CreateTaskResponse:
        inp = tasks.CreateTaskInput(
            name=text_field(request.name, "name", max_length=MAX_NAME),
            instructions=request.instructions,
            contract_id=optional_uuid(request.contract_id, "contract_id"),
            parent_task_id=optional_uuid(request.parent_task_id, "parent_task_id"),
            worktree=_worktree(request.worktree),
        )

        async def body(tx: Tx) -> pb.CreateTaskResponse:
            return pb.CreateTaskResponse(task=convert.task(await tasks.create_task(tx, inp)))

        return await self.mutate(request, pb.CreateTaskResponse, body)

    async def GetTask(self, request: pb.GetTaskRequest, context: aio.ServicerContext) -> pb.GetTaskResponse:
        task = await tasks.get_task(self.rt, current_principal(), uuid_field(request.task_id, "task_id"))
        return pb.GetTaskResponse(task=convert.task(task))
