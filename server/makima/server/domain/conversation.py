"""Conversation snapshots and O(1) conversation rewinds (see store.models.Conversation)."""

from __future__ import annotations

import uuid

from makima.server.domain.enums import SnapshotReason
from makima.server.domain.errors import NotFound
from makima.server.domain.runtime import Tx
from makima.server.store import checkpoints, conversations
from makima.server.store.models import ConversationSnapshot, Task


async def take_snapshot(tx: Tx, task: Task, reason: SnapshotReason) -> ConversationSnapshot:
    """Record the task's conversation as it is now; it stays viewable and restorable forever."""
    assert task.conversation_id is not None
    snapshot = ConversationSnapshot(
        owner_id=tx.owner_id,
        task_id=task.id,
        conversation_id=task.conversation_id,
        message_count=task.message_count,
        reason=reason.value,
        create_time=tx.now,
    )
    tx.session.add(snapshot)
    await tx.session.flush()
    return snapshot


async def point_conversation(tx: Tx, task: Task, *, version_id: uuid.UUID, count: int) -> None:
    """Make the task's conversation the first `count` messages of `version_id`.

    A new version pointing at the old one: nothing is copied or deleted, whatever `count` is.
    """
    version = await conversations.new_version(
        tx.session, owner_id=tx.owner_id, task_id=task.id, parent_conversation_id=version_id, base_count=count
    )
    task.conversation_id = version.id
    task.message_count = count
    task.version += 1
    task.update_time = tx.now


async def load_snapshot(tx: Tx, snapshot_id: uuid.UUID) -> ConversationSnapshot:
    snapshot = await checkpoints.get_snapshot(tx.session, owner_id=tx.owner_id, snapshot_id=snapshot_id)
    if snapshot is None:
        raise NotFound.resource("snapshot", snapshot_id)
    return snapshot


async def rewind_to(tx: Tx, task: Task, snapshot: ConversationSnapshot, reason: SnapshotReason) -> ConversationSnapshot:
    """Snapshot the current conversation (to undo), then make it equal to `snapshot`'s."""
    before = await take_snapshot(tx, task, reason)
    await point_conversation(tx, task, version_id=snapshot.conversation_id, count=snapshot.message_count)
    return before
