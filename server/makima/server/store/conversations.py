"""Conversation versions and their messages (see models.Conversation for the layout)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import and_, insert, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from makima.server.store.engine import dialect_of
from makima.server.store.models import Conversation, ConversationMessage, Task, table_of
from makima.server.store.types import json_text

_conversations = table_of(Conversation)
_messages = table_of(ConversationMessage)
_tasks = table_of(Task)


@dataclass(frozen=True)
class Segment:
    """Positions [start, stop) of a logical conversation are rows of version `conversation_id`."""

    conversation_id: uuid.UUID
    start: int
    stop: int


async def segments(
    session: AsyncSession, *, owner_id: uuid.UUID, conversation_id: uuid.UUID, count: int
) -> list[Segment]:
    """Where each position of the first `count` messages of a version is stored, newest version first.

    One recursive query walks the parent pointers; its length is the number of rewinds and forks in
    the version's ancestry, never the number of messages. Every step stays within the owner's rows.
    """
    c = _conversations
    walk = select(c.c.id, c.c.parent_conversation_id, c.c.base_count).where(
        c.c.owner_id == owner_id, c.c.id == conversation_id
    )
    chain = walk.cte("chain", recursive=True)
    chain = chain.union_all(
        select(c.c.id, c.c.parent_conversation_id, c.c.base_count)
        .join(chain, c.c.id == chain.c.parent_conversation_id)
        .where(c.c.owner_id == owner_id)
    )
    rows = (await session.execute(select(chain.c.id, chain.c.base_count))).all()
    out: list[Segment] = []
    stop = count
    for version_id, base_count in rows:
        start = min(int(base_count), stop)
        if start < stop:
            out.append(Segment(version_id, start, stop))
        stop = start
        if stop == 0:
            break
    return out


class StoredMessage(NamedTuple):
    """A message as a conversation holds it, at its position."""

    position: int
    role: str
    content: str
    meta: dict[str, Any] | None
    create_time: datetime


_m = _messages.c
_STORED_MESSAGE = (_m.position, _m.role, _m.content, _m.meta, _m.create_time)


async def read(
    session: AsyncSession, *, owner_id: uuid.UUID, conversation_id: uuid.UUID, count: int, start: int, limit: int
) -> list[StoredMessage]:
    """Messages at positions [start, min(count, start + limit)) of a version, in order.

    No stored segment in that range means no messages: never a query without a WHERE.
    """
    stop = min(count, start + limit)
    if start >= stop:
        return []
    parts = [
        and_(
            _messages.c.conversation_id == s.conversation_id,
            _messages.c.position >= max(s.start, start),
            _messages.c.position < min(s.stop, stop),
        )
        for s in await segments(session, owner_id=owner_id, conversation_id=conversation_id, count=count)
        if s.start < stop and s.stop > start
    ]
    if not parts:
        return []
    stmt = select(*_STORED_MESSAGE).where(_m.owner_id == owner_id, or_(*parts)).order_by(_m.position)
    return list(map(StoredMessage._make, await session.execute(stmt)))


@dataclass(frozen=True, slots=True)
class MessageRow:
    """A message to append; owner, version, position and time are the batch's."""

    role: str
    content: str
    meta: dict[str, Any] | None


# One statement and one round trip for a whole batch: one array per column, and the task's message
# count, version and activity times updated by the same statement.
_PG_APPEND = text(
    """
    WITH appended AS (
        INSERT INTO conversation_messages (owner_id, conversation_id, position, role, content, meta, create_time)
        SELECT CAST(:owner_id AS UUID), CAST(:conversation_id AS UUID), CAST(:first AS BIGINT) + u.ord - 1,
               u.role, u.content, CAST(u.meta AS JSONB), CAST(:now AS TIMESTAMPTZ)
        FROM unnest(CAST(:roles AS TEXT[]), CAST(:contents AS TEXT[]), CAST(:metas AS TEXT[]))
             WITH ORDINALITY AS u(role, content, meta, ord)
    )
    UPDATE tasks SET message_count = CAST(:first AS BIGINT) + CAST(:count AS BIGINT), version = version + 1,
                     last_activity_time = CAST(:now AS TIMESTAMPTZ), update_time = CAST(:now AS TIMESTAMPTZ)
    WHERE id = CAST(:task_id AS UUID) AND owner_id = CAST(:owner_id AS UUID)
    """
)


async def append(
    session: AsyncSession,
    *,
    owner_id: uuid.UUID,
    task_id: uuid.UUID,
    conversation_id: uuid.UUID,
    first: int,
    messages: Sequence[MessageRow],
    now: datetime,
) -> None:
    """Insert messages at positions first, first + 1, ... of a version and count them on the task
    (message_count, version, last activity and update times)."""
    if dialect_of(session) == "postgresql":
        params = {
            "owner_id": owner_id,
            "task_id": task_id,
            "conversation_id": conversation_id,
            "first": first,
            "count": len(messages),
            "now": now,
            "roles": [m.role for m in messages],
            "contents": [m.content for m in messages],
            "metas": [json_text(m.meta) for m in messages],
        }
        await session.execute(_PG_APPEND, params)
        return
    await session.execute(
        insert(_messages),
        [
            {
                "owner_id": owner_id,
                "conversation_id": conversation_id,
                "position": first + i,
                "role": m.role,
                "content": m.content,
                "meta": m.meta,
                "create_time": now,
            }
            for i, m in enumerate(messages)
        ],
    )
    await session.execute(
        update(_tasks)
        .where(_tasks.c.id == task_id, _tasks.c.owner_id == owner_id)
        .values(
            message_count=first + len(messages),
            version=_tasks.c.version + 1,
            last_activity_time=now,
            update_time=now,
        )
    )


async def new_version(
    session: AsyncSession,
    *,
    owner_id: uuid.UUID,
    task_id: uuid.UUID,
    parent_conversation_id: uuid.UUID | None,
    base_count: int,
) -> Conversation:
    """A new version that inherits the first `base_count` messages of its parent (O(1))."""
    version = Conversation(
        owner_id=owner_id, task_id=task_id, parent_conversation_id=parent_conversation_id, base_count=base_count
    )
    session.add(version)
    await session.flush()
    return version
