"""Where each task's worktree lives, and the commit its code is at on the service's records.

Tasks that already have a worktree are service-held; their head is the commit of their newest
checkpoint (the head of their branch).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("placement", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("head_commit_sha", sa.String(length=64), nullable=True))
    op.execute("UPDATE tasks SET placement = 'service' WHERE worktree_path IS NOT NULL")
    op.execute(
        "UPDATE tasks SET head_commit_sha = ("
        " SELECT c.commit_sha FROM task_checkpoints c WHERE c.task_id = tasks.id"
        " ORDER BY c.create_time DESC, c.id DESC LIMIT 1"
        ") WHERE worktree_path IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("head_commit_sha")
        batch_op.drop_column("placement")
