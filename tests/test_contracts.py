"""SupervisorService contract RPCs: CreateContract, GetContract, AdvancePhase."""

from __future__ import annotations

import uuid

import grpc
import pytest
from sqlalchemy import select

from makima.server.app import App
from makima.server.store.models import HistoryEvent
from makima.v1 import resources_pb2, supervisor_pb2
from tests.helpers import Api, create_contract, fails


async def timeline_of(server: App, api: Api) -> list[HistoryEvent]:
    """The owner's timeline rows, read straight from the database."""
    async with server.runtime.db.read() as session:
        rows = await session.execute(
            select(HistoryEvent).where(HistoryEvent.owner_id == api.owner_id).order_by(HistoryEvent.cursor)
        )
        return list(rows.scalars())


async def test_create_and_get_contract(api: Api, server: App) -> None:
    created = await create_contract(api, "  login page  ", description="build it", initial_phase="plan")
    assert created.name == "login page"
    assert created.phase == "plan"
    assert created.status == resources_pb2.CONTRACT_STATUS_ACTIVE
    assert created.version == 1
    uuid.UUID(created.id)
    assert created.create_time.ToDatetime() == created.update_time.ToDatetime()

    got = await api.supervisor.GetContract(supervisor_pb2.GetContractRequest(contract_id=created.id), metadata=api.md)
    assert got.contract == created

    events = await timeline_of(server, api)
    assert [(e.cursor, e.kind, str(e.contract_id), e.phase) for e in events] == [
        (1, "contract_created", created.id, "plan")
    ]


async def test_default_phase_is_research(api: Api) -> None:
    assert (await create_contract(api)).phase == "research"


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 501}, "name"),
        ({"name": "ok", "initial_phase": "p" * 201}, "initial_phase"),
        ({"name": "ok", "request_id": "not-a-uuid"}, "request_id"),
    ],
)
async def test_create_contract_rejects_bad_fields(api: Api, server: App, request_fields: dict, field: str) -> None:
    failure = await fails(
        api.supervisor.CreateContract(supervisor_pb2.CreateContractRequest(**request_fields), metadata=api.md),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert failure.fields == [field]
    assert field in failure.message
    assert await timeline_of(server, api) == []


@pytest.mark.parametrize("contract_id", ["", "nope", "123"])
async def test_get_contract_rejects_bad_ids(api: Api, contract_id: str) -> None:
    failure = await fails(
        api.supervisor.GetContract(supervisor_pb2.GetContractRequest(contract_id=contract_id), metadata=api.md),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert failure.fields == ["contract_id"]


async def test_create_contract_is_idempotent_with_request_id(api: Api, server: App) -> None:
    request = supervisor_pb2.CreateContractRequest(request_id=str(uuid.uuid4()), name="once")
    first = await api.supervisor.CreateContract(request, metadata=api.md)
    again = await api.supervisor.CreateContract(request, metadata=api.md)
    assert again == first
    assert len(await timeline_of(server, api)) == 1

    reused = supervisor_pb2.CreateContractRequest(request_id=request.request_id, name="different")
    failure = await fails(
        api.supervisor.CreateContract(reused, metadata=api.md),
        grpc.StatusCode.INVALID_ARGUMENT,
        reason="REQUEST_ID_REUSED",
    )
    assert failure.fields == ["request_id"]


async def test_request_ids_are_per_owner(api: Api, other_api: Api) -> None:
    request = supervisor_pb2.CreateContractRequest(request_id=str(uuid.uuid4()), name="same id")
    mine = await api.supervisor.CreateContract(request, metadata=api.md)
    theirs = await other_api.supervisor.CreateContract(request, metadata=other_api.md)
    assert mine.contract.id != theirs.contract.id


async def test_advance_phase(api: Api, server: App) -> None:
    contract = await create_contract(api, initial_phase="research")
    response = await api.supervisor.AdvancePhase(
        supervisor_pb2.AdvancePhaseRequest(contract_id=contract.id, phase="plan", expected_version=1),
        metadata=api.md,
    )
    assert response.previous_phase == "research"
    assert response.contract.phase == "plan"
    assert response.contract.version == 2
    assert response.contract.update_time.ToDatetime() >= contract.update_time.ToDatetime()

    events = await timeline_of(server, api)
    assert [(e.kind, e.phase) for e in events] == [("contract_created", "research"), ("phase_advanced", "plan")]
    assert events[1].data == {"from_phase": "research", "to_phase": "plan", "version": 2}


async def test_advance_phase_with_stale_version_is_aborted(api: Api, server: App) -> None:
    contract = await create_contract(api)
    failure = await fails(
        api.supervisor.AdvancePhase(
            supervisor_pb2.AdvancePhaseRequest(contract_id=contract.id, phase="plan", expected_version=7),
            metadata=api.md,
        ),
        grpc.StatusCode.ABORTED,
        reason="VERSION_MISMATCH",
    )
    assert failure.metadata == {"contract": contract.id, "version": "1", "expected_version": "7"}
    got = await api.supervisor.GetContract(supervisor_pb2.GetContractRequest(contract_id=contract.id), metadata=api.md)
    assert got.contract.phase == "research"
    assert len(await timeline_of(server, api)) == 1


async def test_advance_phase_errors(api: Api, other_api: Api) -> None:
    contract = await create_contract(api)
    await fails(
        api.supervisor.AdvancePhase(
            supervisor_pb2.AdvancePhaseRequest(contract_id=contract.id, phase="research"), metadata=api.md
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        reason="ALREADY_IN_PHASE",
    )
    failure = await fails(
        api.supervisor.AdvancePhase(supervisor_pb2.AdvancePhaseRequest(contract_id=contract.id), metadata=api.md),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert failure.fields == ["phase"]
    await fails(
        other_api.supervisor.AdvancePhase(
            supervisor_pb2.AdvancePhaseRequest(contract_id=contract.id, phase="plan"), metadata=other_api.md
        ),
        grpc.StatusCode.NOT_FOUND,
    )
