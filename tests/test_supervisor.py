"""SupervisorService: start, resume in every mode, conversation rewind and restore."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
from sqlalchemy import update

from makima.server.app import App
from makima.server.store.models import Task
from makima.v1 import daemon_pb2, history_pb2, resources_pb2, supervisor_pb2, task_fork_pb2
from tests.helpers import Api, append_messages, create_contract, create_task, fails

EMPTY = resources_pb2.WorktreeSpec(source=resources_pb2.WorktreeSpec.SOURCE_EMPTY)


async def start(api: Api, contract_id: str, **kw: object) -> supervisor_pb2.StartSupervisorResponse:
    return await api.supervisor.StartSupervisor(
        supervisor_pb2.StartSupervisorRequest(contract_id=contract_id, instructions="plan it", **kw), metadata=api.md
    )


async def say(api: Api, contract_id: str, at: int, *contents: str) -> None:
    request = daemon_pb2.AppendMessagesRequest(
        contract_id=contract_id,
        expected_next_index=at,
        messages=[
            resources_pb2.NewConversationMessage(role=resources_pb2.MESSAGE_ROLE_ASSISTANT, content=c) for c in contents
        ],
    )
    await api.daemon.AppendMessages(request, metadata=api.md)


async def supervisor_messages(api: Api, contract_id: str, snapshot_id: str = "") -> list[str]:
    response = await api.history.GetSupervisorConversation(
        history_pb2.GetSupervisorConversationRequest(contract_id=contract_id, snapshot_id=snapshot_id), metadata=api.md
    )
    return [m.content for m in response.messages]


async def set_status(server: App, task_id: str, status: str) -> None:
    async with server.runtime.db.write() as session:
        await session.execute(update(Task).where(Task.id == uuid.UUID(task_id)).values(status=status))


def resume(api: Api, contract_id: str, mode: int, **kw: object):  # type: ignore[no-untyped-def]
    return api.supervisor.ResumeSupervisor(
        supervisor_pb2.ResumeSupervisorRequest(contract_id=contract_id, mode=mode, **kw), metadata=api.md
    )


async def test_start_supervisor_once(api: Api, other_api: Api) -> None:
    contract = await create_contract(api, "site", initial_phase="plan")
    started = await start(api, contract.id)
    task = started.supervisor_task
    assert (task.kind, task.status, task.contract_id) == (
        resources_pb2.TASK_KIND_SUPERVISOR,
        resources_pb2.TASK_STATUS_PENDING,
        contract.id,
    )
    assert started.contract.supervisor_task_id == task.id
    got = await api.supervisor.GetContract(supervisor_pb2.GetContractRequest(contract_id=contract.id), metadata=api.md)
    assert got.contract.supervisor_task_id == task.id
    await fails(start(api, contract.id), grpc.StatusCode.ALREADY_EXISTS, reason="SUPERVISOR_EXISTS")
    await fails(start(other_api, contract.id), grpc.StatusCode.NOT_FOUND)
    await say(api, contract.id, 0, "hello")
    assert await supervisor_messages(api, contract.id) == ["hello"]


async def test_resume_errors(api: Api, server: App) -> None:
    contract = await create_contract(api)
    await fails(
        resume(api, contract.id, supervisor_pb2.RESUME_MODE_CONTINUE),
        grpc.StatusCode.NOT_FOUND,
        reason="NO_SUPERVISOR_STATE",
    )
    started = await start(api, contract.id)
    assert (await fails(resume(api, contract.id, 0), grpc.StatusCode.INVALID_ARGUMENT)).fields == ["mode"]
    assert (
        await fails(
            resume(api, contract.id, supervisor_pb2.RESUME_MODE_FROM_CHECKPOINT), grpc.StatusCode.INVALID_ARGUMENT
        )
    ).fields == ["checkpoint_id"]
    assert (
        await fails(
            resume(api, contract.id, supervisor_pb2.RESUME_MODE_CONTINUE, rewind_code=True),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    ).fields == ["rewind_code"]
    await set_status(server, started.supervisor_task.id, "running")
    await fails(
        resume(api, contract.id, supervisor_pb2.RESUME_MODE_CONTINUE),
        grpc.StatusCode.FAILED_PRECONDITION,
        reason="ALREADY_RUNNING",
    )


async def test_resume_continue_and_restart_phase(api: Api, server: App) -> None:
    contract = await create_contract(api, initial_phase="execute")
    task_id = (await start(api, contract.id)).supervisor_task.id
    await say(api, contract.id, 0, "a", "b", "c")
    await set_status(server, task_id, "interrupted")

    cont = await resume(api, contract.id, supervisor_pb2.RESUME_MODE_CONTINUE)
    assert cont.supervisor_task.status == resources_pb2.TASK_STATUS_PENDING
    assert (cont.resumed_from.phase, cont.resumed_from.message_count) == ("execute", 3)
    assert cont.resumed_from.previous_status == resources_pb2.TASK_STATUS_INTERRUPTED
    assert cont.resumed_from.last_activity_time.seconds > 0
    assert not cont.HasField("snapshot") and not cont.code_rewound
    assert await supervisor_messages(api, contract.id) == ["a", "b", "c"]

    await set_status(server, task_id, "interrupted")
    restart = await resume(api, contract.id, supervisor_pb2.RESUME_MODE_RESTART_PHASE)
    assert restart.supervisor_task.message_count == 0
    assert restart.snapshot.reason == resources_pb2.SNAPSHOT_REASON_RESTART_PHASE
    assert await supervisor_messages(api, contract.id) == []
    assert await supervisor_messages(api, contract.id, restart.snapshot.id) == ["a", "b", "c"]
    got = await api.supervisor.GetContract(supervisor_pb2.GetContractRequest(contract_id=contract.id), metadata=api.md)
    assert got.contract.phase == "execute"


async def test_resume_from_checkpoint_with_code(api: Api, server: App) -> None:
    contract = await create_contract(api)
    task = (await start(api, contract.id, worktree=EMPTY)).supervisor_task
    path = Path(task.worktree_path)
    (path / "plan.md").write_text("good plan")
    await say(api, contract.id, 0, "plan")
    checkpoint = (
        await api.tasks.CreateCheckpoint(task_fork_pb2.CreateCheckpointRequest(task_id=task.id), metadata=api.md)
    ).checkpoint
    (path / "plan.md").write_text("bad plan")
    await say(api, contract.id, 1, "derailed")
    await set_status(server, task.id, "interrupted")

    without_code = await resume(
        api, contract.id, supervisor_pb2.RESUME_MODE_FROM_CHECKPOINT, checkpoint_id=checkpoint.id
    )
    assert not without_code.code_rewound
    assert (path / "plan.md").read_text() == "bad plan"
    assert await supervisor_messages(api, contract.id) == ["plan"]

    await say(api, contract.id, 1, "derailed again")
    done = await resume(
        api, contract.id, supervisor_pb2.RESUME_MODE_FROM_CHECKPOINT, checkpoint_id=checkpoint.id, rewind_code=True
    )
    assert done.code_rewound and done.safety_checkpoint.kind == resources_pb2.CHECKPOINT_KIND_SAFETY
    assert (path / "plan.md").read_text() == "good plan"
    assert done.resumed_from.checkpoint_id == checkpoint.id
    assert await supervisor_messages(api, contract.id) == ["plan"]
    assert await supervisor_messages(api, contract.id, done.snapshot.id) == ["plan", "derailed again"]

    other = await create_contract(api)
    await start(api, other.id)
    await fails(
        resume(api, other.id, supervisor_pb2.RESUME_MODE_FROM_CHECKPOINT, checkpoint_id=checkpoint.id),
        grpc.StatusCode.NOT_FOUND,
    )


def rewind(api: Api, **kw: object):  # type: ignore[no-untyped-def]
    return api.supervisor.RewindConversation(supervisor_pb2.RewindConversationRequest(**kw), metadata=api.md)


async def test_rewind_conversation_points_and_restore(api: Api) -> None:
    contract = await create_contract(api)
    await start(api, contract.id)
    await say(api, contract.id, 0, "m0", "m1", "m2", "m3", "m4")

    last = await rewind(api, contract_id=contract.id)
    assert (last.messages_removed, last.new_message_count, last.code_rewound) == (1, 4, False)
    assert await supervisor_messages(api, contract.id) == ["m0", "m1", "m2", "m3"]
    by = await rewind(api, contract_id=contract.id, by_message_count=2, expected_message_count=4)
    assert (by.messages_removed, by.new_message_count) == (2, 2)
    to = await rewind(api, contract_id=contract.id, to_message_index=0)
    assert await supervisor_messages(api, contract.id) == ["m0"]
    assert await supervisor_messages(api, contract.id, to.snapshot.id) == ["m0", "m1"]

    restored = await api.supervisor.RestoreConversation(
        supervisor_pb2.RestoreConversationRequest(snapshot_id=last.snapshot.id, expected_message_count=1),
        metadata=api.md,
    )
    assert restored.new_message_count == 5
    assert await supervisor_messages(api, contract.id) == ["m0", "m1", "m2", "m3", "m4"]
    undo = await api.supervisor.RestoreConversation(
        supervisor_pb2.RestoreConversationRequest(snapshot_id=restored.previous_snapshot.id), metadata=api.md
    )
    assert undo.new_message_count == 1
    assert await supervisor_messages(api, contract.id) == ["m0"]


async def test_rewind_conversation_bad_input(api: Api, other_api: Api) -> None:
    contract = await create_contract(api)
    await start(api, contract.id)
    await say(api, contract.id, 0, "m0", "m1")
    for kw, field in (
        ({"to_message_index": 2}, "to_message_index"),
        ({"to_message_index": -1}, "to_message_index"),
        ({"by_message_count": 3}, "by_message_count"),
        ({"by_message_count": 0}, "by_message_count"),
        ({"expected_message_count": -1}, "expected_message_count"),
    ):
        assert (await fails(rewind(api, contract_id=contract.id, **kw), grpc.StatusCode.INVALID_ARGUMENT)).fields == [
            field
        ]
    assert (await fails(rewind(api), grpc.StatusCode.INVALID_ARGUMENT)).fields == ["contract_id"]
    await fails(
        rewind(api, contract_id=contract.id, expected_message_count=7),
        grpc.StatusCode.ABORTED,
        reason="CONVERSATION_CHANGED",
    )
    assert await supervisor_messages(api, contract.id) == ["m0", "m1"]
    await fails(rewind(other_api, contract_id=contract.id), grpc.StatusCode.NOT_FOUND)
    empty = await create_task(api)
    assert (await fails(rewind(api, task_id=empty.id), grpc.StatusCode.INVALID_ARGUMENT)).fields == ["by_message_count"]
    await fails(
        other_api.supervisor.RestoreConversation(
            supervisor_pb2.RestoreConversationRequest(snapshot_id=str(uuid.uuid4())), metadata=other_api.md
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_rewind_conversation_with_code(api: Api) -> None:
    task = await create_task(api, "coder", worktree=EMPTY)
    path = Path(task.worktree_path)
    await append_messages(api, task.id, 0, "m0", "m1")
    (path / "f").write_text("two messages in")
    at_two = (
        await api.tasks.CreateCheckpoint(task_fork_pb2.CreateCheckpointRequest(task_id=task.id), metadata=api.md)
    ).checkpoint
    await append_messages(api, task.id, 2, "m2", "m3")
    (path / "f").write_text("four messages in")

    done = await rewind(api, task_id=task.id, to_message_index=2, rewind_code=True)
    assert done.code_rewound and done.code_checkpoint.id == at_two.id
    assert (path / "f").read_text() == "two messages in"
    assert done.new_message_count == 3

    plain = await create_task(api, "no code")
    await append_messages(api, plain.id, 0, "x", "y")
    honest = await rewind(api, task_id=plain.id, rewind_code=True)
    assert not honest.code_rewound and honest.code_not_rewound_reason == "the task has no worktree"
    early = await create_task(api, "early", worktree=EMPTY)
    await append_messages(api, early.id, 0, "x", "y")
    (Path(early.worktree_path) / "g").write_text("never checkpointed")
    kept = await rewind(api, task_id=early.id, to_message_index=0, rewind_code=True)
    # Only the initial checkpoint (0 messages) is at or before the kept point, so the code goes back to it.
    assert kept.code_rewound and not (Path(early.worktree_path) / "g").exists()


async def test_one_resume_rule_for_supervisors_and_tasks(api: Api, server: App) -> None:
    """Resuming as is needs an interrupted or failed run; going back to a point needs only a stopped one."""
    contract = await create_contract(api)
    supervisor = (await start(api, contract.id)).supervisor_task
    worker = (
        await api.tasks.CreateTask(task_fork_pb2.CreateTaskRequest(name="w", contract_id=contract.id), metadata=api.md)
    ).task
    assert supervisor.status == worker.status == resources_pb2.TASK_STATUS_PENDING
    never_started = (
        resume(api, contract.id, supervisor_pb2.RESUME_MODE_CONTINUE),
        api.tasks.ResumeTask(task_fork_pb2.ResumeTaskRequest(task_id=worker.id), metadata=api.md),
    )
    for call in never_started:
        failure = await fails(call, grpc.StatusCode.FAILED_PRECONDITION, reason="NOT_RESUMABLE")
        assert failure.metadata["status"] == "pending"

    restarted = await resume(api, contract.id, supervisor_pb2.RESUME_MODE_RESTART_PHASE)  # goes back: allowed
    assert restarted.supervisor_task.status == resources_pb2.TASK_STATUS_PENDING

    for status in ("interrupted", "failed"):
        await set_status(server, supervisor.id, status)
        await set_status(server, worker.id, status)
        assert (await resume(api, contract.id, supervisor_pb2.RESUME_MODE_CONTINUE)).supervisor_task.status == (
            resources_pb2.TASK_STATUS_PENDING
        )
        await api.tasks.ResumeTask(task_fork_pb2.ResumeTaskRequest(task_id=worker.id), metadata=api.md)
