"""The server's log lines carry what an operator needs: pid, start-up settings, why a call failed."""

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

from makima.v1 import supervisor_pb2
from tests.helpers import Api, create_contract, fails, free_port
from tests.test_server import run


async def test_log_lines_name_pid_start_up_settings_and_failures(tmp_path: Path, empty_database_url: str) -> None:
    port = free_port()
    # A password the log must never show (PostgreSQL here trusts local connections, so any works).
    url = empty_database_url.replace("postgres@", "postgres:s3cret-pw@", 1)
    env = os.environ | {
        "MAKIMA_LISTEN": f"127.0.0.1:{port}",
        "MAKIMA_DATABASE_URL": url,
        "MAKIMA_WORKSPACE_ROOT": str(tmp_path / "ws"),
    }
    server_bin = str(Path(sys.executable).parent / "makima-server")
    code, key, err = await run(server_bin, "create-api-key", "--owner", f"logs-{uuid.uuid4().hex[:8]}", env=env)
    assert code == 0, err
    proc = await asyncio.create_subprocess_exec(
        server_bin, "serve", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    missing = "00000000-0000-4000-8000-000000000000"
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            api = Api(channel=channel, owner_id=uuid.uuid4(), key=key.strip())
            await create_contract(api, "logged")
            request = supervisor_pb2.GetContractRequest(contract_id=missing)
            await fails(api.supervisor.GetContract(request, metadata=api.md), grpc.StatusCode.NOT_FOUND)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err_bytes = await asyncio.wait_for(proc.communicate(), 30)
    text = err_bytes.decode()
    assert "s3cret-pw" not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert lines and all(line["pid"] == proc.pid for line in lines)

    (serving,) = [line for line in lines if line["msg"] == "serving"]
    assert serving["workspace_root"] == str((tmp_path / "ws").resolve())
    assert serving["workers"] == 1
    assert serving["database"].startswith(url.split("://")[0])
    if url.startswith("postgresql"):
        assert "***" in serving["database"]

    rpcs = [line for line in lines if line["msg"] == "rpc"]
    (failed,) = [r for r in rpcs if r["rpc_method"].endswith("/GetContract")]
    assert failed["rpc_code"] == "NOT_FOUND"
    assert failed["reason"] == "NOT_FOUND"
    assert missing in failed["error"]
    (created,) = [r for r in rpcs if r["rpc_method"].endswith("/CreateContract")]
    assert uuid.UUID(failed["owner_id"])  # the key's owner, known to the server
    assert "reason" not in created and "owner_id" not in created
