"""SupervisorService: contracts and their supervisor."""

from __future__ import annotations

import uuid
from typing import Any

from makima.server.api import convert
from makima.server.api.base import Servicer
from makima.server.api.interceptor import ServicerContext
from makima.server.api.task_fork import worktree_request
from makima.server.api.validate import text_field, uuid_field
from makima.server.domain import contracts, supervisor
from makima.server.domain.errors import InvalidArgument
from makima.v1 import resources_pb2, supervisor_pb2_grpc
from makima.v1 import supervisor_pb2 as pb

_MODES = {
    pb.RESUME_MODE_CONTINUE: supervisor.ResumeMode.CONTINUE,
    pb.RESUME_MODE_RESTART_PHASE: supervisor.ResumeMode.RESTART_PHASE,
    pb.RESUME_MODE_FROM_CHECKPOINT: supervisor.ResumeMode.FROM_CHECKPOINT,
}


def _target(request: Any) -> dict[str, uuid.UUID]:
    which = request.WhichOneof("conversation")
    if which is None:
        raise InvalidArgument.of("contract_id", "set contract_id or task_id")
    return {which: uuid_field(getattr(request, which), which)}


def _expected(request: Any) -> int | None:
    if not request.HasField("expected_message_count"):
        return None
    if request.expected_message_count < 0:
        raise InvalidArgument.of("expected_message_count", "must not be negative")
    return int(request.expected_message_count)


def _supervisor_resumed(done: supervisor.SupervisorResumed) -> pb.ResumeSupervisorResponse:
    task = done.task
    return pb.ResumeSupervisorResponse(
        supervisor_task=convert.task(task),
        resumed_from=resources_pb2.ResumedFrom(
            phase=done.phase,
            last_activity_time=convert.ts(done.last_activity_time),
            message_count=task.message_count,
            daemon_id=str(task.daemon_id) if task.daemon_id else "",
            checkpoint_id=str(done.checkpoint.id) if done.checkpoint else "",
            previous_status=convert.enum_to_pb(resources_pb2.TaskStatus, "TASK_STATUS", done.previous_status),
        ),
        snapshot=convert.snapshot(done.snapshot) if done.snapshot else None,
        code_rewound=done.safety is not None,
        safety_checkpoint=convert.checkpoint(done.safety) if done.safety else None,
    )


def _conversation_rewound(done: supervisor.ConversationRewound) -> pb.RewindConversationResponse:
    return pb.RewindConversationResponse(
        task_id=str(done.task.id),
        messages_removed=done.removed,
        new_message_count=done.task.message_count,
        snapshot=convert.snapshot(done.snapshot),
        code_rewound=done.safety is not None,
        code_checkpoint=convert.checkpoint(done.code_checkpoint) if done.code_checkpoint else None,
        safety_checkpoint=convert.checkpoint(done.safety) if done.safety else None,
        code_not_rewound_reason=done.code_not_rewound_reason,
    )


def _conversation_restored(done: supervisor.ConversationRestored) -> pb.RestoreConversationResponse:
    return pb.RestoreConversationResponse(
        task_id=str(done.task.id),
        new_message_count=done.task.message_count,
        previous_snapshot=convert.snapshot(done.previous_snapshot),
    )


class SupervisorServicer(Servicer, supervisor_pb2_grpc.SupervisorServiceServicer):
    async def CreateContract(
        self, request: pb.CreateContractRequest, context: ServicerContext
    ) -> pb.CreateContractResponse:
        inp = contracts.CreateContractInput(
            name=text_field(request.name, "name"),
            description=request.description,
            initial_phase=text_field(request.initial_phase, "initial_phase", required=False) or contracts.DEFAULT_PHASE,
        )
        return await self.mutate(
            request,
            pb.CreateContractResponse,
            contracts.create_contract,
            inp,
            lambda view: pb.CreateContractResponse(contract=convert.contract(view)),
        )

    async def GetContract(self, request: pb.GetContractRequest, context: ServicerContext) -> pb.GetContractResponse:
        inp = contracts.GetContractInput(contract_id=uuid_field(request.contract_id, "contract_id"))
        view = await self.call(contracts.get_contract, inp)
        return pb.GetContractResponse(contract=convert.contract(view))

    async def AdvancePhase(self, request: pb.AdvancePhaseRequest, context: ServicerContext) -> pb.AdvancePhaseResponse:
        inp = contracts.AdvancePhaseInput(
            contract_id=uuid_field(request.contract_id, "contract_id"),
            phase=text_field(request.phase, "phase"),
            expected_version=request.expected_version if request.HasField("expected_version") else None,
        )
        return await self.mutate(
            request,
            pb.AdvancePhaseResponse,
            contracts.advance_phase,
            inp,
            lambda done: pb.AdvancePhaseResponse(
                contract=convert.contract(done.view), previous_phase=done.previous_phase
            ),
        )

    async def StartSupervisor(
        self, request: pb.StartSupervisorRequest, context: ServicerContext
    ) -> pb.StartSupervisorResponse:
        inp = supervisor.StartSupervisorInput(
            contract_id=uuid_field(request.contract_id, "contract_id"),
            instructions=request.instructions,
            worktree=worktree_request(request.worktree),
        )
        return await self.mutate(
            request,
            pb.StartSupervisorResponse,
            supervisor.start_supervisor,
            inp,
            lambda started: pb.StartSupervisorResponse(
                contract=convert.contract(started.view), supervisor_task=convert.task(started.task)
            ),
        )

    async def ResumeSupervisor(
        self, request: pb.ResumeSupervisorRequest, context: ServicerContext
    ) -> pb.ResumeSupervisorResponse:
        if request.mode not in _MODES:
            raise InvalidArgument.of("mode", "must be CONTINUE, RESTART_PHASE or FROM_CHECKPOINT")
        mode = _MODES[request.mode]
        checkpoint_id = None
        if mode == supervisor.ResumeMode.FROM_CHECKPOINT:
            checkpoint_id = uuid_field(request.checkpoint_id, "checkpoint_id")
        elif request.checkpoint_id or request.rewind_code:
            field = "checkpoint_id" if request.checkpoint_id else "rewind_code"
            raise InvalidArgument.of(field, "only applies to FROM_CHECKPOINT")
        inp = supervisor.ResumeSupervisorInput(
            contract_id=uuid_field(request.contract_id, "contract_id"),
            mode=mode,
            checkpoint_id=checkpoint_id,
            rewind_code=request.rewind_code,
        )
        return await self.mutate(
            request, pb.ResumeSupervisorResponse, supervisor.resume_supervisor, inp, _supervisor_resumed
        )

    async def RewindConversation(
        self, request: pb.RewindConversationRequest, context: ServicerContext
    ) -> pb.RewindConversationResponse:
        point = request.WhichOneof("point")
        inp = supervisor.RewindConversationInput(
            **_target(request),
            to_message_index=request.to_message_index if point == "to_message_index" else None,
            by_message_count=request.by_message_count if point == "by_message_count" else None,
            expected_message_count=_expected(request),
            rewind_code=request.rewind_code,
        )
        return await self.mutate(
            request, pb.RewindConversationResponse, supervisor.rewind_conversation, inp, _conversation_rewound
        )

    async def RestoreConversation(
        self, request: pb.RestoreConversationRequest, context: ServicerContext
    ) -> pb.RestoreConversationResponse:
        inp = supervisor.RestoreConversationInput(
            snapshot_id=uuid_field(request.snapshot_id, "snapshot_id"), expected_message_count=_expected(request)
        )
        return await self.mutate(
            request, pb.RestoreConversationResponse, supervisor.restore_conversation, inp, _conversation_restored
        )
