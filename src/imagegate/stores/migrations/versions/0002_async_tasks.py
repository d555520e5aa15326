"""Async tasks (leases, attempts, callbacks), webhook deliveries, per-key webhook secrets, idempotency.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import base64
import secrets

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("webhook_secret", sa.String(80), nullable=True))
    keys = sa.table("api_keys", sa.column("id", sa.String), sa.column("webhook_secret", sa.String))
    bind = op.get_bind()
    for (key_id,) in bind.execute(sa.select(keys.c.id)).all():
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")
        bind.execute(sa.update(keys).where(keys.c.id == key_id).values(webhook_secret=secret))

    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("mode", sa.String(8), nullable=False, server_default="sync"))
        batch.add_column(sa.Column("trace_id", sa.String(48), nullable=True))
        batch.add_column(sa.Column("base_url", sa.Text, nullable=True))
        batch.add_column(sa.Column("wire", sa.JSON, nullable=True))
        batch.add_column(sa.Column("callback_url", sa.Text, nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("lease_owner", sa.String(48), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.BigInteger, nullable=True))
    op.create_index("ix_tasks_queue", "tasks", ["mode", "state", "created_at"])

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(48), primary_key=True),
        sa.Column("task_id", sa.String(48), sa.ForeignKey("tasks.id"), nullable=False),
        sa.Column("key_id", sa.String(32), sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_at", sa.BigInteger, nullable=False),
        sa.Column("last_status", sa.Integer, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("finished_at", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_webhook_due", "webhook_deliveries", ["state", "next_at"])

    op.create_table(
        "idempotency",
        sa.Column("scope", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("status", sa.Integer, nullable=True),
        sa.Column("content_type", sa.String(200), nullable=True),
        sa.Column("headers", sa.JSON, nullable=True),
        sa.Column("body", sa.LargeBinary, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("idempotency")
    op.drop_index("ix_webhook_due", "webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_tasks_queue", "tasks")
    with op.batch_alter_table("tasks") as batch:
        for column in (
            "lease_until",
            "lease_owner",
            "attempts",
            "callback_url",
            "wire",
            "base_url",
            "trace_id",
            "mode",
        ):
            batch.drop_column(column)
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("webhook_secret")
