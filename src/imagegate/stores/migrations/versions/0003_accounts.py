"""Accounts: a credits ledger with holds, per-key limits, expiry and allowed models, rate windows.

Every key's existing balance becomes an opening `grant` row, so each ledger sums to its balance.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("held", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("expires_at", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("models", sa.JSON, nullable=True))
        batch.add_column(sa.Column("rpm", sa.Integer, nullable=True))
        batch.add_column(sa.Column("max_active", sa.Integer, nullable=True))
        batch.add_column(sa.Column("max_images", sa.Integer, nullable=True))

    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("held", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("cost", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("images", sa.Integer, nullable=True))
    op.create_index("ix_tasks_key_state", "tasks", ["key_id", "state"])

    ledger = op.create_table(
        "ledger",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key_id", sa.String(32), sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("task_id", sa.String(48), sa.ForeignKey("tasks.id"), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("held", sa.BigInteger, nullable=False),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_ledger_key", "ledger", ["key_id", "id"])
    op.create_index("ix_ledger_task", "ledger", ["task_id"])

    op.create_table(
        "rate_windows",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("minute", sa.BigInteger, primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
    )

    keys = sa.table(
        "api_keys", sa.column("id", sa.String), sa.column("credits", sa.BigInteger), sa.column("created_at")
    )
    bind = op.get_bind()
    rows = bind.execute(sa.select(keys.c.id, keys.c.credits, keys.c.created_at)).all()
    opening = [
        {"key_id": key_id, "kind": "grant", "amount": credits, "held": 0, "note": "opening balance", "created_at": at}
        for key_id, credits, at in rows
        if credits
    ]
    if opening:
        op.bulk_insert(ledger, opening)


def downgrade() -> None:
    op.drop_table("rate_windows")
    op.drop_index("ix_ledger_task", "ledger")
    op.drop_index("ix_ledger_key", "ledger")
    op.drop_table("ledger")
    op.drop_index("ix_tasks_key_state", "tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("images")
        batch.drop_column("cost")
        batch.drop_column("held")
    with op.batch_alter_table("api_keys") as batch:
        for column in ("max_images", "max_active", "rpm", "models", "expires_at", "held"):
            batch.drop_column(column)
