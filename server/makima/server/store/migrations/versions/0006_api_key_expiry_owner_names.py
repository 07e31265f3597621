"""API keys may expire; owners may be named, uniquely, so an operator can say `--owner alice`.

Existing owners keep their empty name, which the partial unique index leaves out.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import makima.server.store.types

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("expire_time", makima.server.store.types.UTCDateTime(timezone=True), nullable=True)
        )
    op.create_index(
        "ux_owners_name",
        "owners",
        ["name"],
        unique=True,
        sqlite_where=sa.text("name <> ''"),
        postgresql_where=sa.text("name <> ''"),
    )


def downgrade() -> None:
    op.drop_index("ux_owners_name", table_name="owners")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("expire_time")
