"""``cost_rollups`` and ``cost_rollups_daily``: hourly and daily totals of ``cost_records``,
built here from the records already stored.

Two new tables, then an ``INSERT ... SELECT ... GROUP BY`` over the whole ledger for each, in
the migration's transaction: the ledger's writers wait for it (they spool meanwhile), so the
rollups start exactly equal to the records. It reads every row twice: about as long as one
``report`` over the whole ledger took before rollups existed.

The build is :func:`cost_middleware.storage.rollups.rebuild`, the code
``cost-middleware rollups build`` runs: a later revision that changes this table's layout
must also freeze its own copy of the build here. On PostgreSQL the trigger that keeps the
rollups from then on (:func:`~cost_middleware.storage.rollups.create_trigger`) is made first.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.types import TypeEngine

from cost_middleware.schema import ROLLUP_TOKENS
from cost_middleware.storage.rollups import create_trigger, rebuild

revision = "0006_rollups"
down_revision = "0005_billing"
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    money: TypeEngine[Any] = sa.REAL() if conn.dialect.name == "sqlite" else sa.Numeric(30, 12)
    for name, start in (("cost_rollups", "hour"), ("cost_rollups_daily", "day")):
        op.create_table(
            name,
            sa.Column(start, sa.DateTime(timezone=True), nullable=False),
            sa.Column("provider", sa.String(64), nullable=False),
            sa.Column("model", sa.String(256), nullable=False),
            sa.Column("tenant", sa.String(256), nullable=False),
            sa.Column("route", sa.String(512), nullable=False),
            sa.Column("nulls", sa.Integer(), nullable=False),
            sa.Column("requests", sa.BigInteger(), nullable=False),
            *(sa.Column(token, sa.BigInteger(), nullable=False) for token in ROLLUP_TOKENS),
            sa.Column("unpriced", sa.BigInteger(), nullable=False),
            sa.Column("no_usage", sa.BigInteger(), nullable=False),
            sa.Column("cost_usd", money, nullable=False),
            sa.Column("cost_usd_pico", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint(start, "provider", "model", "tenant", "route", "nulls",
                                    name=f"pk_{name}"),
        )
    if conn.dialect.name == "postgresql":
        # First: it locks out the ledger's writers until this transaction commits.
        create_trigger(conn)
    rebuild(conn)


def downgrade() -> None:
    raise NotImplementedError("a ledger is only ever upgraded")
