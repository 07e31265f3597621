"""The claim queue index leads with owner_id: claims are per owner.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_tasks_status_create", table_name="tasks")
    op.create_index("ix_tasks_owner_status_create", "tasks", ["owner_id", "status", "create_time"])


def downgrade() -> None:
    op.drop_index("ix_tasks_owner_status_create", table_name="tasks")
    op.create_index("ix_tasks_status_create", "tasks", ["status", "create_time"])
