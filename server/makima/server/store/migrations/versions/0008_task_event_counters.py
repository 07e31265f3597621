"""Each task counts its stored events and keeps its highest sequence, so that a batch's answer
(last sequence, gaps) costs no scan of the task's events.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("event_count", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("last_event_sequence", sa.BigInteger(), nullable=False, server_default="0"))
    op.execute(
        "UPDATE tasks SET"
        " event_count = (SELECT count(*) FROM task_events e WHERE e.task_id = tasks.id),"
        " last_event_sequence = (SELECT coalesce(max(e.sequence), 0) FROM task_events e WHERE e.task_id = tasks.id)"
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.alter_column("event_count", server_default=None)
        batch_op.alter_column("last_event_sequence", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("last_event_sequence")
        batch_op.drop_column("event_count")
