"""``model_price_deletions``: the rows ``prices delete`` removed, kept for the audit trail.

A new table only: nothing else changes, nothing is copied. It holds no money column (the
deleted row's rates are exact decimal strings in its ``entry`` JSON), so it needs no companions.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_price_deletions"
down_revision = "0002_dollars"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_price_deletions",
        sa.Column("version", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("effective_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("entry", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("a ledger is only ever upgraded")
