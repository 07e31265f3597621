"""AsyncClient against the real server: connection defaults, calls, request ids and typed errors."""

from __future__ import annotations

import uuid

import grpc
import pytest

from makima.client import (
    AbortedError,
    AsyncClient,
    FailedPreconditionError,
    InvalidArgumentError,
    MakimaError,
    NotFoundError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnimplementedError,
)
from makima.server.app import App
from makima.v1 import history_pb2, resources_pb2, supervisor_pb2
from tests.client.net import server_without_makima
from tests.helpers import Api
from tests.test_contracts import timeline_of


async def test_env_gives_address_and_key(monkeypatch: pytest.MonkeyPatch, address: str, api: Api) -> None:
    monkeypatch.setenv("MAKIMA_ADDRESS", address)
    monkeypatch.setenv("MAKIMA_API_KEY", api.key)
    async with AsyncClient() as client:
        created = await client.create_contract(name="from env")
        got = await client.get_contract(contract_id=created.contract.id)
    assert client.address == address
    assert got.contract == created.contract


async def test_defaults_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAKIMA_ADDRESS", raising=False)
    monkeypatch.delenv("MAKIMA_API_KEY", raising=False)
    async with AsyncClient() as client:
        assert client.address == "127.0.0.1:50051"


async def test_explicit_arguments_win_over_env(monkeypatch: pytest.MonkeyPatch, address: str, api: Api) -> None:
    monkeypatch.setenv("MAKIMA_ADDRESS", "127.0.0.1:1")
    monkeypatch.setenv("MAKIMA_API_KEY", "mk_wrong")
    async with AsyncClient(address, api.key) as client:
        created = await client.create_contract(name="explicit")
    assert created.contract.name == "explicit"


async def test_without_key_is_unauthenticated(monkeypatch: pytest.MonkeyPatch, address: str) -> None:
    monkeypatch.setenv("MAKIMA_API_KEY", "mk_from_env")
    async with AsyncClient(address, api_key="") as client:  # "" means no key at all, not the env's
        with pytest.raises(UnauthenticatedError) as caught:
            await client.get_contract(contract_id=str(uuid.uuid4()))
    err = caught.value
    assert err.code == grpc.StatusCode.UNAUTHENTICATED
    assert err.reason == "UNAUTHENTICATED"
    assert "API key" in err.message


async def test_invalid_key_is_unauthenticated(address: str) -> None:
    async with AsyncClient(address, "mk_not-a-real-key") as client:
        with pytest.raises(UnauthenticatedError):
            await client.create_contract(name="nope")


async def test_request_message_or_keyword_fields(client: AsyncClient) -> None:
    request = supervisor_pb2.CreateContractRequest(name="by message", initial_phase="plan")
    by_message = await client.create_contract(request)
    by_fields = await client.create_contract(name="by fields", initial_phase="plan")
    assert (by_message.contract.name, by_message.contract.phase) == ("by message", "plan")
    assert (by_fields.contract.name, by_fields.contract.phase) == ("by fields", "plan")
    assert request.request_id == ""  # the client filled a request_id into its own copy only
    with pytest.raises(TypeError):
        await client.create_contract(request, name="both")


async def test_create_get_advance(client: AsyncClient) -> None:
    contract = (await client.create_contract(name="login page", description="build it")).contract
    advanced = await client.advance_phase(contract_id=contract.id, phase="plan", expected_version=1)
    task = (await client.create_task(name="write tests", contract_id=contract.id)).task
    got_task = await client.get_task(task_id=task.id)
    got_contract = await client.get_contract(contract_id=contract.id)

    assert advanced.previous_phase == "research"
    assert got_contract.contract == advanced.contract
    assert (got_contract.contract.phase, got_contract.contract.version) == ("plan", 2)
    assert got_task.task == task
    assert task.status == resources_pb2.TASK_STATUS_PENDING


async def test_same_request_id_gets_the_first_answer(client: AsyncClient, server: App, api: Api) -> None:
    request_id = str(uuid.uuid4())
    first = await client.create_contract(request_id=request_id, name="once")
    again = await client.create_contract(request_id=request_id, name="once")
    assert again == first
    assert [e.kind for e in await timeline_of(server, api)] == ["contract_created"]

    with pytest.raises(InvalidArgumentError) as caught:
        await client.create_contract(request_id=request_id, name="something else")
    assert caught.value.reason == "REQUEST_ID_REUSED"
    assert [v.field for v in caught.value.field_violations] == ["request_id"]


async def test_each_logical_call_gets_its_own_request_id(client: AsyncClient) -> None:
    request = supervisor_pb2.CreateContractRequest(name="twice")
    first = await client.create_contract(request)
    second = await client.create_contract(request)
    assert first.contract.id != second.contract.id


async def test_other_owners_contract_is_not_found(client: AsyncClient, address: str, other_api: Api) -> None:
    contract = (await client.create_contract(name="mine")).contract
    async with AsyncClient(address, other_api.key) as theirs:
        with pytest.raises(NotFoundError) as caught:
            await theirs.get_contract(contract_id=contract.id)
    err = caught.value
    assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    assert contract.id in err.message
    assert contract.id in err.metadata.values()
    assert str(err) == f"NOT_FOUND NOT_FOUND: {err.message}"


async def test_bad_field_is_invalid_argument_naming_the_field(client: AsyncClient) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await client.get_contract(contract_id="not-a-uuid")
    err = caught.value
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in err.field_violations] == ["contract_id"]
    assert err.field_violations[0].description
    assert "contract_id" in err.message


async def test_concurrency_and_state_errors_are_typed(client: AsyncClient) -> None:
    contract = (await client.create_contract(name="versions")).contract
    with pytest.raises(AbortedError) as aborted:
        await client.advance_phase(contract_id=contract.id, phase="plan", expected_version=7)
    with pytest.raises(FailedPreconditionError) as precondition:
        await client.advance_phase(contract_id=contract.id, phase="research")
    assert aborted.value.reason == "VERSION_MISMATCH"
    assert aborted.value.metadata["expected_version"] == "7"
    assert precondition.value.reason == "ALREADY_IN_PHASE"
    assert isinstance(precondition.value, MakimaError)


async def test_a_request_past_the_message_size_limit_is_resource_exhausted(client: AsyncClient) -> None:
    with pytest.raises(ResourceExhaustedError) as caught:
        await client.create_contract(name="big", description="x" * (5 * 1024 * 1024))
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_an_rpc_the_server_does_not_offer_is_unimplemented() -> None:
    async with server_without_makima() as port, AsyncClient(f"127.0.0.1:{port}", "mk_any") as client:
        with pytest.raises(UnimplementedError) as caught:
            await client.get_contract(contract_id=str(uuid.uuid4()))
    assert caught.value.code == grpc.StatusCode.UNIMPLEMENTED
    assert caught.value.reason == "UNIMPLEMENTED"  # no ErrorInfo from a foreign server: the code's name


async def test_task_lineage(client: AsyncClient) -> None:
    root = (await client.create_task(name="root")).task
    child = (await client.create_task(name="child", parent_task_id=root.id)).task
    lineage = await client.get_task_lineage(task_id=child.id)
    assert lineage.root_task_id == root.id
    assert [(n.task.id, n.depth, n.relation) for n in lineage.nodes] == [
        (root.id, 0, history_pb2.LINEAGE_RELATION_ROOT),
        (child.id, 1, history_pb2.LINEAGE_RELATION_SUBTASK),
    ]
