"""Branches of daemon-held tasks, kept on the records until a daemon claims the task and creates them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import makima.server.store.types

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "task_branches",
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("commit_sha", sa.String(length=64), nullable=False),
        sa.Column("checkpoint_id", sa.Uuid(), nullable=False),
        sa.Column("create_time", makima.server.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_task_branches_task_id_tasks")),
        sa.ForeignKeyConstraint(["owner_id"], ["owners.id"], name=op.f("fk_task_branches_owner_id_owners")),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"], ["task_checkpoints.id"], name=op.f("fk_task_branches_checkpoint_id_task_checkpoints")
        ),
        sa.PrimaryKeyConstraint("task_id", "name", name=op.f("pk_task_branches")),
    )


def downgrade() -> None:
    op.drop_table("task_branches")
