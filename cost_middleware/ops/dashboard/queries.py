"""The dashboard's reads of the ledger: totals, time series and breakdowns, filtered.

They read the hourly rollups (:func:`cost_middleware.storage.rollups.totals`: whole hours
from ``cost_rollups``, the partial hours at a period's ends from ``cost_records``), so a
page costs the same on a ledger of a billion rows as on a small one, and every amount is the
ledger's own to the pico-dollar. Filter values come from the request: they only ever reach
SQL as bound parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.sql import ColumnElement

from cost_middleware.schema import USD_SCALE, cost_records
from cost_middleware.storage import rollups
from cost_middleware.utc import as_utc

#: What a breakdown or a stack can be keyed by (the report's groups).
KEYS = ("model", "tenant", "route", "provider")
#: Shown for a null key (a record without a tenant, say), as ``report`` shows it.
NONE_KEY = "(none)"
#: Keys beyond the largest few are summed into one stack segment.
OTHER_KEY = "(other)"


@dataclass(frozen=True, slots=True)
class Filters:
    """Which records a view covers: ``since <= created_at < until``, and exact key values."""

    since: datetime | None = None
    until: datetime | None = None
    tenant: str | None = None
    model: str | None = None
    provider: str | None = None
    route: str | None = None

    def clauses(self) -> list[ColumnElement[bool]]:
        """The filters as a WHERE on ``cost_records`` (for what the rollups do not keep)."""
        c = cost_records.c
        # As UTC: SQLite compares the stored UTC text, so another offset would shift it.
        where = [] if self.since is None else [c.created_at >= as_utc(self.since)]
        if self.until is not None:
            where.append(c.created_at < as_utc(self.until))
        where += [c[key] == getattr(self, key) for key in KEYS if getattr(self, key) is not None]
        return where

    def keys(self) -> rollups.Filters:
        return rollups.Filters(**{key: getattr(self, key) for key in KEYS})

    def narrowed(self, **changes: Any) -> Filters:
        values = {name: getattr(self, name) for name in self.__slots__}
        return Filters(**{**values, **changes})


def dollars(pico: object) -> Decimal:
    """A sum of pico-dollars as dollars (null, i.e. no priced record, is 0)."""
    return Decimal(0) if pico is None else Decimal(int(str(pico))).scaleb(-USD_SCALE)


def _totals(engine: Engine, keys: tuple[str, ...], filters: Filters,
            bucket: str | None = None) -> dict[rollups.Key, rollups.Totals]:
    with engine.connect() as conn:
        found, _ = rollups.totals(conn, keys, bucket, filters.since, filters.until,
                                  filters.keys())
    return found


@dataclass(frozen=True, slots=True)
class Row:
    """One key's totals (the whole period's, for :func:`totals`), token kinds included."""

    key: str
    requests: int
    #: The priced records' cost; None when none is priced (unknown, not $0).
    cost_usd: Decimal | None
    #: Records without a cost (unpriced model, or no usage in the response).
    unpriced: int
    input_tokens: int
    cached_input_tokens: int
    cache_write_input_tokens: int
    output_tokens: int
    reasoning_tokens: int

    @classmethod
    def of(cls, key: str, found: rollups.Totals) -> Row:
        t = found.tokens
        return cls(key, found.requests, found.cost_usd, found.unpriced, t["input_tokens"],
                   t["cached_input_tokens"], t["cache_write_input_tokens"],
                   t["output_tokens"], t["reasoning_tokens"])

    @property
    def base_input_tokens(self) -> int:
        """Input billed at the full rate: neither read from nor written to a cache."""
        return self.input_tokens - self.cached_input_tokens - self.cache_write_input_tokens


def totals(engine: Engine, filters: Filters) -> Row:
    found = _totals(engine, (), filters)
    return Row.of("total", next(iter(found.values()), rollups.Totals()))


def breakdown(engine: Engine, by: str, filters: Filters, limit: int = 100) -> list[Row]:
    """Totals per ``by`` value (one of :data:`KEYS`), most expensive first, at most ``limit``."""
    _check_key(by)
    rows = [Row.of(_key(key[0]), found) for key, found in _totals(engine, (by,), filters).items()]
    rows.sort(key=lambda r: (-(r.cost_usd or 0), -r.requests, r.key))
    return rows[:limit]


@dataclass(frozen=True, slots=True)
class Series:
    """Cost per time bucket, stacked by key: ``values[i][j]`` is key ``j`` in bucket ``i``."""

    unit: str
    #: Bucket starts (UTC) in order, every bucket of the range (empty ones too).
    buckets: list[datetime]
    keys: list[str]
    values: list[list[Decimal]]

    def bucket_totals(self) -> list[Decimal]:
        return [sum(row, Decimal(0)) for row in self.values]


#: The series units and the length of each bucket.
UNITS = {"day": timedelta(days=1), "hour": timedelta(hours=1)}


def series(engine: Engine, unit: str, stack: str, filters: Filters, *, count: int,
           now: datetime | None = None, top: int = 8) -> Series:
    """Cost of the last ``count`` ``unit`` buckets up to ``now`` (the current one included),
    stacked by the ``top`` most expensive ``stack`` values of the range and one "(other)"."""
    _check_key(stack)
    first = truncate(as_utc(now or datetime.now(UTC)), unit) - UNITS[unit] * (count - 1)
    buckets = [first + UNITS[unit] * i for i in range(count)]
    since = first if filters.since is None else max(first, as_utc(filters.since))
    found = _totals(engine, (stack,), filters.narrowed(since=since), unit)
    by_key: dict[str, Decimal] = {}
    cells: dict[tuple[datetime, str], Decimal] = {}
    for (value, start), rolled in found.items():
        name, amount = _key(value), dollars(rolled.cost_pico)
        by_key[name] = by_key.get(name, Decimal(0)) + amount
        cells[start, name] = cells.get((start, name), Decimal(0)) + amount
    ranked = sorted(by_key, key=lambda k: (-by_key[k], k))
    keys = ranked[:top] + ([OTHER_KEY] if len(ranked) > top else [])
    shown = set(ranked[:top])
    other: dict[datetime, Decimal] = {}
    for (start, key), amount in cells.items():
        if key not in shown:
            other[start] = other.get(start, Decimal(0)) + amount
    values = []
    for start in buckets:
        row = [cells.get((start, key), Decimal(0)) for key in ranked[:top]]
        if len(ranked) > top:
            row.append(other.get(start, Decimal(0)))
        values.append(row)
    return Series(unit, buckets, keys, values)


def truncate(moment: datetime, unit: str) -> datetime:
    """The start of the UTC ``unit`` (day, hour or month) holding ``moment``."""
    moment = as_utc(moment)
    if unit == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return day.replace(day=1) if unit == "month" else day


def _check_key(by: str) -> None:
    if by not in KEYS:
        raise ValueError(f"by must be one of {', '.join(KEYS)}, not {by!r}")


def _key(value: object) -> str:
    return NONE_KEY if value is None else str(value)


def distinct_values(engine: Engine, key: str, filters: Filters, limit: int = 200) -> list[str]:
    """The most used values of ``key`` in the period (for the filter lists)."""
    _check_key(key)
    found = _totals(engine, (key,), filters)
    ranked = sorted(found.items(), key=lambda item: (-item[1].requests, _key(item[0][0])))
    return [_key(key_[0]) for key_, _ in ranked[:limit]]
