"""OpenTelemetry traces: a span per RPC with its database statements as children; off by default."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from pathlib import Path

import grpc
from grpc import aio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from makima.server.app import start
from makima.server.config import Settings
from makima.server.domain.auth import create_api_key
from makima.v1 import supervisor_pb2
from tests.helpers import Api, create_contract, fails, free_port
from tests.test_server import run

CREATE = "/makima.v1.SupervisorService/CreateContract"
GET = "/makima.v1.SupervisorService/GetContract"


async def test_spans_of_rpcs_and_their_database_calls(database_url: str, tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = Settings(listen="127.0.0.1:0", database_url=database_url, workspace_root=tmp_path / "ws")
    app = await start(settings, tracer_provider=provider)
    try:
        key = await create_api_key(app.runtime, owner_id=uuid.uuid4())
        exporter.clear()
        async with aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            api = Api(channel=channel, owner_id=key.owner_id, key=key.secret)
            await create_contract(api, "traced")
            missing = supervisor_pb2.GetContractRequest(contract_id=str(uuid.uuid4()))
            await fails(api.supervisor.GetContract(missing, metadata=api.md), grpc.StatusCode.NOT_FOUND)
    finally:
        await app.stop(1.0)
    spans = exporter.get_finished_spans()
    (created,) = [s for s in spans if s.name == CREATE]
    assert created.kind == SpanKind.SERVER
    assert (
        dict(created.attributes or {}).items()
        >= {
            "rpc.system": "grpc",
            "rpc.service": "makima.v1.SupervisorService",
            "rpc.method": "CreateContract",
            "rpc.grpc.status_code": 0,
        }.items()
    )
    statements = [s for s in spans if s.parent is not None and s.parent.span_id == created.context.span_id]
    assert statements, "no database span under the RPC's span"
    assert all(s.context.trace_id == created.context.trace_id for s in statements)
    assert all(s.kind == SpanKind.CLIENT for s in statements)
    assert any(str((s.attributes or {}).get("db.statement", "")).startswith("INSERT") for s in statements)

    (failed,) = [s for s in spans if s.name == GET]
    assert failed.status.status_code == StatusCode.ERROR
    assert (failed.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert "NOT_FOUND" in (failed.status.description or "")


async def test_the_standard_variables_switch_traces_on(tmp_path: Path) -> None:
    """`OTEL_TRACES_EXPORTER=console` on `makima-server serve`: spans on stdout, named by OTEL_SERVICE_NAME."""
    port = free_port()
    env = os.environ | {
        "MAKIMA_LISTEN": f"127.0.0.1:{port}",
        "MAKIMA_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'm.db'}",
        "MAKIMA_WORKSPACE_ROOT": str(tmp_path / "ws"),
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_SERVICE_NAME": "makima-under-test",
    }
    server_bin = str(Path(sys.executable).parent / "makima-server")
    code, key, err = await run(server_bin, "create-api-key", "--owner", "tracer", env=env)
    assert code == 0, err
    proc = await asyncio.create_subprocess_exec(
        server_bin, "serve", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            await create_contract(Api(channel=channel, owner_id=uuid.uuid4(), key=key.strip()), "on stdout")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err_bytes = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err_bytes.decode()[-2000:]
    spans = [json.loads(chunk) for chunk in out.decode().replace("}\n{", "}\0{").split("\0") if chunk.strip()]
    (created,) = [s for s in spans if s["name"] == CREATE]
    assert created["resource"]["attributes"]["service.name"] == "makima-under-test"

    code, _, err = await run(server_bin, "serve", env=env | {"OTEL_TRACES_EXPORTER": "zipkin"})
    assert code == 2 and err.startswith("makima-server: OTEL_TRACES_EXPORTER:"), err
