"""`makima` on a contract's supervisor: start, conversation, rewind, restore, resume; resuming a failed task."""

from __future__ import annotations

import json
from typing import Any

from makima.client import AsyncClient
from makima.server.app import App
from makima.v1 import resources_pb2
from tests.cli.conftest import Makima
from tests.helpers import Api


async def run_json(makima: Makima, *args: str) -> Any:
    result = await makima("--json", *args)
    assert result.code == 0, result.err
    return json.loads(result.out)


async def test_supervisor_rewind_restore_and_resume(makima: Makima, server: App, api: Api) -> None:
    contract = (await run_json(makima, "contract-create", "--name", "login page"))["contract"]
    started = await run_json(makima, "supervisor-start", contract["id"], "--instructions", "plan the page")
    async with AsyncClient(f"127.0.0.1:{server.port}", api.key) as client:
        await client.append_messages(
            contract_id=contract["id"],
            expected_next_index=0,
            messages=[
                resources_pb2.NewConversationMessage(role=resources_pb2.MESSAGE_ROLE_ASSISTANT, content=f"step {i}")
                for i in range(5)
            ],
        )

    stale = await makima("rewind-conversation", "--contract", contract["id"], "--expected-message-count", "4")
    rewound = await run_json(makima, "rewind-conversation", "--contract", contract["id"], "--by-message-count", "2")
    shown = await makima("conversation", "--contract", contract["id"])
    snapshot = rewound["snapshot"]["id"]
    before = await run_json(makima, "conversation", "--contract", contract["id"], "--snapshot", snapshot)
    restored = await run_json(makima, "restore-conversation", snapshot)
    resumed = await run_json(makima, "resume", contract["id"], "--mode", "restart_phase")
    no_checkpoint = await makima("resume", contract["id"], "--mode", "from_checkpoint")

    assert started["supervisor_task"]["kind"] == "TASK_KIND_SUPERVISOR"
    assert stale.code == 64 + 10  # ABORTED: the conversation has 5 messages, not 4
    assert stale.err.startswith("error: ABORTED ")
    assert (rewound["messages_removed"], rewound["new_message_count"]) == ("2", "3")
    assert "step 2" in shown.out and "step 3" not in shown.out
    assert [m["content"] for m in before["messages"]] == [f"step {i}" for i in range(5)]
    assert restored["new_message_count"] == "5"
    assert resumed["snapshot"]["reason"] == "SNAPSHOT_REASON_RESTART_PHASE"
    assert (resumed["snapshot"]["message_count"], resumed["supervisor_task"]["message_count"]) == ("5", "0")
    assert no_checkpoint.code == 2  # a usage error naming the flag, found before any call
    assert "--mode from_checkpoint requires --checkpoint" in no_checkpoint.err


async def test_task_resume_puts_a_failed_task_back(makima: Makima, server: App, api: Api) -> None:
    async with AsyncClient(f"127.0.0.1:{server.port}", api.key) as client:
        task = (await client.create_task(name="job")).task
        daemon = (await client.register_daemon(name="worker")).daemon
        token = (await client.claim_task(daemon_id=daemon.id)).claimed.lease_token
        await client.report_task_status(
            daemon_id=daemon.id,
            task_id=task.id,
            status=resources_pb2.TASK_STATUS_FAILED,
            message="oom",
            lease_token=token,
        )

    resumed = await makima("task-resume", task.id)

    rows = [line.split() for line in resumed.out.splitlines()]
    assert resumed.code == 0, resumed.err
    assert ["previous_status", "failed"] in rows
    assert ["status", "pending"] in rows
