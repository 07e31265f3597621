"""SQLModel tables of the service (DESIGN.md section 3).

Every row carries `owner_id` and every query filters by it. Statuses and kinds are stored as short
lowercase strings so that adding a value never needs a schema change. Conversations are stored as
rows with positions plus a parent pointer (see `Conversation`), so rewinds and forks cost O(1)
whatever the length of the kept prefix.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Index,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlmodel import Column, Field, SQLModel

from makima.server.store.types import BigIntPK, JSONDoc, UTCDateTime, utcnow

# Stable constraint names, so that migrations and models agree on both backends.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata: MetaData = SQLModel.metadata


def _time(**kw: Any) -> Any:
    return Field(default_factory=utcnow, sa_type=UTCDateTime, **kw)


# The longest task name the tasks table holds (makima.v1 declares the same bound on every name field).
TASK_NAME_LENGTH = 500


def table_of(model: type[SQLModel]) -> Table:
    """The Core table of a table model, for statements that bypass the ORM on hot paths."""
    table: Table = model.__table__  # type: ignore[attr-defined]  # set by SQLModel's metaclass, not declared
    return table


class Owner(SQLModel, table=True):
    """A tenant. Its row also holds the last allocated timeline cursor (row-locked per write).

    A non-empty name is unique, so operators can name owners instead of quoting UUIDs.
    """

    __tablename__ = "owners"
    __table_args__ = (
        Index(
            "ux_owners_name",
            "name",
            unique=True,
            sqlite_where=text("name <> ''"),
            postgresql_where=text("name <> ''"),
        ),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(default="", sa_type=String(200))
    timeline_cursor: int = Field(default=0, sa_type=BigInteger)
    create_time: datetime = _time()


class ApiKey(SQLModel, table=True):
    """An API key, stored as the SHA-256 of the secret (keys are random, so no slow hash needed)."""

    __tablename__ = "api_keys"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    owner_id: uuid.UUID = Field(foreign_key="owners.id", index=True)
    name: str = Field(default="", sa_type=String(200))
    key_hash: str = Field(sa_type=String(64), unique=True)
    key_prefix: str = Field(sa_type=String(16))
    create_time: datetime = _time()
    revoke_time: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # After this time the key no longer authenticates; None: it never expires.
    expire_time: datetime | None = Field(default=None, sa_type=UTCDateTime)


class ServerSecret(SQLModel, table=True):
    """A server-wide secret (e.g. the page-token signing key), shared by every process on the database.

    Rotating one adds a newer row of the same purpose; older rows stay valid for verification until
    removed, so tokens handed out before a rotation keep working for a while.
    """

    __tablename__ = "server_secrets"
    __table_args__ = (Index("ix_server_secrets_purpose_create", "purpose", "create_time"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    purpose: str = Field(sa_type=String(64))
    secret: bytes = Field(sa_type=LargeBinary)
    create_time: datetime = _time()


class Contract(SQLModel, table=True):
    """A unit of work of one owner, moving through free-form phases."""

    __tablename__ = "contracts"
    __table_args__ = (Index("ix_contracts_owner_create", "owner_id", "create_time"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    owner_id: uuid.UUID = Field(foreign_key="owners.id")
    name: str = Field(sa_type=String(500))
    description: str = Field(default="", sa_type=Text)
    phase: str = Field(sa_type=String(200))
    status: str = Field(default="active", sa_type=String(32))
    version: int = Field(default=1, sa_type=BigInteger)
    create_time: datetime = _time()
    update_time: datetime = _time()


class Daemon(SQLModel, table=True):
    """A worker machine that claims and runs tasks."""

    __tablename__ = "daemons"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    owner_id: uuid.UUID = Field(foreign_key="owners.id", index=True)
    name: str = Field(sa_type=String(200))
    hostname: str = Field(default="", sa_type=String(255))
    create_time: datetime = _time()
    last_heartbeat_time: datetime = _time()


class Task(SQLModel, table=True):
    """A piece of work run by a daemon, with its conversation pointer, lease and lineage."""

    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_owner_contract", "owner_id", "contract_id", "create_time"),
        # The claim queue: an owner's oldest pending task first.
        Index("ix_tasks_owner_status_create", "owner_id", "status", "create_time"),
        # The lease sweeper: running tasks by lease end.
        Index("ix_tasks_status_lease", "status", "lease_expire_time"),
        Index("ix_tasks_parent", "parent_task_id"),
        Index("ix_tasks_forked_from", "forked_from_task_id"),
        Index("ix_tasks_continued_from", "continued_from_task_id"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    owner_id: uuid.UUID = Field(foreign_key="owners.id")
    contract_id: uuid.UUID | None = Field(default=None, foreign_key="contracts.id")
    name: str = Field(sa_type=String(TASK_NAME_LENGTH))
    instructions: str = Field(default="", sa_type=Text)
    kind: str = Field(default="worker", sa_type=String(32))
    status: str = Field(default="pending", sa_type=String(32))
    status_message: str = Field(default="", sa_type=Text)
    daemon_id: uuid.UUID | None = Field(default=None, foreign_key="daemons.id")
    lease_expire_time: datetime | None = Field(default=None, sa_type=UTCDateTime)
    worktree_path: str | None = Field(default=None, sa_type=Text)
    branch: str | None = Field(default=None, sa_type=String(255))
    # Where the worktree lives ("service" or "daemon"); None when the task has none.
    placement: str | None = Field(default=None, sa_type=String(16))
    # The commit the task's code is at on the service's records (in the owner's object store): where
    # a daemon-held worktree starts on its next claim; the branch head of a service-held one.
    head_commit_sha: str | None = Field(default=None, sa_type=String(64))
    # The conversation version the task currently reads and appends to (see Conversation).
    conversation_id: uuid.UUID | None = Field(default=None)
    message_count: int = Field(default=0, sa_type=BigInteger)
    # Kept by every batch of task events in the statement that stores it: how many are stored and the
    # highest sequence, so a daemon learns of gaps without a scan of the task's events (none if equal).
    event_count: int = Field(default=0, sa_type=BigInteger)
    last_event_sequence: int = Field(default=0, sa_type=BigInteger)
    parent_task_id: uuid.UUID | None = Field(default=None, foreign_key="tasks.id")
    forked_from_task_id: uuid.UUID | None = Field(default=None, foreign_key="tasks.id")
    forked_from_checkpoint_id: uuid.UUID | None = Field(default=None)
    forked_at_message_index: int | None = Field(default=None, sa_type=BigInteger)
    continued_from_task_id: uuid.UUID | None = Field(default=None, foreign_key="tasks.id")
    last_activity_time: datetime = _time()
    create_time: datetime = _time()
    update_time: datetime = _time()
    version: int = Field(default=1, sa_type=BigInteger)
    # Bumped by every claim: the fencing token of the current lease. A daemon's write carries the
    # epoch its claim handed out; a write under an older epoch comes from a daemon that lost the task.
    lease_epoch: int = Field(default=0, sa_type=BigInteger)


class SupervisorState(SQLModel, table=True):
    """The supervisor of a contract: which task runs it."""

    __tablename__ = "supervisor_states"

    contract_id: uuid.UUID = Field(foreign_key="contracts.id", primary_key=True)
    owner_id: uuid.UUID = Field(foreign_key="owners.id", index=True)
    task_id: uuid.UUID = Field(foreign_key="tasks.id", unique=True)
    create_time: datetime = _time()


class Conversation(SQLModel, table=True):
    """One append-only version of a task's conversation.

    Messages [0, base_count) are those of `parent_conversation_id` (recursively); messages from
    base_count on are this version's own rows. A rewind or fork creates a new version pointing at the
    old one, so it never copies or deletes the kept prefix, and the old version stays readable.
    """

    __tablename__ = "conversations"
    __table_args__ = (CheckConstraint("base_count >= 0", name="base_count_non_negative"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    owner_id: uuid.UUID = Field(foreign_key="owners.id")
    task_id: uuid.UUID = Field(foreign_key="tasks.id", index=True)
    parent_conversation_id: uuid.UUID | None = Field(default=None, foreign_key="conversations.id")
    base_count: int = Field(default=0, sa_type=BigInteger)
    create_time: datetime = _time()


class ConversationMessage(SQLModel, table=True):
    """A message at an absolute position of a conversation version."""

    __tablename__ = "conversation_messages"
    __table_args__ = (UniqueConstraint("conversation_id", "position"),)

    id: int | None = Field(default=None, sa_column=Column(BigIntPK, primary_key=True, autoincrement=True))
    owner_id: uuid.UUID = Field(foreign_key="owners.id")
    conversation_id: uuid.UUID = Field(foreign_key="conversations.id")
    position: int = Field(sa_type=BigInteger)
    role: str = Field(sa_type=String(32))
    content: str = Field(default="", sa_type=Text)
    meta: dict[str, Any] | None = Field(default=None, sa_type=JSONDoc)
    create_time: datetime = _time()


class ConversationSnapshot(SQLModel, table=True):
    """An immutable view (conversation version, message count) of a task's conversation."""

    __tablename__ = "conversation_snapshots"
    __table_args__ = (Index("ix_conversation_snapshots_task_create", "task_id", "create_time"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    owner_id: uuid.UUID = Field(foreign_key="owners.id")
    task_id: uuid.UUID = Field(foreign_key="tasks.id")
    conversation_id: uuid.UUID = Field(foreign_key="conversations.id")
    message_count: int = Field(sa_type=BigInteger)
    reason: str = Field(sa_type=String(32))
    create_time: datetime = _time()


class TaskEvent(SQLModel, table=True):
    """One recorded step of a task; (task_id, sequence) is unique so resends are stored once."""

    __tablename__ = "task_events"
    __table_args__ = (
        UniqueConstraint("task_id", "sequence"),
        Index("ix_task_events_task_time", "task_id", "event_time"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigIntPK, primary_key=True, autoincrement=True))
    owner_id: uuid.UUID = Field(foreign_key="owners.id")
    task_id: uuid.UUID = Field(foreign_key="tasks.id")
    sequence: int = Field(sa_type=BigInteger)
    kind: str = Field(sa_type=String(32))
    text: str = Field(default="", sa_type=Text)
    data: dict[str, Any] | None = Field(default=None, sa_type=JSONDoc)
    event_time: datetime = _time()
    record_time: datetime = _time()


class TaskCheckpoint(SQLModel, table=True):
    """A git commit of a task's worktree tied to a conversation snapshot."""

    __tablename__ = "task_checkpoints"
    __table_args__ = (Index("ix_task_checkpoints_task_create", "task_id", "create_time"),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    owner_id: uuid.UUID = Field(foreign_key="owners.id")
    task_id: uuid.UUID = Field(foreign_key="tasks.id")
    commit_sha: str = Field(sa_type=String(64))
    parent_commit_sha: str = Field(default="", sa_type=String(64))
    branch: str = Field(sa_type=String(255))
    message: str = Field(default="", sa_type=Text)
    kind: str = Field(sa_type=String(32))
    conversation_snapshot_id: uuid.UUID = Field(foreign_key="conversation_snapshots.id")
    message_count: int = Field(sa_type=BigInteger)
    event_sequence: int = Field(default=0, sa_type=BigInteger)
    create_time: datetime = _time()


class TaskBranch(SQLModel, table=True):
    """A branch CreateBranch made for a daemon-held task: its repository is on the daemons, so the
    service keeps the branch on its records and the next daemon to claim the task creates it."""

    __tablename__ = "task_branches"

    task_id: uuid.UUID = Field(foreign_key="tasks.id", primary_key=True)
    name: str = Field(sa_type=String(255), primary_key=True)
    owner_id: uuid.UUID = Field(foreign_key="owners.id")
    commit_sha: str = Field(sa_type=String(64))
    checkpoint_id: uuid.UUID = Field(foreign_key="task_checkpoints.id")
    create_time: datetime = _time()


class HistoryEvent(SQLModel, table=True):
    """One timeline entry; `cursor` is allocated per owner inside the writing transaction."""

    __tablename__ = "history_events"
    __table_args__ = (
        UniqueConstraint("owner_id", "cursor"),
        Index("ix_history_events_owner_contract_cursor", "owner_id", "contract_id", "cursor"),
        Index("ix_history_events_owner_task_cursor", "owner_id", "task_id", "cursor"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigIntPK, primary_key=True, autoincrement=True))
    owner_id: uuid.UUID = Field(foreign_key="owners.id")
    cursor: int = Field(sa_type=BigInteger)
    kind: str = Field(sa_type=String(64))
    contract_id: uuid.UUID | None = Field(default=None)
    task_id: uuid.UUID | None = Field(default=None)
    # The contract's phase when the event was written, so history can be filtered by phase.
    phase: str | None = Field(default=None, sa_type=String(200))
    summary: str = Field(default="", sa_type=Text)
    data: dict[str, Any] | None = Field(default=None, sa_type=JSONDoc)
    create_time: datetime = _time()


class IdempotencyKey(SQLModel, table=True):
    """The first answer to a mutating call with a request_id, replayed on retries."""

    __tablename__ = "idempotency_keys"

    owner_id: uuid.UUID = Field(foreign_key="owners.id", primary_key=True)
    method: str = Field(sa_type=String(200), primary_key=True)
    request_id: uuid.UUID = Field(primary_key=True)
    request_hash: str = Field(sa_type=String(64))
    response: bytes = Field(sa_type=LargeBinary)
    create_time: datetime = _time()


class ObjectPack(SQLModel, table=True):
    """One immutable git pack of an owner's object store (PostgreSQL bucket; see git/objects).

    `name` is the SHA-1 over the pack's sorted object ids, so a pack put twice is stored once.
    """

    __tablename__ = "object_packs"

    owner_id: uuid.UUID = Field(foreign_key="owners.id", primary_key=True)
    name: str = Field(sa_type=String(64), primary_key=True)
    pack: bytes = Field(sa_type=LargeBinary)
    # The pack's .idx file, so a reader opens the pack without indexing it again.
    pack_index: bytes = Field(sa_type=LargeBinary)
    object_count: int = Field(sa_type=BigInteger)
    byte_size: int = Field(sa_type=BigInteger)
    create_time: datetime = _time()
