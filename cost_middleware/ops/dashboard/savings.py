"""What reading input from a provider's cache saved: the cached tokens at the full input rate
minus what they were billed, from the price row that priced each record.

Records are summed in SQL by ``(provider, model, price_version)``, and, for a row with tiers,
by the tier the record's input reached (a tier reprices the whole request). The saving per
cached token comes from :meth:`Price.cost` itself (one cached token against one base input
token, in the tier), so the fallback and tier rules stay in one place.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.sql import ColumnElement

from cost_middleware.ops.dashboard.queries import Filters
from cost_middleware.pricing.price import Price
from cost_middleware.pricing.rows import price_from_row
from cost_middleware.schema import cost_records, model_price_deletions, model_prices
from cost_middleware.usage.model import Usage
from cost_middleware.utc import as_utc

_c = cost_records.c

#: (provider, model, at) -> the price in effect then, or None (a prices file's book).
Lookup = Callable[[str, str, datetime], Price | None]


@dataclass(frozen=True, slots=True)
class Saving:
    provider: str
    model: str | None
    records: int
    input_tokens: int
    cached_input_tokens: int
    #: What the cached tokens would have cost at the full input rate, less what they cost;
    #: None when no price row of these records is known (unpriced records, a deleted file).
    saved_usd: Decimal | None


def cache_savings(engine: Engine, filters: Filters, lookup: Lookup | None = None) -> list[Saving]:
    """Savings per ``(provider, model)`` of the records with cached input, largest first.

    Price rows are found by the version each record keeps (``model_prices``, or the audit
    trail of deleted rows); with ``lookup`` (prices from a file, whose versions need not be
    unique), by the row in effect at the group's last record, when its version matches.
    """
    where = [*filters.clauses(), _c.cached_input_tokens > 0]
    groups = [_c.provider, _c.model, _c.price_version]
    query = sa.select(*groups, sa.func.count(), sa.func.sum(_c.input_tokens),
                      sa.func.sum(_c.cached_input_tokens),
                      sa.func.max(_c.created_at)).where(*where).group_by(*groups)
    totals: dict[tuple[str, str | None], list[int]] = {}
    saved: dict[tuple[str, str | None], Decimal | None] = {}
    with engine.connect() as conn:
        found = conn.execute(query).all()
        versions = {int(row[2]) for row in found if row[2] is not None}
        rows = {} if lookup is not None else _rows_by_version(conn, versions)
        for provider, model, version, count, inp, cached, last in (tuple(r) for r in found):
            key = (provider, model)
            total = totals.setdefault(key, [0, 0, 0])
            total[0] += int(count)
            total[1] += int(inp or 0)
            total[2] += int(cached or 0)
            price = _price(rows, lookup, provider, model, version, last)
            amount = None if price is None else _saved(conn, where, price, provider, model,
                                                       version, int(cached or 0))
            if key not in saved or saved[key] is not None:
                previous = saved.get(key, Decimal(0))
                saved[key] = None if amount is None or previous is None else previous + amount
    result = [Saving(provider, model, records, inp, cached, saved[provider, model])
              for (provider, model), (records, inp, cached) in totals.items()]
    result.sort(key=lambda s: (-(s.saved_usd or 0), -s.cached_input_tokens, s.provider,
                               s.model or ""))
    return result


def _price(rows: dict[int, Price], lookup: Lookup | None, provider: str, model: str | None,
           version: int | None, last: datetime) -> Price | None:
    if version is None:
        return None  # unpriced: no row billed these records, so nothing was saved by one
    if lookup is None:
        return rows.get(int(version))
    price = lookup(provider, model, as_utc(last)) if model else None
    return price if price is not None and price.version == version else None


def _rows_by_version(conn: sa.Connection, versions: set[int]) -> dict[int, Price]:
    if not versions:
        return {}
    p, d = model_prices.c, model_price_deletions.c
    found = {price.version: price for price in (
        price_from_row(row._mapping) for row in conn.execute(
            sa.select(model_prices).where(p.version.in_(versions))))}
    gone = versions - set(found)
    if gone:
        for (entry,) in conn.execute(sa.select(d.entry).where(d.version.in_(gone))):
            price = Price.from_catalog(json.loads(entry))
            found[price.version] = price
    return found


def _saved(conn: sa.Connection, where: list[ColumnElement[bool]], price: Price, provider: str,
           model: str | None, version: int, cached: int) -> Decimal:
    if not price.tiers:
        return cached * _per_token(price, 0)
    # The tier each record reached: the highest threshold all its input exceeds (0: none).
    thresholds = sorted({t.above_input_tokens for t in price.tiers}, reverse=True)
    reached = sa.case(*((_c.input_tokens > t, t + 1) for t in thresholds), else_=0)
    query = (sa.select(reached, sa.func.sum(_c.cached_input_tokens))
             .where(*where, _c.provider == provider, _c.model == model,
                    _c.price_version == version).group_by(reached))
    return sum((int(tokens) * _per_token(price, int(floor))
                for floor, tokens in conn.execute(query)), Decimal(0))


def _per_token(price: Price, input_tokens: int) -> Decimal:
    """What one cached token saved in a request of ``input_tokens`` (which picks the tier)."""
    size = max(input_tokens, 1)
    full = price.cost(Usage(input_tokens=size, output_tokens=0))
    return full - price.cost(Usage(input_tokens=size, output_tokens=0, cached_input_tokens=1))
