"""The service's git object store on PostgreSQL: packs of each owner in `object_packs`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import makima.server.store.types

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "object_packs",
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("pack", sa.LargeBinary(), nullable=False),
        sa.Column("pack_index", sa.LargeBinary(), nullable=False),
        sa.Column("object_count", sa.BigInteger(), nullable=False),
        sa.Column("byte_size", sa.BigInteger(), nullable=False),
        sa.Column("create_time", makima.server.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["owner_id"], ["owners.id"], name=op.f("fk_object_packs_owner_id_owners")),
        sa.PrimaryKeyConstraint("owner_id", "name", name=op.f("pk_object_packs")),
    )
    if op.get_context().dialect.name == "postgresql":
        # Packs are zlib streams already: TOAST compression would only cost time.
        op.execute("ALTER TABLE object_packs ALTER COLUMN pack SET STORAGE EXTERNAL")
        op.execute("ALTER TABLE object_packs ALTER COLUMN pack_index SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.drop_table("object_packs")
