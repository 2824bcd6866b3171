"""``cost_records`` rows: a record as the drivers take it, and a stored row back as a record.

The column rules come from the table, once: text is cut to its column's length and cleared
of NUL and unpaired surrogates, integers are clamped to their column's range, money no
backend can store becomes null (unpriced) and otherwise fills its exact companion too,
datetimes become aware UTC. A row a backend
refuses would fail its whole batch on every retry, so none may be built.

Rows are built in one pass per record (:func:`_fast_row`), which checks that every value is
storable as it is and converts it to what the driver binds; only a record it refuses (rare:
our extractors build valid values) goes through the cleaning (:func:`_cleaned_row`). Each
cleaner returns a storable value unchanged, so what "storable as it is" means is written in
one place, the fast path. The underscored names are shared with :mod:`.sinks` and the tests.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from operator import attrgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Row

from cost_middleware.records import CostRecord
from cost_middleware.schema import Dollars, cost_records
from cost_middleware.usage.model import Usage
from cost_middleware.utc import as_utc, utcnow

log = logging.getLogger("cost_middleware")

#: A cost no backend can store is recorded as unpriced (null) instead of failing the batch.
#: The exact companions keep pico-dollars in a signed 64-bit integer (about 9.22e6 USD).
MAX_USD = Decimal(9_000_000)

# -- the column rules ----------------------------------------------------------------------

_COLUMNS = tuple(c.name for c in cost_records.columns)
#: The order the row builders use; a test checks it is the table's column order.
_ROW_ORDER = (
    "record_id", "created_at", "request_id", "tenant", "method", "route", "status_code",
    "provider", "model", "api", "streamed", "partial", "input_tokens", "cached_input_tokens",
    "cache_write_input_tokens", "cache_write_5m_input_tokens", "cache_write_1h_input_tokens",
    "output_tokens", "reasoning_tokens", "web_search_requests", "cost_usd", "reported_cost_usd",
    "price_version", "latency_ms", "cost_usd_pico", "reported_cost_usd_pico", "service_tier",
    "audio_input_tokens", "audio_output_tokens",
)
#: (index, length, required) of each text column.
_TEXT = tuple(
    (i, c.type.length, not c.nullable) for i, c in enumerate(cost_records.columns)
    if isinstance(c.type, sa.String) and c.type.length
)
#: (index, largest value) of each integer column; the smallest is -largest - 1.
_INTEGERS = tuple(
    (i, 2**63 - 1 if isinstance(c.type, sa.BigInteger) else 2**31 - 1)
    for i, c in enumerate(cost_records.columns) if isinstance(c.type, sa.Integer)
)
#: (index, companion's index, type) of each money column.
_MONEY = tuple((i, _COLUMNS.index(kind.companion), kind)
               for i, kind in enumerate(c.type for c in cost_records.columns)
               if isinstance(kind, Dollars))
_CREATED = _COLUMNS.index("created_at")
_BOOLEANS = tuple(i for i, c in enumerate(cost_records.columns) if isinstance(c.type, sa.Boolean))
_LATENCY = _COLUMNS.index("latency_ms")
_TOKEN_COLUMNS = ("input_tokens", "cached_input_tokens", "cache_write_input_tokens",
                  "cache_write_5m_input_tokens", "cache_write_1h_input_tokens", "output_tokens",
                  "reasoning_tokens", "web_search_requests")
_NO_TOKENS = (None,) * len(_TOKEN_COLUMNS)
_NO_AUDIO = (None, None)
_usage_tokens = attrgetter(*_TOKEN_COLUMNS)  # the Usage fields are named like the columns

# The same limits by column, as the fast path reads them.
_MAX_LEN = {_COLUMNS[i]: length for i, length, _required in _TEXT}
_RECORD_ID_LEN, _REQUEST_ID_LEN = _MAX_LEN["record_id"], _MAX_LEN["request_id"]
_TENANT_LEN, _METHOD_LEN, _ROUTE_LEN = _MAX_LEN["tenant"], _MAX_LEN["method"], _MAX_LEN["route"]
_PROVIDER_LEN, _MODEL_LEN, _API_LEN = _MAX_LEN["provider"], _MAX_LEN["model"], _MAX_LEN["api"]
_TIER_LEN = _MAX_LEN["service_tier"]
_MAX_INT = {_COLUMNS[i]: largest for i, largest in _INTEGERS}
#: Every token count fits in the smallest of their ranges (each a power of two minus one,
#: so the OR of non-negative counts fits exactly when each count does).
_TOKENS_MAX = min(_MAX_INT[name] for name in (*_TOKEN_COLUMNS, "audio_input_tokens",
                                                "audio_output_tokens"))
_STATUS_MAX, _VERSION_MAX = _MAX_INT["status_code"], _MAX_INT["price_version"]
_STATUS_MIN, _VERSION_MIN = -_STATUS_MAX - 1, -_VERSION_MAX - 1
(_, _, _COST), (_, _, _REPORTED) = _MONEY  # cost_usd, reported_cost_usd
_SECOND = timedelta(seconds=1)
_NULLS = (None, None)  # a null money column and its companion


def record_row(record: CostRecord) -> dict[str, Any]:
    """The ``cost_records`` row of one record (column name to value), every value storable
    on every backend (see the module docstring)."""
    return dict(zip(_COLUMNS, _row_values(record), strict=True))


def _row_values(record: CostRecord) -> list[Any]:
    """:func:`record_row`'s values in ``_COLUMNS`` order (the full cleaning)."""
    usage = record.usage
    if usage is None:
        tokens: tuple[Any, ...] = _NO_TOKENS
        audio: tuple[Any, ...] = _NO_AUDIO
        reported = None
    else:
        tokens = _usage_tokens(usage)
        audio = (usage.input_audio_tokens, usage.output_audio_tokens)
        reported = usage.reported_cost_usd
    values = [
        record.record_id, _utc(record.created_at), record.request_id, record.tenant,
        record.method, record.route, record.status_code, record.provider, record.model,
        record.api, bool(record.streamed), bool(record.partial), *tokens,
        record.cost_usd, reported, record.price_version, record.latency_ms,
        None, None,  # the companions, filled below
        record.service_tier, *audio,
    ]
    for i, length, required in _TEXT:
        v = values[i]
        if v is not None:
            values[i] = _clean_text(v, length)
        elif required:
            values[i] = ""
    for i, largest in _INTEGERS:
        v = values[i]
        if v is not None:
            values[i] = _clean_int(v, largest)
    for i, companion, money in _MONEY:
        v = values[i]
        if v is not None:
            v = values[i] = _clean_money(v, record.record_id, _COLUMNS[i])
            if v is not None:
                values[companion] = money.exact(v)
    v = values[_LATENCY]
    if v is not None:
        values[_LATENCY] = _clean_float(v)
    return values


def _clean_text(value: object, length: int) -> str:
    text = (value if isinstance(value, str) else str(value)).replace("\x00", "")
    # PostgreSQL refuses NUL in text, and UTF-8 has no unpaired surrogates (ASCII has none).
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text[:length]


def _clean_int(value: object, largest: int) -> int | None:
    number: int
    if type(value) is int:
        number = value
    else:
        try:
            number = int(value)  # type: ignore[call-overload]
        except (TypeError, ValueError, OverflowError):
            return None
    return max(-largest - 1, min(largest, number))


def _clean_float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None


def _clean_money(value: object, record_id: object, column: str) -> Decimal | None:
    try:
        amount = value if type(value) is Decimal else Decimal(str(value))
        if amount.is_finite() and -MAX_USD <= amount <= MAX_USD:
            return amount
    except (InvalidOperation, ValueError, TypeError):
        pass
    log.warning("cost_middleware: record %r: %s %r cannot be stored; writing null",
                record_id, column, value)
    return None


def _utc(value: object) -> datetime:
    if not isinstance(value, datetime):
        return utcnow()
    try:
        return as_utc(value)
    except OverflowError:  # before 0001-01-01 or after 9999 in UTC: no datetime holds it
        return utcnow()


# -- rows as the drivers take them -------------------------------------------------------
#
# The sink stores each value in the form SQLAlchemy would bind it (a test compares): money's
# companions as integer units everywhere; on SQLite, money as a REAL (Dollars.real of the
# units), datetimes as SQLAlchemy's DATETIME text, booleans as 0/1; on PostgreSQL, money
# rounded to the column's scale.


def _fast_row(record: CostRecord, times: _SQLiteTimes | None) -> tuple[Any, ...] | None:
    """The stored row of a record none of whose values needs cleaning, or None.

    Accepts only what :func:`_row_values` would keep unchanged (plain ``str``, ``int``,
    ``Decimal``, ``float``, UTC ``datetime`` values within their columns' limits), and
    converts for SQLite when ``times`` is given, for PostgreSQL otherwise. A test checks
    that both paths give the same row.
    """
    rid, request_id, tenant = record.record_id, record.request_id, record.tenant
    method, route, provider = record.method, record.route, record.provider
    model, api, tier = record.model, record.api, record.service_tier
    if not (type(rid) is str and len(rid) <= _RECORD_ID_LEN
            and (request_id is None
                 or (type(request_id) is str and len(request_id) <= _REQUEST_ID_LEN))
            and (tenant is None or (type(tenant) is str and len(tenant) <= _TENANT_LEN))
            and (method is None or (type(method) is str and len(method) <= _METHOD_LEN))
            and (route is None or (type(route) is str and len(route) <= _ROUTE_LEN))
            and type(provider) is str and len(provider) <= _PROVIDER_LEN
            and (model is None or (type(model) is str and len(model) <= _MODEL_LEN))
            and type(api) is str and len(api) <= _API_LEN
            and (tier is None or (type(tier) is str and len(tier) <= _TIER_LEN))):
        return None
    # One scan of all the text for what a column cannot hold (None reads "None": harmless).
    text = f"{rid}{request_id}{tenant}{method}{route}{provider}{model}{api}{tier}"
    if not text.isascii() or "\x00" in text:
        return None

    usage = record.usage
    if usage is None:
        inp = cached = writes = writes_5m = writes_1h = out = reasoning = searches = None
        audio_in = audio_out = reported = None
    else:
        inp, cached, out = usage.input_tokens, usage.cached_input_tokens, usage.output_tokens
        writes = usage.cache_write_input_tokens
        writes_5m, writes_1h = usage.cache_write_5m_input_tokens, usage.cache_write_1h_input_tokens
        reasoning, searches = usage.reasoning_tokens, usage.web_search_requests
        audio_in, audio_out = usage.input_audio_tokens, usage.output_audio_tokens
        reported = usage.reported_cost_usd
        # Token counts are never negative: one range check for all (a negative count,
        # which no provider reports, takes the full cleaning).
        if not (type(inp) is int and type(cached) is int and type(writes) is int
                and type(out) is int
                and (writes_5m is None or type(writes_5m) is int)
                and (writes_1h is None or type(writes_1h) is int)
                and (reasoning is None or type(reasoning) is int)
                and (searches is None or type(searches) is int)
                and (audio_in is None or type(audio_in) is int)
                and (audio_out is None or type(audio_out) is int)
                and 0 <= (inp | cached | writes | out | (writes_5m or 0) | (writes_1h or 0)
                          | (reasoning or 0) | (searches or 0) | (audio_in or 0)
                          | (audio_out or 0)) <= _TOKENS_MAX):
            return None
    status, version = record.status_code, record.price_version
    if not ((status is None
             or (type(status) is int and _STATUS_MIN <= status <= _STATUS_MAX))
            and (version is None
                 or (type(version) is int and _VERSION_MIN <= version <= _VERSION_MAX))):
        return None

    cost, latency, created = record.cost_usd, record.latency_ms, record.created_at
    if not ((cost is None or (type(cost) is Decimal and cost.is_finite()
                              and -MAX_USD <= cost <= MAX_USD))
            and (reported is None or (type(reported) is Decimal and reported.is_finite()
                                      and -MAX_USD <= reported <= MAX_USD))
            and (latency is None or type(latency) is float)
            and type(created) is datetime and created.tzinfo is UTC):
        return None

    streamed: bool | int
    partial: bool | int
    when: datetime | str
    stored_cost: Decimal | float | None
    stored_reported: Decimal | float | None
    cost_units: int | None
    reported_units: int | None
    if times is None:
        when = created
        streamed, partial = bool(record.streamed), bool(record.partial)
        stored_cost, cost_units = _NULLS if cost is None else _COST.exact_units(cost)
        stored_reported, reported_units = (
            _NULLS if reported is None else _REPORTED.exact_units(reported))
    else:
        when = times.text(created)
        streamed, partial = (1 if record.streamed else 0), (1 if record.partial else 0)
        stored_cost, cost_units = _NULLS if cost is None else _COST.real_units(cost)
        stored_reported, reported_units = (
            _NULLS if reported is None else _REPORTED.real_units(reported))
    return (rid, when, request_id, tenant, method, route, status, provider, model, api,
            streamed, partial, inp, cached, writes, writes_5m, writes_1h, out, reasoning,
            searches, stored_cost, stored_reported, version, latency, cost_units,
            reported_units, tier, audio_in, audio_out)


def _cleaned_row(record: CostRecord, times: _SQLiteTimes | None) -> tuple[Any, ...]:
    """The stored row of any record: :func:`_row_values`, then converted as in
    :func:`_fast_row`."""
    values = _row_values(record)
    for i, companion, money in _MONEY:
        if values[i] is not None:
            values[i], values[companion] = (
                money.exact_units(values[i]) if times is None else money.real_units(values[i]))
    if times is not None:
        values[_CREATED] = _sqlite_datetime(values[_CREATED])
        for i in _BOOLEANS:
            values[i] = int(values[i])
    return tuple(values)


def _sqlite_datetime(value: datetime) -> str:
    """A UTC datetime as SQLAlchemy's SQLite ``DATETIME`` stores it (a test compares): the
    first 26 characters, i.e. without the "+00:00" suffix."""
    return value.isoformat(" ", "microseconds")[:26]


class _SQLiteTimes:
    """:func:`_sqlite_datetime` of UTC datetimes, formatting each second only once.

    Formatting a whole datetime costs over a microsecond here, as much as all the checks
    of a row; a batch's records mostly fall in the same second.
    """

    def __init__(self) -> None:
        never = datetime.min.replace(tzinfo=UTC)
        # One tuple, swapped whole: threads writing at once each see a consistent second.
        self._second: tuple[datetime, datetime, str] = (never, never, "")

    def text(self, value: datetime) -> str:
        start, end, prefix = self._second
        if not start <= value < end:
            start = value.replace(microsecond=0)
            prefix = _sqlite_datetime(start)[:20]  # "YYYY-MM-DD HH:MM:SS."
            try:
                end = start + _SECOND
            except OverflowError:  # the last second of year 9999: not cached
                end = start
            self._second = (start, end, prefix)
        micros = value.microsecond
        return f"{prefix}{_DIGITS[micros // 1000]}{_DIGITS[micros % 1000]}"


#: "000" to "999": two look-ups format the microseconds at half the cost of ``:06d``.
_DIGITS = tuple(f"{i:03d}" for i in range(1000))


# -- stored rows back to records -----------------------------------------------------------

_r = cost_records.c
#: The columns :func:`record_from_row` reads: what pricing a stored record needs, and its
#: stored cost and price version (to tell what a re-pricing changed).
REPRICE_COLUMNS = (
    _r.record_id, _r.created_at, _r.provider, _r.api, _r.model, _r.input_tokens,
    _r.cached_input_tokens, _r.cache_write_input_tokens, _r.cache_write_5m_input_tokens,
    _r.cache_write_1h_input_tokens, _r.output_tokens, _r.reasoning_tokens,
    _r.web_search_requests, _r.cost_usd, _r.price_version, _r.service_tier,
    _r.audio_input_tokens, _r.audio_output_tokens,
)


def record_from_row(row: Row[*tuple[Any, ...]]) -> CostRecord:
    """The unpriced record of a row selected with :data:`REPRICE_COLUMNS`."""
    usage = None
    if row.input_tokens is not None:
        usage = Usage(
            input_tokens=row.input_tokens,
            output_tokens=row.output_tokens or 0,
            cached_input_tokens=row.cached_input_tokens or 0,
            cache_write_input_tokens=row.cache_write_input_tokens or 0,
            cache_write_5m_input_tokens=row.cache_write_5m_input_tokens,
            cache_write_1h_input_tokens=row.cache_write_1h_input_tokens,
            reasoning_tokens=row.reasoning_tokens,
            web_search_requests=row.web_search_requests,
            input_audio_tokens=row.audio_input_tokens,
            output_audio_tokens=row.audio_output_tokens,
        )
    return CostRecord(provider=row.provider, api=row.api, model=row.model, usage=usage,
                      record_id=row.record_id, created_at=_utc(row.created_at),
                      service_tier=row.service_tier)
