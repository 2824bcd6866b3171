"""``budgets``: spend limits per tenant, route, model, provider or everything.

A new table only. Its one money column, the limit, has an exact companion like every other
(``limit_usd_pico``); a limit is never null, so the pair needs no check.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004_budgets"
down_revision = "0003_price_deletions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    limit: sa.types.TypeEngine[Any] = (sa.Numeric(30, 12)
                                       if op.get_bind().dialect.name != "sqlite" else sa.REAL())
    op.create_table(
        "budgets",
        sa.Column("scope", sa.String(16), primary_key=True),
        sa.Column("subject", sa.String(256), primary_key=True),
        sa.Column("window", sa.String(8), primary_key=True),
        sa.Column("limit_usd", limit, nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("alert_at", sa.Float()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("limit_usd_pico", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("scope IN ('tenant', 'route', 'model', 'provider', 'all')",
                           name="ck_budgets_scope"),
        sa.CheckConstraint("\"window\" IN ('hour', 'day', 'month', 'total')",
                           name="ck_budgets_window"),
        sa.CheckConstraint("mode IN ('block', 'observe')", name="ck_budgets_mode"),
    )


def downgrade() -> None:
    raise NotImplementedError("a ledger is only ever upgraded")
