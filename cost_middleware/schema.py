"""SQLAlchemy tables: ``cost_records`` (the ledger), ``model_prices`` (the price history),
``model_price_deletions`` (rows removed from it), ``budgets`` (spend limits), ``cost_rollups``
and ``cost_rollups_daily`` (hourly and daily totals of the ledger) and the schema revision
the ledger is at.

Exposed as :data:`metadata` (the head schema) for users who manage schema with their own
migrations; ours are in :mod:`cost_middleware.storage.migrations`.

Money reads as US dollars (rates: USD per 1M tokens) in any SQL client, and every money column
has an exact companion, ``<column>_pico`` (``_nano`` for rates): the amount as an integer count
of pico-dollars (nano-dollars), which sums exactly on every backend. On PostgreSQL the money
column itself is an exact ``NUMERIC``; SQLite has no exact decimal (its ``NUMERIC`` is REAL),
so there the money column is REAL, the nearest double. A check keeps each pair null together,
so a writer that fills only one of them (v0.1 code still running, say) is refused, not stored.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, cast

from sqlalchemy import (
    REAL,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    event,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.sql import ColumnElement
from sqlalchemy.types import TypeDecorator, TypeEngine


class ExactDecimal(TypeDecorator[Decimal]):
    """A ``Decimal`` rounded half even (the decimal context's rounding) to ``scale`` places,
    counted in ``10**-scale`` units where it is stored as an integer."""

    impl: type[TypeEngine[Any]] = Numeric
    cache_ok = True

    def __init__(self, scale: int, precision: int = 30) -> None:
        super().__init__()
        self.scale = scale
        self.precision = precision
        self._unit = Decimal(1).scaleb(-scale)
        self._per_unit = Decimal(10) ** scale
        self._per_unit_float = float(10**scale)

    def exact(self, value: Decimal) -> Decimal:
        """``value`` rounded to the column's scale."""
        return value.quantize(self._unit)

    def units(self, value: Decimal) -> int:
        """``value`` rounded, then counted in ``10**-scale`` units (as the companion stores it)."""
        return self.exact_units(value)[1]

    def exact_units(self, value: Decimal) -> tuple[Decimal, int]:
        """(:meth:`exact`, :meth:`units`) of ``value``: a PostgreSQL money column and its
        companion, rounded once."""
        exact = value.quantize(self._unit)
        return exact, int(exact * self._per_unit)

    def real_units(self, value: Decimal) -> tuple[float, int]:
        """(the REAL, :meth:`units`) of ``value``: a SQLite money column and its companion. The
        REAL is the count as a double divided by ``10**scale``, as SQLite's own SQL computes
        it: the nearest double to the amount below 2**53 units (9,007 USD at 12 places)."""
        units = int(value.quantize(self._unit) * self._per_unit)  # inline: a row's hot path
        return units / self._per_unit_float, units


class Units(ExactDecimal):
    """An exact money companion: an integer count of ``10**-scale`` USD on every backend,
    read back as the ``Decimal`` amount."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> int | None:
        return None if value is None else self.units(Decimal(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(int(value)).scaleb(-self.scale)


class Dollars(ExactDecimal):
    """A money column as SQL clients read it: ``NUMERIC(precision, scale)`` on PostgreSQL,
    REAL on SQLite (see the module docstring); ``companion`` names its :class:`Units` column.

    Selected through this metadata, a SQLite money column reads its companion instead
    (:meth:`column_expression`), so it comes back exact on every backend. Aggregates over it
    (``sum(cost_usd)``) do not: sum the companion.
    """

    cache_ok = True

    def __init__(self, scale: int, companion: str, precision: int = 30) -> None:
        super().__init__(scale, precision)
        self.companion = companion

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(REAL())
        return dialect.type_descriptor(Numeric(self.precision, self.scale, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        exact = Decimal(value)
        return self.real_units(exact)[0] if dialect.name == "sqlite" else self.exact(exact)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        # SQLite: a REAL read as it is (an aggregate, say); repr is its shortest exact text.
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)

    def column_expression(self, colexpr: ColumnElement[Any]) -> ColumnElement[Any]:
        # Called on the dialect's copy of this type, whose impl tells the backend.
        table = getattr(colexpr, "table", None)
        if not isinstance(self.impl, Float) or table is None or self.companion not in table.c:
            return colexpr
        return table.c[self.companion]


#: Money in USD, exact to the pico-dollar.
USD_SCALE = 12
#: Rates in USD per 1M tokens, exact to 1e-9.
RATE_SCALE = 9
#: The name of each scale's unit, the suffix of a money column's companion.
_UNIT_NAMES = {USD_SCALE: "pico", RATE_SCALE: "nano"}
#: The table Alembic keeps the ledger's revision in (not ``alembic_version``: an application's
#: own migrations may already use that name in the same database).
VERSION_TABLE = "cost_middleware_version"


def _money(name: str, scale: int, *, nullable: bool = True) -> Column[Decimal]:
    return Column(name, Dollars(scale, f"{name}_{_UNIT_NAMES[scale]}"), nullable=nullable)


def _companions(table: str, *money: Column[Decimal]) -> list[Any]:
    """The exact companion of each money column, and the checks that keep each pair null
    together. An insert through SQLAlchemy that sets only the money column fills its
    companion (the column default copies the value; :class:`Units` rounds and counts it)."""
    items: list[Any] = []
    for column in money:
        kind = cast(Dollars, column.type)  # built by _money

        def copy(context: DefaultExecutionContext, name: str = column.name) -> Any:
            return context.get_current_parameters().get(name)  # type: ignore[no-untyped-call]

        items.append(Column(kind.companion, Units(kind.scale), nullable=column.nullable,
                            default=copy))
        if column.nullable:
            items.append(CheckConstraint(
                f"({column.name} IS NULL) = ({kind.companion} IS NULL)",
                name=f"ck_{table}_{kind.companion}"))
    return items


metadata = MetaData()

_cost = _money("cost_usd", USD_SCALE)
_reported = _money("reported_cost_usd", USD_SCALE)
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
    _cost,
    _reported,
    Column("price_version", BigInteger),
    Column("latency_ms", Float),
    # Companions last: a migrated PostgreSQL ledger gets them by ADD COLUMN, at the end.
    *_companions("cost_records", _cost, _reported),
    # Revision 0005 (billed dimensions), after the companions where ADD COLUMN put them: the
    # service tier the provider billed at (sanitized, null = standard or not said) and the
    # audio share of input_tokens / output_tokens (null = none reported).
    Column("service_tier", String(32)),
    Column("audio_input_tokens", BigInteger),
    Column("audio_output_tokens", BigInteger),
    # The one secondary index: reports filter by created_at and reprice pages through it in
    # created_at order (a BRIN index, cheaper by a hair here, cannot give that order). A
    # (tenant, created_at) index, measured again for revision 0002 (50 tenants, batches of
    # 500 and 5,000, two runs), cut the sink's write rate to 0.47-0.88x on SQLite and
    # 0.63-0.86x on PostgreSQL, and no query of ours needs it; add one in your own migrations
    # if you filter by tenant.
    Index("ix_cost_records_created_at", "created_at"),
)

_RATES = [_money("input", RATE_SCALE, nullable=False), _money("cached_input", RATE_SCALE),
          _money("cache_write", RATE_SCALE), _money("cache_write_1h", RATE_SCALE),
          _money("output", RATE_SCALE, nullable=False), _money("web_search_per_1k", RATE_SCALE)]
_audio_input = _money("audio_input", RATE_SCALE)
_audio_output = _money("audio_output", RATE_SCALE)
model_prices = Table(
    "model_prices",
    metadata,
    Column("provider", String(64), primary_key=True),
    Column("model", String(256), primary_key=True),
    Column("effective_from", DateTime(timezone=True), primary_key=True),
    *_RATES,
    # JSON text: aliases (list of names) and tiers (list of objects, decimals as strings).
    Column("aliases", Text, nullable=False, default="[]"),
    Column("tiers", Text, nullable=False, default="[]"),
    Column("source", Text),
    # Monotonically increasing across the whole table; records keep the version they used.
    Column("version", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    *_companions("model_prices", *_RATES),
    # Revision 0005: audio rates (null = audio tokens cost the text rate) and service-tier
    # rates (JSON text: tier name -> rates overriding the standard ones, decimals as strings).
    _audio_input,
    _audio_output,
    Column("service_tiers", Text, nullable=False, default="{}"),
    *_companions("model_prices", _audio_input, _audio_output),
    Index("ix_model_prices_version", "version"),
)

#: Rows that left ``model_prices`` (the audit trail: ``prices delete``, a correction of a row,
#: a ``prices load --replace``): the row as it was, and when it went. Its
#: version stays taken (the next row is numbered above every version here and in
#: ``model_prices``), so a version a record keeps always names one row. The rates are exact
#: decimal strings in ``entry``, as in a catalog: nothing sums them.
model_price_deletions = Table(
    "model_price_deletions",
    metadata,
    Column("version", BigInteger, primary_key=True, autoincrement=False),
    Column("provider", String(64), nullable=False),
    Column("model", String(256), nullable=False),
    Column("effective_from", DateTime(timezone=True), nullable=False),
    Column("deleted_at", DateTime(timezone=True), nullable=False),
    # The deleted row as a catalog entry (JSON text), version and source included.
    Column("entry", Text, nullable=False),
)

#: Spend limits (``cost-middleware budgets``). ``subject`` is a value of ``scope`` (a tenant,
#: a route...), or ``*`` for each value separately; ``window`` is a UTC calendar ``hour``,
#: ``day`` or ``month``, or ``total``. Spend is not kept here: it is counted from the ledger.
_limit = _money("limit_usd", USD_SCALE, nullable=False)
budgets = Table(
    "budgets",
    metadata,
    Column("scope", String(16), primary_key=True),
    Column("subject", String(256), primary_key=True),
    Column("window", String(8), primary_key=True),
    _limit,
    Column("mode", String(8), nullable=False, default="block"),
    # The fraction of the limit at which an alert is logged and counted; null = none.
    Column("alert_at", Float),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    *_companions("budgets", _limit),
    CheckConstraint("scope IN ('tenant', 'route', 'model', 'provider', 'all')",
                    name="ck_budgets_scope"),
    CheckConstraint("\"window\" IN ('hour', 'day', 'month', 'total')", name="ck_budgets_window"),
    CheckConstraint("mode IN ('block', 'observe')", name="ck_budgets_mode"),
)

#: The token counts ``cost_rollups`` sums, named as in ``cost_records`` (a null count adds 0).
ROLLUP_TOKENS = ("input_tokens", "cached_input_tokens", "cache_write_input_tokens",
                 "cache_write_5m_input_tokens", "cache_write_1h_input_tokens", "output_tokens",
                 "reasoning_tokens", "web_search_requests", "audio_input_tokens",
                 "audio_output_tokens")
#: Bits of ``cost_rollups.nulls``: which key columns were null in the records summed (stored as
#: ''). A primary key cannot hold null, and '' is a value a record may carry, so the key keeps
#: both apart.
ROLLUP_NULL_BITS = {"model": 1, "tenant": 2, "route": 4}

#: Hourly and daily totals of ``cost_records`` per (provider, model, tenant, route), kept by
#: the writer in the transaction that stores the records they sum (see
#: :mod:`cost_middleware.storage.rollups`). ``cost_usd`` sums the priced records only (0 when
#: none is); ``unpriced`` counts the others. Reads take whole days from the daily table (a
#: month is 30 rows per key, not 720), the hours of a partial day from the hourly one.
def _rollups(name: str, start: str) -> Table:
    cost = _money("cost_usd", USD_SCALE, nullable=False)
    return Table(
        name,
        metadata,
        # The hour's (day's) start, UTC. First in the key: reports read a range of them.
        Column(start, DateTime(timezone=True), nullable=False),
        Column("provider", String(64), nullable=False),
        Column("model", String(256), nullable=False),
        Column("tenant", String(256), nullable=False),
        Column("route", String(512), nullable=False),
        Column("nulls", Integer, nullable=False),
        Column("requests", BigInteger, nullable=False),
        *(Column(name, BigInteger, nullable=False) for name in ROLLUP_TOKENS),
        # Records whose cost is unknown, and records whose response carried no usage.
        Column("unpriced", BigInteger, nullable=False),
        Column("no_usage", BigInteger, nullable=False),
        cost,
        *_companions(name, cost),
        PrimaryKeyConstraint(start, "provider", "model", "tenant", "route", "nulls",
                             name=f"pk_{name}"),
    )


cost_rollups = _rollups("cost_rollups", "hour")
cost_rollups_daily = _rollups("cost_rollups_daily", "day")


def _roll_up_trigger(target: Table, connection: Connection, **_: Any) -> None:
    """PostgreSQL: ``cost_records``' trigger that keeps the rollups (made with the table)."""
    if connection.dialect.name == "postgresql":
        from cost_middleware.storage.rollups import create_trigger  # it imports this module

        create_trigger(connection)


event.listen(cost_records, "after_create", _roll_up_trigger)

#: Alembic's own layout of its version table, so either may create it.
schema_version = Table(
    VERSION_TABLE,
    metadata,
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"),
)
