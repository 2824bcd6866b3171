"""Money as any SQL client sees it (raw ``sqlite3`` and ``psycopg``, not SQLAlchemy): US
dollars (rates: USD per 1M tokens) in every money column on both backends, exact companions
that agree digit for digit, and report totals that stay exact."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from cost_middleware.ops.report import summarize
from cost_middleware.pricing.admin import load_catalog, show_price
from cost_middleware.records import CostRecord
from cost_middleware.schema import Dollars, cost_records, model_prices
from cost_middleware.storage.sinks import SQLSink
from cost_middleware.usage.model import Usage

PICO = Decimal("1E-12")
#: Costs whose float sum is not their sum, sub-pico ones that round, and large ones.
COSTS = [Decimal(v) for v in (
    "0.1", "0.2", "0.000000000001", "0.0000000000015", "0.00049065", "0.072345678912",
    "12.345678901234", "999.999999999999", "4095.999999999999", "123456.123456789012",
    "8999999.999999999999")]
RATES = {"input": "0.000000001", "cached_input": "123456.123456789", "cache_write": "0",
         "cache_write_1h": "1.000000001", "output": "9999999.999999999",
         "web_search_per_1k": "10"}


@pytest.fixture
def ledger(engine: sa.Engine) -> Iterator[sa.Engine]:
    """The records of :data:`COSTS` (with a reported cost each, and one unpriced), and one
    price row of :data:`RATES`, written by the sink and the price admin."""
    at = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    records = [CostRecord(provider="acme", api="chat", model=f"m{i % 3}", tenant=f"t{i % 2}",
                          usage=Usage(input_tokens=1, output_tokens=1, reported_cost_usd=-cost),
                          cost_usd=cost, price_version=1, created_at=at + timedelta(seconds=i))
               for i, cost in enumerate(COSTS)]
    records.append(CostRecord(provider="acme", api="chat", model="m0", usage=None,
                              created_at=at - timedelta(seconds=1)))
    sink = SQLSink(engine)
    assert sink.write(records) == len(records)
    sink.close()
    load_catalog(engine, {"prices": [{"provider": "acme", "model": "odd", **RATES,
                                      "effective_from": "2025-01-01T00:00:00Z"}]})
    yield engine


@contextmanager
def raw_connection(url: str | sa.URL) -> Iterator[Any]:
    """A connection of the bare driver (``sqlite3`` or ``psycopg``, not SQLAlchemy) to
    ``url``, committed (PostgreSQL: autocommit) and closed at the end."""
    parsed = sa.make_url(url)
    conn: Any
    if parsed.get_backend_name() == "sqlite":
        conn = sqlite3.connect(parsed.database or "")
    else:
        import psycopg

        conn = psycopg.connect(parsed.set(drivername="postgresql").render_as_string(
            hide_password=False), autocommit=True)
    try:
        yield conn
        conn.commit()
    finally:
        conn.close()


def raw(engine: sa.Engine, sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` from the bare driver."""
    with raw_connection(engine.url) as conn:
        return [tuple(r) for r in conn.execute(sql).fetchall()]


def check_dollars(engine: sa.Engine, stored: Any, units: Any, exact: Decimal,
                  scale: int) -> None:
    """``stored`` (a money column as the driver returns it) is ``exact`` USD, and ``units``
    (its companion) is ``exact`` in ``10**-scale`` USD, digit for digit."""
    assert units == int(exact.scaleb(scale))
    if engine.dialect.name == "postgresql":
        assert isinstance(stored, Decimal) and stored == exact  # NUMERIC: exact dollars
        return
    # SQLite's REAL: the nearest double (below 2**53 units), so within 1e-12 USD below 4,096
    # USD, and to 16 significant digits (a double's precision) at any size.
    assert isinstance(stored, float)
    if abs(units) < 2**53:
        assert stored == float(exact)
    error = abs(Decimal(stored) - exact)
    assert error <= PICO if abs(exact) < 4096 else error <= abs(exact) * Decimal(2) ** -52


def test_every_cost_column_is_dollars_with_an_exact_companion(ledger: sa.Engine) -> None:
    rows = raw(ledger, "SELECT cost_usd, cost_usd_pico, reported_cost_usd, "
                       "reported_cost_usd_pico FROM cost_records ORDER BY created_at, record_id")
    assert rows[0] == (None, None, None, None)  # unpriced, no usage
    assert len(rows) == len(COSTS) + 1
    for cost, (stored, units, reported, reported_units) in zip(COSTS, rows[1:], strict=True):
        exact = cost.quantize(PICO)
        check_dollars(ledger, stored, units, exact, 12)
        check_dollars(ledger, reported, reported_units, -exact, 12)


def test_every_rate_column_is_usd_per_million_tokens_with_an_exact_companion(
        ledger: sa.Engine) -> None:
    names = list(RATES)
    [row] = raw(ledger, f"SELECT {', '.join(f'{n}, {n}_nano' for n in names)} "
                        "FROM model_prices WHERE model = 'odd'")
    for i, name in enumerate(names):
        check_dollars(ledger, row[2 * i], row[2 * i + 1], Decimal(RATES[name]), 9)
    # And back through our code, exact to the digit (SQLite's REAL alone could not be).
    [price] = show_price(ledger, "acme", "odd")
    assert {n: getattr(price, n) for n in names} == {n: Decimal(v) for n, v in RATES.items()}


def test_the_money_columns_are_declared_as_numbers(ledger: sa.Engine) -> None:
    """So spreadsheets, pandas and BI tools treat them as numbers (REAL, NUMERIC)."""
    columns = {**{c["name"]: c for c in sa.inspect(ledger).get_columns("cost_records")},
               **{c["name"]: c for c in sa.inspect(ledger).get_columns("model_prices")}}
    money = [c.name for t in (cost_records, model_prices) for c in t.columns
             if isinstance(c.type, Dollars)]
    assert len(money) == 10
    expected = sa.REAL if ledger.dialect.name == "sqlite" else sa.NUMERIC
    assert all(isinstance(columns[name]["type"], expected) for name in money)


def test_report_totals_stay_exact(ledger: sa.Engine) -> None:
    rows = summarize(ledger, "provider")
    assert [(r.key, r.requests, r.unpriced) for r in rows] == [("acme", len(COSTS) + 1, 1)]
    total = sum((c.quantize(PICO) for c in COSTS), Decimal(0))
    assert rows[0].cost_usd == total
    by_model = summarize(ledger, "model")
    assert sum((r.cost_usd for r in by_model), Decimal(0)) == total
    # The companion sums exactly in plain SQL too, on either backend.
    [(units,)] = raw(ledger, "SELECT sum(cost_usd_pico) FROM cost_records")
    assert int(units) == int(total.scaleb(12))
