"""API keys: required on every makima RPC, in either header; owners never see each other."""

from __future__ import annotations

import grpc
import pytest
from grpc import aio

from makima.v1 import supervisor_pb2, supervisor_pb2_grpc
from tests.helpers import Api, create_contract, fails

GET = supervisor_pb2.GetContractRequest(contract_id="00000000-0000-4000-8000-000000000000")


async def test_missing_key_is_unauthenticated(api: Api) -> None:
    failure = await fails(api.supervisor.GetContract(GET), grpc.StatusCode.UNAUTHENTICATED)
    assert "API key" in failure.message


@pytest.mark.parametrize(
    "metadata",
    [
        (("authorization", "Bearer mk_not-a-real-key"),),
        (("x-api-key", "mk_not-a-real-key"),),
        (("authorization", "Basic dXNlcjpwYXNz"),),
    ],
)
async def test_invalid_key_is_unauthenticated(api: Api, metadata: tuple[tuple[str, str], ...]) -> None:
    await fails(api.supervisor.GetContract(GET, metadata=metadata), grpc.StatusCode.UNAUTHENTICATED)


async def test_both_headers_are_accepted(api: Api) -> None:
    contract = await create_contract(api, "headers")
    request = supervisor_pb2.GetContractRequest(contract_id=contract.id)
    by_bearer = await api.supervisor.GetContract(request, metadata=(("authorization", f"Bearer {api.key}"),))
    by_header = await api.supervisor.GetContract(request, metadata=(("x-api-key", api.key),))
    assert by_bearer.contract.id == by_header.contract.id == contract.id


async def test_unimplemented_rpc_still_needs_a_key(api: Api, channel: aio.Channel) -> None:
    stub = supervisor_pb2_grpc.SupervisorServiceStub(channel)
    request = supervisor_pb2.StartSupervisorRequest(contract_id=GET.contract_id)
    await fails(stub.StartSupervisor(request), grpc.StatusCode.UNAUTHENTICATED)


async def test_other_owners_contract_is_not_found(api: Api, other_api: Api) -> None:
    contract = await create_contract(api, "mine")
    request = supervisor_pb2.GetContractRequest(contract_id=contract.id)
    failure = await fails(other_api.supervisor.GetContract(request, metadata=other_api.md), grpc.StatusCode.NOT_FOUND)
    assert failure.reason == "NOT_FOUND"
    # Same answer as for an id that never existed: nothing tells that the contract exists.
    missing = await fails(other_api.supervisor.GetContract(GET, metadata=other_api.md), grpc.StatusCode.NOT_FOUND)
    assert failure.message.replace(contract.id, "ID") == missing.message.replace(GET.contract_id, "ID")
