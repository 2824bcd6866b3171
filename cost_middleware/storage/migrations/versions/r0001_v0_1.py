"""v0.1, the ledger as released (git 9c7538f): on SQLite, money as integer pico-dollars and
rates as integer nano-dollars; on PostgreSQL, NUMERIC dollars.

A new database never runs this (it gets the head schema at once): it is the start an
unstamped v0.1 ledger is stamped with, and the first step of upgrading from nothing.
"""

from __future__ import annotations

from decimal import Decimal

import sqlalchemy as sa
from alembic import op

revision = "0001_v0_1"
down_revision = None
branch_labels = None
depends_on = None


def _money(scale: int) -> sa.types.TypeEngine[Decimal]:
    # v0.1's ExactDecimal column type.
    return sa.Numeric(30, scale).with_variant(sa.BigInteger(), "sqlite")


def upgrade() -> None:
    text = [sa.Column(name, sa.String(length), nullable=nullable) for name, length, nullable in (
        ("request_id", 128, True), ("tenant", 256, True), ("method", 16, True),
        ("route", 512, True))]
    tokens = [sa.Column(f"{name}_tokens", sa.BigInteger()) for name in (
        "input", "cached_input", "cache_write_input", "cache_write_5m_input",
        "cache_write_1h_input", "output", "reasoning")]
    op.create_table(
        "cost_records",
        sa.Column("record_id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        *text,
        sa.Column("status_code", sa.Integer()),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("model", sa.String(256)),
        sa.Column("api", sa.String(64), nullable=False),
        sa.Column("streamed", sa.Boolean(), nullable=False),
        sa.Column("partial", sa.Boolean(), nullable=False),
        *tokens,
        sa.Column("web_search_requests", sa.BigInteger()),
        sa.Column("cost_usd", _money(12)),
        sa.Column("reported_cost_usd", _money(12)),
        sa.Column("price_version", sa.BigInteger()),
        sa.Column("latency_ms", sa.Float()),
    )
    op.create_index("ix_cost_records_created_at", "cost_records", ["created_at"])
    op.create_table(
        "model_prices",
        sa.Column("provider", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(256), primary_key=True),
        sa.Column("effective_from", sa.DateTime(timezone=True), primary_key=True),
        *(sa.Column(name, _money(9), nullable=name not in ("input", "output")) for name in (
            "input", "cached_input", "cache_write", "cache_write_1h", "output",
            "web_search_per_1k")),
        sa.Column("aliases", sa.Text(), nullable=False),
        sa.Column("tiers", sa.Text(), nullable=False),
        sa.Column("source", sa.Text()),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_model_prices_version", "model_prices", ["version"])


def downgrade() -> None:
    raise NotImplementedError("a ledger is only ever upgraded")
