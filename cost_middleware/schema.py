"""SQLAlchemy tables: ``cost_records`` (the ledger) and ``model_prices`` (the price history).

Exposed as :data:`metadata` for users who manage schema with their own migrations.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine


class ExactDecimal(TypeDecorator[Decimal]):
    """A ``Decimal`` kept exact on every backend.

    PostgreSQL gets ``NUMERIC(p, scale)``. SQLite would store ``Numeric`` as REAL and lose
    digits, so there the value is an integer count of ``10**-scale`` units (e.g. pico-dollars).
    """

    impl = Numeric
    cache_ok = True

    def __init__(self, scale: int, precision: int = 30) -> None:
        super().__init__()
        self.scale = scale
        self.precision = precision
        self._unit = Decimal(1).scaleb(-scale)
        self._per_unit = Decimal(10) ** scale

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(self.precision, self.scale, asdecimal=True))

    def exact(self, value: Decimal) -> Decimal:
        """``value`` rounded to the column's scale (by the decimal context: half even)."""
        return value.quantize(self._unit)

    def units(self, value: Decimal) -> int:
        """``value`` as SQLite stores it: rounded, then counted in ``10**-scale`` units."""
        return int(value.quantize(self._unit) * self._per_unit)

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        exact = Decimal(value)
        return self.units(exact) if dialect.name == "sqlite" else self.exact(exact)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return Decimal(int(value)).scaleb(-self.scale)
        return Decimal(value)


#: Money in USD, exact to the pico-dollar.
USD_SCALE = 12
#: Rates in USD per 1M tokens, exact to 1e-9.
RATE_SCALE = 9

metadata = MetaData()

cost_records = Table(
    "cost_records",
    metadata,
    Column("record_id", String(64), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("request_id", String(128)),
    Column("tenant", String(256)),
    Column("method", String(16)),
    Column("route", String(512)),
    Column("status_code", Integer),
    Column("provider", String(64), nullable=False),
    Column("model", String(256)),
    Column("api", String(64), nullable=False),
    Column("streamed", Boolean, nullable=False, default=False),
    Column("partial", Boolean, nullable=False, default=False),
    # Token counts: null = the response carried no usage.
    Column("input_tokens", BigInteger),
    Column("cached_input_tokens", BigInteger),
    Column("cache_write_input_tokens", BigInteger),
    Column("cache_write_5m_input_tokens", BigInteger),
    Column("cache_write_1h_input_tokens", BigInteger),
    Column("output_tokens", BigInteger),
    Column("reasoning_tokens", BigInteger),
    Column("web_search_requests", BigInteger),
    Column("cost_usd", ExactDecimal(USD_SCALE)),
    Column("reported_cost_usd", ExactDecimal(USD_SCALE)),
    Column("price_version", BigInteger),
    Column("latency_ms", Float),
    # The one secondary index: reports filter by created_at and reprice pages through it in
    # created_at order (a BRIN index, cheaper by a hair here, cannot give that order). A
    # (tenant, created_at) index cost about a third of PostgreSQL's and SQLite's write time
    # and no query of ours used it; add one in your own migrations if you filter by tenant.
    Index("ix_cost_records_created_at", "created_at"),
)

model_prices = Table(
    "model_prices",
    metadata,
    Column("provider", String(64), primary_key=True),
    Column("model", String(256), primary_key=True),
    Column("effective_from", DateTime(timezone=True), primary_key=True),
    Column("input", ExactDecimal(RATE_SCALE), nullable=False),
    Column("cached_input", ExactDecimal(RATE_SCALE)),
    Column("cache_write", ExactDecimal(RATE_SCALE)),
    Column("cache_write_1h", ExactDecimal(RATE_SCALE)),
    Column("output", ExactDecimal(RATE_SCALE), nullable=False),
    Column("web_search_per_1k", ExactDecimal(RATE_SCALE)),
    # JSON text: aliases (list of names) and tiers (list of objects, decimals as strings).
    Column("aliases", Text, nullable=False, default="[]"),
    Column("tiers", Text, nullable=False, default="[]"),
    Column("source", Text),
    # Monotonically increasing across the whole table; records keep the version they used.
    Column("version", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_model_prices_version", "version"),
)
