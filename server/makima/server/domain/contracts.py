"""Contract use cases: create, read, advance phase."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from makima.server.domain.enums import ContractStatus, TimelineKind
from makima.server.domain.errors import Aborted, FailedPrecondition, NotFound
from makima.server.domain.runtime import Caller, Tx
from makima.server.store import contracts as store
from makima.server.store.models import Contract

DEFAULT_PHASE = "research"


@dataclass(frozen=True)
class ContractView:
    """A contract with the id of its supervisor task (None until started)."""

    contract: Contract
    supervisor_task_id: uuid.UUID | None


@dataclass(frozen=True, kw_only=True, slots=True)
class CreateContractInput:
    name: str
    description: str = ""
    initial_phase: str = DEFAULT_PHASE


@dataclass(frozen=True, kw_only=True, slots=True)
class GetContractInput:
    contract_id: uuid.UUID


@dataclass(frozen=True, kw_only=True, slots=True)
class AdvancePhaseInput:
    contract_id: uuid.UUID
    phase: str
    expected_version: int | None = None


@dataclass(frozen=True)
class PhaseAdvanced:
    view: ContractView
    previous_phase: str


async def load_contract(
    session: AsyncSession, owner_id: uuid.UUID, contract_id: uuid.UUID, *, for_update: bool = False
) -> Contract:
    """The owner's contract, or NotFound (also for another owner's contract)."""
    contract = await store.get(session, owner_id=owner_id, contract_id=contract_id, for_update=for_update)
    if contract is None:
        raise NotFound.resource("contract", contract_id)
    return contract


async def _view(session: AsyncSession, contract: Contract) -> ContractView:
    state = await store.supervisor_state(session, owner_id=contract.owner_id, contract_id=contract.id)
    return ContractView(contract=contract, supervisor_task_id=state.task_id if state else None)


async def create_contract(tx: Tx, inp: CreateContractInput) -> ContractView:
    contract = Contract(
        owner_id=tx.owner_id,
        name=inp.name,
        description=inp.description,
        phase=inp.initial_phase,
        create_time=tx.now,
        update_time=tx.now,
    )
    tx.session.add(contract)
    await tx.session.flush()
    tx.record(
        TimelineKind.CONTRACT_CREATED,
        f"contract {contract.name!r} created in phase {contract.phase!r}",
        contract_id=contract.id,
        phase=contract.phase,
        data={"name": contract.name, "phase": contract.phase},
    )
    return ContractView(contract=contract, supervisor_task_id=None)


async def get_contract(caller: Caller, inp: GetContractInput) -> ContractView:
    async with caller.read() as session:
        found = await store.get_with_supervisor(session, owner_id=caller.owner_id, contract_id=inp.contract_id)
    if found is None:
        raise NotFound.resource("contract", inp.contract_id)
    return ContractView(contract=found[0], supervisor_task_id=found[1])


async def advance_phase(tx: Tx, inp: AdvancePhaseInput) -> PhaseAdvanced:
    contract = await load_contract(tx.session, tx.owner_id, inp.contract_id, for_update=True)
    if inp.expected_version is not None and inp.expected_version != contract.version:
        raise Aborted(
            f"contract {contract.id} is at version {contract.version}, not {inp.expected_version}",
            reason="VERSION_MISMATCH",
            metadata={
                "contract": str(contract.id),
                "version": str(contract.version),
                "expected_version": str(inp.expected_version),
            },
        )
    if contract.status != ContractStatus.ACTIVE:
        raise FailedPrecondition(
            f"contract {contract.id} is {contract.status}",
            reason="CONTRACT_CLOSED",
            metadata={"contract": str(contract.id), "status": contract.status},
        )
    if contract.phase == inp.phase:
        raise FailedPrecondition(
            f"contract {contract.id} is already in phase {inp.phase!r}",
            reason="ALREADY_IN_PHASE",
            metadata={"contract": str(contract.id), "phase": inp.phase},
        )
    previous = contract.phase
    contract.phase = inp.phase
    contract.version += 1
    contract.update_time = tx.now
    await tx.session.flush()
    tx.record(
        TimelineKind.PHASE_ADVANCED,
        f"contract {contract.name!r} moved from phase {previous!r} to {inp.phase!r}",
        contract_id=contract.id,
        phase=inp.phase,
        data={"from_phase": previous, "to_phase": inp.phase, "version": contract.version},
    )
    return PhaseAdvanced(view=await _view(tx.session, contract), previous_phase=previous)
