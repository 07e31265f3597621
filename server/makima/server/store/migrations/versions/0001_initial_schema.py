"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import makima.server.store.types

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "owners",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("timeline_cursor", sa.BigInteger(), nullable=False),
        sa.Column("create_time", makima.server.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_owners")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("key_prefix", sa.String(length=16), nullable=False),
        sa.Column("create_time", makima.server.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoke_time", makima.server.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["owner_id"], ["owners.id"], name=op.f("fk_api_keys_owner_id_owners")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_owner_id"), ["owner_id"], unique=False)

    op.create_table(
        "contracts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=500), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("phase", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("create_time", makima.server.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("update_time", makima.server.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["owner_id"], ["owners.id"], name=op.f("fk_contracts_owner_id_owners")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contracts")),
    )
    with op.batch_alter_table("contracts", schema=None) as batch_op:
        batch_op.create_index("ix_contracts_owner_create", ["owner_id", "create_time"], unique=False)

    op.create_table(
        "daemons",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("create_time", makima.server.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_heartbeat_time", makima.server.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["owner_id"], ["owners.id"], name=op.f("fk_daemons_owner_id_owners")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_daemons")),
    )
    with op.batch_alter_table("daemons", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_daemons_owner_id"), ["owner_id"], unique=False)

    op.create_table(
        "history_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("cursor", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("contract_id", sa.Uuid(), nullable=True),
        sa.Column("task_id", sa.Uuid(), nullable=True),
        sa.Column("phase", sa.String(length=200), nullable=True),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column(
            "data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("create_time", makima.server.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["owner_id"], ["owners.id"], name=op.f("fk_history_events_owner_id_owners")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_history_events")),
        sa.UniqueConstraint("owner_id", "cursor", name=op.f("uq_history_events_owner_id_cursor")),
    )
    with op.batch_alter_table("history_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_history_events_owner_contract_cursor", ["owner_id", "contract_id", "cursor"], unique=False
        )
        batch_op.create_index("ix_history_events_owner_task_cursor", ["owner_id", "task_id", "cursor"], unique=False)

    op.create_table(
        "idempotency_keys",
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("method", sa.String(length=200), nullable=False),
        sa.Column("request_id", sa.Uuid(), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("create_time", makima.server.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["owner_id"], ["owners.id"], name=op.f("fk_idempotency_keys_owner_id_owners")),
        sa.PrimaryKeyConstraint("owner_id", "method", "request_id", name=op.f("pk_idempotency_keys")),
    )
    op.create_table(
        "tasks",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("contract_id", sa.Uuid(), nullable=True),
        sa.Column("name", sa.String(length=500), nullable=False),
        sa.Column("instructions", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("status_message", sa.Text(), nullable=False),
        sa.Column("daemon_id", sa.Uuid(), nullable=True),
        sa.Column("lease_expire_time", makima.server.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("worktree_path", sa.Text(), nullable=True),
        sa.Column("branch", sa.String(length=255), nullable=True),
        sa.Column("conversation_id", sa.Uuid(), nullable=True),
        sa.Column("message_count", sa.BigInteger(), nullable=False),
        sa.Column("parent_task_id", sa.Uuid(), nullable=True),
        sa.Column("forked_from_task_id", sa.Uuid(), nullable=True),
        sa.Column("forked_from_checkpoint_id", sa.Uuid(), nullable=True),
        sa.Column("forked_at_message_index", sa.BigInteger(), nullable=True),
        sa.Column("continued_from_task_id", sa.Uuid(), nullable=True),
        sa.Column("last_activity_time", makima.server.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("create_time", makima.server.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("update_time", makima.server.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["continued_from_task_id"], ["tasks.id"], name=op.f("fk_tasks_continued_from_task_id_tasks")
        ),
        sa.ForeignKeyConstraint(["contract_id"], ["contracts.id"], name=op.f("fk_tasks_contract_id_contracts")),
        sa.ForeignKeyConstraint(["daemon_id"], ["daemons.id"], name=op.f("fk_tasks_daemon_id_daemons")),
        sa.ForeignKeyConstraint(["forked_from_task_id"], ["tasks.id"], name=op.f("fk_tasks_forked_from_task_id_tasks")),
        sa.ForeignKeyConstraint(["owner_id"], ["owners.id"], name=op.f("fk_tasks_owner_id_owners")),
        sa.ForeignKeyConstraint(["parent_task_id"], ["tasks.id"], name=op.f("fk_tasks_parent_task_id_tasks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.create_index("ix_tasks_continued_from", ["continued_from_task_id"], unique=False)
        batch_op.create_index("ix_tasks_forked_from", ["forked_from_task_id"], unique=False)
        batch_op.create_index("ix_tasks_owner_contract", ["owner_id", "contract_id", "create_time"], unique=False)
        batch_op.create_index("ix_tasks_parent", ["parent_task_id"], unique=False)
        batch_op.create_index("ix_tasks_status_create", ["status", "create_time"], unique=False)
        batch_op.create_index("ix_tasks_status_lease", ["status", "lease_expire_time"], unique=False)

    op.create_table(
        "conversations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("parent_conversation_id", sa.Uuid(), nullable=True),
        sa.Column("base_count", sa.BigInteger(), nullable=False),
        sa.Column("create_time", makima.server.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("base_count >= 0", name=op.f("ck_conversations_base_count_non_negative")),
        sa.ForeignKeyConstraint(["owner_id"], ["owners.id"], name=op.f("fk_conversations_owner_id_owners")),
        sa.ForeignKeyConstraint(
            ["parent_conversation_id"],
            ["conversations.id"],
            name=op.f("fk_conversations_parent_conversation_id_conversations"),
        ),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_conversations_task_id_tasks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversations")),
    )
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_conversations_task_id"), ["task_id"], unique=False)

    op.create_table(
        "supervisor_states",
        sa.Column("contract_id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("create_time", makima.server.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["contract_id"], ["contracts.id"], name=op.f("fk_supervisor_states_contract_id_contracts")
        ),
        sa.ForeignKeyConstraint(["owner_id"], ["owners.id"], name=op.f("fk_supervisor_states_owner_id_owners")),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_supervisor_states_task_id_tasks")),
        sa.PrimaryKeyConstraint("contract_id", name=op.f("pk_supervisor_states")),
        sa.UniqueConstraint("task_id", name=op.f("uq_supervisor_states_task_id")),
    )
    with op.batch_alter_table("supervisor_states", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_supervisor_states_owner_id"), ["owner_id"], unique=False)

    op.create_table(
        "task_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column(
            "data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("event_time", makima.server.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("record_time", makima.server.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["owner_id"], ["owners.id"], name=op.f("fk_task_events_owner_id_owners")),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_task_events_task_id_tasks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_events")),
        sa.UniqueConstraint("task_id", "sequence", name=op.f("uq_task_events_task_id_sequence")),
    )
    with op.batch_alter_table("task_events", schema=None) as batch_op:
        batch_op.create_index("ix_task_events_task_time", ["task_id", "event_time"], unique=False)

    op.create_table(
        "conversation_messages",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column(
            "meta",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("create_time", makima.server.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_conversation_messages_conversation_id_conversations"),
        ),
        sa.ForeignKeyConstraint(["owner_id"], ["owners.id"], name=op.f("fk_conversation_messages_owner_id_owners")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversation_messages")),
        sa.UniqueConstraint(
            "conversation_id", "position", name=op.f("uq_conversation_messages_conversation_id_position")
        ),
    )
    op.create_table(
        "conversation_snapshots",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("message_count", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("create_time", makima.server.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_conversation_snapshots_conversation_id_conversations"),
        ),
        sa.ForeignKeyConstraint(["owner_id"], ["owners.id"], name=op.f("fk_conversation_snapshots_owner_id_owners")),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_conversation_snapshots_task_id_tasks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_conversation_snapshots")),
    )
    with op.batch_alter_table("conversation_snapshots", schema=None) as batch_op:
        batch_op.create_index("ix_conversation_snapshots_task_create", ["task_id", "create_time"], unique=False)

    op.create_table(
        "task_checkpoints",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("commit_sha", sa.String(length=64), nullable=False),
        sa.Column("parent_commit_sha", sa.String(length=64), nullable=False),
        sa.Column("branch", sa.String(length=255), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("conversation_snapshot_id", sa.Uuid(), nullable=False),
        sa.Column("message_count", sa.BigInteger(), nullable=False),
        sa.Column("event_sequence", sa.BigInteger(), nullable=False),
        sa.Column("create_time", makima.server.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_snapshot_id"],
            ["conversation_snapshots.id"],
            name=op.f("fk_task_checkpoints_conversation_snapshot_id_conversation_snapshots"),
        ),
        sa.ForeignKeyConstraint(["owner_id"], ["owners.id"], name=op.f("fk_task_checkpoints_owner_id_owners")),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_task_checkpoints_task_id_tasks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_checkpoints")),
    )
    with op.batch_alter_table("task_checkpoints", schema=None) as batch_op:
        batch_op.create_index("ix_task_checkpoints_task_create", ["task_id", "create_time"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("task_checkpoints", schema=None) as batch_op:
        batch_op.drop_index("ix_task_checkpoints_task_create")

    op.drop_table("task_checkpoints")
    with op.batch_alter_table("conversation_snapshots", schema=None) as batch_op:
        batch_op.drop_index("ix_conversation_snapshots_task_create")

    op.drop_table("conversation_snapshots")
    op.drop_table("conversation_messages")
    with op.batch_alter_table("task_events", schema=None) as batch_op:
        batch_op.drop_index("ix_task_events_task_time")

    op.drop_table("task_events")
    with op.batch_alter_table("supervisor_states", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_supervisor_states_owner_id"))

    op.drop_table("supervisor_states")
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_conversations_task_id"))

    op.drop_table("conversations")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_status_lease")
        batch_op.drop_index("ix_tasks_status_create")
        batch_op.drop_index("ix_tasks_parent")
        batch_op.drop_index("ix_tasks_owner_contract")
        batch_op.drop_index("ix_tasks_forked_from")
        batch_op.drop_index("ix_tasks_continued_from")

    op.drop_table("tasks")
    op.drop_table("idempotency_keys")
    with op.batch_alter_table("history_events", schema=None) as batch_op:
        batch_op.drop_index("ix_history_events_owner_task_cursor")
        batch_op.drop_index("ix_history_events_owner_contract_cursor")

    op.drop_table("history_events")
    with op.batch_alter_table("daemons", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_daemons_owner_id"))

    op.drop_table("daemons")
    with op.batch_alter_table("contracts", schema=None) as batch_op:
        batch_op.drop_index("ix_contracts_owner_create")

    op.drop_table("contracts")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_owner_id"))

    op.drop_table("api_keys")
    op.drop_table("owners")
