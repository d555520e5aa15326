"""Result files expire: when a file's bytes were deleted, and an index to find the old ones.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("expired_at", sa.BigInteger, nullable=True))
    op.create_index("ix_files_live_created", "files", ["expired_at", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_files_live_created", "files")
    with op.batch_alter_table("files") as batch:
        batch.drop_column("expired_at")
