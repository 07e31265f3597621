"""SupervisorService: contracts and their supervisor."""

from __future__ import annotations

from grpc import aio

from makima.server.api import convert
from makima.server.api.base import Servicer
from makima.server.api.interceptor import current_principal
from makima.server.api.validate import MAX_NAME, MAX_PHASE, text_field, uuid_field
from makima.server.domain import contracts
from makima.server.domain.runtime import Tx
from makima.v1 import supervisor_pb2 as pb
from makima.v1 import supervisor_pb2_grpc


class SupervisorServicer(Servicer, supervisor_pb2_grpc.SupervisorServiceServicer):
    async def CreateContract(
        self, request: pb.CreateContractRequest, context: aio.ServicerContext
    ) -> pb.CreateContractResponse:
        inp = contracts.CreateContractInput(
            name=text_field(request.name, "name", max_length=MAX_NAME),
            description=request.description,
            initial_phase=text_field(request.initial_phase, "initial_phase", max_length=MAX_PHASE, required=False)
            or contracts.DEFAULT_PHASE,
        )

        async def body(tx: Tx) -> pb.CreateContractResponse:
            return pb.CreateContractResponse(contract=convert.contract(await contracts.create_contract(tx, inp)))

        return await self.mutate(request, pb.CreateContractResponse, body)

    async def GetContract(self, request: pb.GetContractRequest, context: aio.ServicerContext) -> pb.GetContractResponse:
        contract_id = uuid_field(request.contract_id, "contract_id")
        view = await contracts.get_contract(self.rt, current_principal(), contract_id)
        return pb.GetContractResponse(contract=convert.contract(view))

    async def AdvancePhase(
        self, request: pb.AdvancePhaseRequest, context: aio.ServicerContext
    ) -> pb.AdvancePhaseResponse:
        inp = contracts.AdvancePhaseInput(
            contract_id=uuid_field(request.contract_id, "contract_id"),
            phase=text_field(request.phase, "phase", max_length=MAX_PHASE),
            expected_version=request.expected_version if request.HasField("expected_version") else None,
        )

        async def body(tx: Tx) -> pb.AdvancePhaseResponse:
            result = await contracts.advance_phase(tx, inp)
            return pb.AdvancePhaseResponse(contract=convert.contract(result.view), previous_phase=result.previous_phase)

        return await self.mutate(request, pb.AdvancePhaseResponse, body)
