"""The server as clients see it: reflection, health, grpcurl, the CLI entry point, logs, shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import uuid
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from makima.server.api.errors import status_for
from makima.server.app import SERVICE_NAMES, App
from tests.helpers import Api, create_contract, free_port

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or "grpcurl"


async def run(
    *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None, seconds: float = 60
) -> tuple[int, str, str]:
    """Run a command without blocking the event loop that serves the in-process server."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=cwd
    )
    out, err = await asyncio.wait_for(proc.communicate(), seconds)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_reflection_lists_every_service(channel: aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = [
        r async for r in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    ]
    names = {s.name for s in responses[0].list_services_response.service}
    assert names == {
        *SERVICE_NAMES,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }


async def test_health_is_serving_without_a_key(channel: aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", *SERVICE_NAMES):
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service


async def test_grpcurl_lists_and_calls(server: App, api: Api) -> None:
    address = f"127.0.0.1:{server.port}"
    code, out, err = await run(GRPCURL, "-plaintext", address, "list")
    assert code == 0, err
    assert set(out.split()) >= set(SERVICE_NAMES)

    code, out, err = await run(
        GRPCURL,
        "-plaintext",
        "-H",
        f"authorization: Bearer {api.key}",
        "-d",
        json.dumps({"name": "from grpcurl", "initialPhase": "plan"}),
        address,
        "makima.v1.SupervisorService/CreateContract",
    )
    assert code == 0, err
    contract = json.loads(out)["contract"]
    assert (contract["name"], contract["phase"], contract["status"]) == (
        "from grpcurl",
        "plan",
        "CONTRACT_STATUS_ACTIVE",
    )

    code, out, err = await run(GRPCURL, "-plaintext", "-d", "{}", address, "makima.v1.SupervisorService/GetContract")
    assert code == 64 + 16, (code, err)  # grpcurl exits with 64 + the gRPC code (16 = UNAUTHENTICATED)
    assert '"reason":"UNAUTHENTICATED"' in err.replace(" ", "")


def test_unimplemented_rpc_says_so() -> None:
    """A method left to the generated base class (which raises NotImplementedError) is UNIMPLEMENTED.

    Every makima.v1 RPC is implemented now, so this checks the mapping itself rather than a live call.
    """
    code, status = status_for(NotImplementedError("Method not implemented!"), "/makima.v1.DaemonService/ClaimTask")
    assert code == status.code == grpc.StatusCode.UNIMPLEMENTED
    assert "ClaimTask" in status.details
    rich = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
    info = error_details_pb2.ErrorInfo()
    assert rich.details[0].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "UNIMPLEMENTED",
        "makima",
        {"method": "/makima.v1.DaemonService/ClaimTask"},
    )


async def test_serve_command_logs_each_rpc_and_stops_on_sigterm(tmp_path: Path, empty_database_url: str) -> None:
    """`makima-server serve` configured by MAKIMA_* variables; SIGTERM ends it cleanly."""
    port = free_port()
    env = os.environ | {
        "MAKIMA_LISTEN": f"127.0.0.1:{port}",
        "MAKIMA_DATABASE_URL": empty_database_url,
        "MAKIMA_WORKSPACE_ROOT": str(tmp_path / "ws"),
    }
    server_bin = str(Path(sys.executable).parent / "makima-server")
    code, key, err = await run(server_bin, "create-api-key", "--owner", str(uuid.uuid4()), env=env)
    assert code == 0, err
    key = key.strip()
    assert key.startswith("mk_")

    proc = await asyncio.create_subprocess_exec(
        server_bin, "serve", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            api = Api(channel=channel, owner_id=uuid.uuid4(), key=key)
            contract = await create_contract(api, "served")
            assert contract.name == "served"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err_bytes = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    lines = [json.loads(line) for line in err_bytes.decode().splitlines() if line.startswith("{")]
    rpcs = [line for line in lines if line["msg"] == "rpc"]
    assert any(r["rpc_method"] == "/makima.v1.SupervisorService/CreateContract" and r["rpc_code"] == "OK" for r in rpcs)
    assert all(isinstance(r["duration_ms"], float) for r in rpcs)
    assert [line["msg"] for line in lines][-2:] == ["shutting down", "stopped"]


@pytest.mark.postgresql_only
async def test_serve_with_several_workers_on_one_port(empty_database_url: str, tmp_path: Path) -> None:
    """`serve --workers 2`: two processes answer on one port over one PostgreSQL; SIGTERM stops both."""
    port = free_port()
    env = os.environ | {"MAKIMA_DATABASE_URL": empty_database_url, "MAKIMA_WORKSPACE_ROOT": str(tmp_path / "ws")}
    server_bin = str(Path(sys.executable).parent / "makima-server")
    code, key, err = await run(server_bin, "create-api-key", "--owner", str(uuid.uuid4()), env=env)
    assert code == 0, err
    proc = await asyncio.create_subprocess_exec(
        server_bin,
        "serve",
        "--workers",
        "2",
        "--listen",
        f"127.0.0.1:{port}",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            api = Api(channel=channel, owner_id=uuid.uuid4(), key=key.strip())
            made = [await create_contract(api, f"c{i}") for i in range(5)]
            assert len({c.id for c in made}) == 5
        children = (await run("pgrep", "-P", str(proc.pid)))[1].split()
        assert len(children) >= 2  # the two workers (spawn may add its resource tracker)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err_bytes = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err_bytes.decode()[-2000:]
    serving = [line for line in err_bytes.decode().splitlines() if '"msg": "serving"' in line]
    assert len(serving) == 2


async def test_several_workers_need_postgresql(tmp_path: Path) -> None:
    server_bin = str(Path(sys.executable).parent / "makima-server")
    code, _, err = await run(
        server_bin, "serve", "--workers", "2", "--database-url", f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    )
    assert code == 2 and "needs a PostgreSQL" in err
