"""Fencing epochs for task leases, and server-wide secrets (page-token signing keys).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import makima.server.store.types

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_epoch", sa.BigInteger(), nullable=False, server_default="0"))
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.alter_column("lease_epoch", server_default=None)
    op.create_table(
        "server_secrets",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("purpose", sa.String(length=64), nullable=False),
        sa.Column("secret", sa.LargeBinary(), nullable=False),
        sa.Column("create_time", makima.server.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_server_secrets")),
    )
    op.create_index("ix_server_secrets_purpose_create", "server_secrets", ["purpose", "create_time"])


def downgrade() -> None:
    op.drop_index("ix_server_secrets_purpose_create", table_name="server_secrets")
    op.drop_table("server_secrets")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("lease_epoch")
