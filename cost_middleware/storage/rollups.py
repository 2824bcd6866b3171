"""Rollups: ``cost_rollups`` (hourly) and ``cost_rollups_daily`` kept equal to a GROUP BY of
``cost_records`` per (hour or day, provider, model, tenant, route), and the reads that use them.

Every writer of ``cost_records`` adds what it stored in the same transaction, so the rollups
never show a record the ledger lacks, or the reverse. Only rows actually inserted are added:
the SQLite sink sums its batch in Python when every record of it was new
(:func:`sqlite_sums`), and otherwise has SQL sum the rows whose rowid is above the table's
largest before the batch (it holds the write lock throughout, so nobody else's rows are
among them); on PostgreSQL a
statement-level trigger on ``cost_records`` sums the rows each INSERT or COPY inserted
(:func:`create_trigger`), so the sink's direct COPY needs no second statement. A record
already stored (a retry, a spool replay) is neither stored nor counted again. ``reprice``
takes each page's records out of their hours and days, changes them, and adds them back.
Every statement here is SQLAlchemy core: a value from a record is always a bound parameter
or a column, never SQL text. Every sum is exact and saturates at 2**63-1, which only absurd
records reach.

Reads split a period [since, until) at whole days and hours: the days inside it come from
the daily rollups, the hours of a partial day from the hourly ones, the partial hours at
either end from ``cost_records`` (its ``created_at`` index bounds that to at most two hours
of rows).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from operator import itemgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement, FromClause, Select

from cost_middleware.schema import (
    ROLLUP_NULL_BITS,
    ROLLUP_TOKENS,
    USD_SCALE,
    cost_records,
    cost_rollups,
    cost_rollups_daily,
)
from cost_middleware.utc import as_utc

#: What a report can total by: the rollups' key columns, and the two time buckets.
KEYS = ("provider", "model", "tenant", "route")
BUCKETS = ("day", "hour")
#: The rollup table of each time unit, finest first.
LEVELS = {"hour": cost_rollups, "day": cost_rollups_daily}
#: What each bucket truncates to, by dialect (constant SQL text: never a value from a record).
_TRUNC_TEXT = {"hour": 13, "day": 10}
_START_TEXT = {"hour": ":00:00.000000", "day": " 00:00:00.000000"}
_HOUR, _DAY = timedelta(hours=1), timedelta(days=1)
_r = cost_records.c
#: The summed columns of a rollup, in the order :func:`aggregate` selects them.
_SUMMED = ("requests", *ROLLUP_TOKENS, "unpriced", "no_usage", "cost_usd_pico")


# -- writing ------------------------------------------------------------------------------------


def start_of(when: ColumnElement[Any], unit: str, dialect: str) -> ColumnElement[Any]:
    """The start of the UTC hour or day (``unit``) a ``created_at`` falls in, as the dialect
    stores a ``DateTime``."""
    if dialect == "sqlite":
        return sa.type_coerce(_truncate(when, unit, dialect).concat(
            sa.literal_column(f"'{_START_TEXT[unit]}'")), sa.DateTime(timezone=True))
    return _truncate(when, unit, dialect)


def _truncate(when: ColumnElement[Any], unit: str, dialect: str) -> ColumnElement[Any]:
    if dialect == "sqlite":
        # SQLAlchemy's SQLite DATETIME text: "YYYY-MM-DD HH:MM:SS.ffffff", UTC.
        return sa.func.substr(when, sa.literal_column("1"),
                              sa.literal_column(str(_TRUNC_TEXT[unit])))
    # In UTC whatever the session's time zone (an hour is not a whole hour in every zone).
    return sa.func.date_trunc(sa.literal_column(f"'{unit}'"), when, sa.literal_column("'UTC'"),
                              type_=sa.DateTime(timezone=True))


def _dollars(pico: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    """The money column of a pico-dollar count, as :class:`~cost_middleware.schema.Dollars`
    stores it: the double nearest on SQLite, the exact NUMERIC on PostgreSQL."""
    if dialect == "sqlite":
        return pico / sa.literal_column(f"{10 ** USD_SCALE}.0")
    return sa.cast(pico, sa.Numeric()) * sa.literal_column(f"0.{'0' * (USD_SCALE - 1)}1")


def aggregate(source: FromClause, dialect: str, sign: int = 1,
              unit: str = "hour") -> Select[Any]:
    """The rollup rows per ``unit`` (of :data:`LEVELS`) of the records in ``source`` (anything
    with ``cost_records``' column names), each summed column times ``sign``: +1 adds the
    records, -1 takes them out. Every sum is exact, saturated at :data:`SUM_CAP` (only absurd
    records reach it)."""
    c = source.c
    nulls: ColumnElement[int] = sa.literal_column("0")
    keys: list[ColumnElement[Any]] = [start_of(c.created_at, unit, dialect), c.provider]
    for name, bit in ROLLUP_NULL_BITS.items():
        keys.append(sa.func.coalesce(c[name], sa.literal_column("''")))
        nulls = nulls + sa.case((c[name].is_(None), sa.literal_column(str(bit))),
                                else_=sa.literal_column("0"))
    keys.append(nulls)
    factor: ColumnElement[int] = sa.literal_column(str(int(sign)))
    count = sa.func.count()
    # PostgreSQL sums bigints in NUMERIC; SQLite's sum would fail on an overflow.
    summed = _split_sum if dialect == "sqlite" else _numeric_sum
    sums: list[ColumnElement[Any]] = [
        count * factor,
        *(_saturated(summed(c[name]), dialect) * factor for name in ROLLUP_TOKENS),
        # Counting the nulls as what count(column) leaves out: no per-row expression.
        (count - sa.func.count(c.cost_usd_pico)) * factor,
        (count - sa.func.count(c.input_tokens)) * factor,
        _saturated(summed(c.cost_usd_pico), dialect) * factor,
    ]
    pico = sums[-1]
    query = sa.select(*keys, *sums, _dollars(pico, dialect)).group_by(*keys)
    # SQLite: an upsert's SELECT needs a WHERE, or its ON CONFLICT parses as a join's ON.
    return query.where(sa.true()) if dialect == "sqlite" else query


#: The largest sum a rollup column holds (only absurd records reach it).
SUM_CAP = 2**63 - 1


#: SQLite sums a column exactly in two halves of this size, neither of which can overflow.
_HALF = 2**32


def _split_sum(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """SQLite: the exact sum of a column of 64-bit integers (null: 0), from :func:`_halves`;
    their combination overflows only into a REAL above the bound, which :func:`_saturated`
    brings back to it."""
    high, low = _halves(column)
    return high * sa.literal_column(str(_HALF)) + low


def _halves(column: ColumnElement[Any]) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    """SQLite: the sums of the high and of the low 32 bits of a column of 64-bit integers
    (null: 0), neither of which can overflow (its ``sum`` fails past a 64-bit integer)."""
    value = sa.func.coalesce(column, sa.literal_column("0"))
    half: ColumnElement[int] = sa.literal_column(str(_HALF))
    # SQLite's own integer "/" and "%" (both truncate, so high * half + low is the value):
    # SQLAlchemy's "/" would cast to REAL. Typed as plain integers: the sum of a companion
    # is a count of units, not dollars.
    return (sa.func.sum(value.op("/")(half), type_=sa.BigInteger()),
            sa.func.sum(value.op("%")(half), type_=sa.BigInteger()))


def _numeric_sum(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """PostgreSQL: the exact sum of a bigint column (null: 0), in NUMERIC."""
    return sa.func.coalesce(sa.func.sum(column), sa.literal_column("0"))


def _saturated(total: ColumnElement[Any], dialect: str) -> ColumnElement[Any]:
    """A sum kept within a 64-bit integer (only absurd records reach the bounds)."""
    # SQLite's min(a, b) and max(a, b).
    least, greatest = ((sa.func.min, sa.func.max) if dialect == "sqlite"
                       else (sa.func.least, sa.func.greatest))
    return least(greatest(total, sa.literal_column(str(-SUM_CAP))),
                 sa.literal_column(str(SUM_CAP)))


def _inserted(unit: str) -> tuple[str, ...]:
    """The columns :func:`aggregate` selects, in order, as the ``unit``'s table names them."""
    return (unit, *KEYS, "nulls", *_SUMMED, "cost_usd")


def upsert(rows: Select[Any] | None, dialect: str, unit: str = "hour") -> sa.Insert:
    """``INSERT`` the rollup rows of :func:`aggregate` (None: one row of parameters, every
    column of the ``unit``'s table in order) into the ``unit``'s table, adding them to the
    rows already there."""
    table = LEVELS[unit]
    names = _inserted(unit)
    insert = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(table)
    stmt = (insert.from_select(list(names), rows) if rows is not None
            else insert.values({c.name: sa.bindparam(c.name) for c in table.columns}))
    added = {name: _saturated_add(table.c[name], stmt.excluded[name], dialect)
             for name in _SUMMED}
    added["cost_usd"] = _dollars(added["cost_usd_pico"], dialect)
    return stmt.on_conflict_do_update(index_elements=[table.c[n] for n in names[:6]],
                                      set_=added)


def _saturated_add(stored: ColumnElement[Any], more: ColumnElement[Any],
                   dialect: str) -> ColumnElement[Any]:
    """``stored + more`` kept within a 64-bit integer."""
    if dialect == "sqlite":  # an integer sum past the bound becomes a REAL: saturate it
        return _saturated(stored + more, dialect)
    # PostgreSQL: bigint arithmetic, which fails past the bound, so the bound is checked
    # first (a cast to NUMERIC and back cost about 30 us a row here).
    cap: ColumnElement[int] = sa.literal_column(str(SUM_CAP))
    zero: ColumnElement[int] = sa.literal_column("0")
    return sa.case((sa.and_(more > zero, stored > cap - more), cap),
                   (sa.and_(more < zero, stored < -cap - more), -cap),
                   else_=stored + more)


def sqlite_added_since(dialect: sa.Dialect) -> list[str]:
    """SQLite: the statements (one per level) adding every ``cost_records`` row whose rowid is
    above their one parameter (the largest rowid before the batch), compiled for the sink's
    own connection: for a batch of which some records were stored already (see
    :func:`sqlite_sums` for the others)."""
    added = sa.select(cost_records).where(
        sa.literal_column("rowid") > sa.bindparam("before")).subquery()
    return [str(upsert(aggregate(added, "sqlite", unit=unit), "sqlite", unit)
                .compile(dialect=dialect)) for unit in LEVELS]


#: Where a row as the SQLite sink binds it (``cost_records``' columns in order, a datetime as
#: its text) keeps what :func:`sqlite_sums` reads.
_AT = cost_records.columns.keys().index("created_at")
_KEYS_OF = itemgetter(*(cost_records.columns.keys().index(n) for n in KEYS))
#: A row's summed values: its token counts, its cost (pico-dollars) and its input tokens.
_SUMMED_OF = itemgetter(*(cost_records.columns.keys().index(n)
                          for n in (*ROLLUP_TOKENS, "cost_usd_pico", "input_tokens")))
_NULL_BITS = tuple(ROLLUP_NULL_BITS[name] for name in KEYS[1:])


def sqlite_sums(rows: Iterable[Sequence[Any]]) -> dict[str, list[tuple[Any, ...]]]:
    """SQLite: the rollup rows of each level (of :data:`LEVELS`) that :func:`aggregate` would
    make of ``rows`` once stored, summed in Python, each in its table's column order (the
    parameters of :func:`sqlite_values_upsert`). ``rows`` are as the sink binds them.

    The sink sums a batch here when every record of it was new. SQLite's GROUP BY sorts
    the rows first, which took four times as long as these sums (docs/PERFORMANCE.md)."""
    by_hour: dict[tuple[Any, ...], list[Sequence[Any]]] = {}
    for row in rows:
        key = (row[_AT][:_TRUNC_TEXT["hour"]], *_KEYS_OF(row))
        group = by_hour.get(key)
        if group is None:
            by_hour[key] = [row]
        else:
            group.append(row)
    levels: dict[str, dict[tuple[Any, ...], list[int]]] = {unit: {} for unit in LEVELS}
    hours, days = levels["hour"], levels["day"]
    for key, group in by_hour.items():
        *tokens, picos, inputs = zip(*map(_SUMMED_OF, group), strict=True)
        hours[key] = sums = [len(group), *(sum(filter(None, counts)) for counts in tokens),
                             picos.count(None), inputs.count(None), sum(filter(None, picos))]
        day = (key[0][:_TRUNC_TEXT["day"]], *key[1:])
        found = days.get(day)
        days[day] = (sums.copy() if found is None
                     else [a + b for a, b in zip(found, sums, strict=True)])
    return {unit: [_rollup_row(unit, key, sums) for key, sums in totals.items()]
            for unit, totals in levels.items()}


def _rollup_row(unit: str, key: tuple[Any, ...], sums: list[int]) -> tuple[Any, ...]:
    start, provider, model, tenant, route = key
    nulls = ((model is None and _NULL_BITS[0]) + (tenant is None and _NULL_BITS[1])
             + (route is None and _NULL_BITS[2]))
    if not (min(sums) >= -SUM_CAP and max(sums) <= SUM_CAP):  # only absurd records
        sums = [min(max(total, -SUM_CAP), SUM_CAP) for total in sums]
    pico = sums[-1]
    # float(pico) / 1e12 is what SQLite's pico / 1000000000000.0 computes (see _dollars).
    return (start + _START_TEXT[unit], provider, model or "", tenant or "", route or "",
            nulls, *sums[:-1], float(pico) / 10**USD_SCALE, pico)


def sqlite_values_upsert(dialect: sa.Dialect, unit: str) -> tuple[str, str, str]:
    """SQLite: :func:`upsert` of rows of parameters (:func:`sqlite_sums`), compiled for the
    sink's connection and split into its head, one row's ``VALUES`` and its tail, so that
    the sink can send many rows in one statement."""
    compiled = upsert(None, "sqlite", unit).compile(dialect=dialect)
    table = LEVELS[unit]
    one = "(" + ", ".join("?" * len(table.columns)) + ")"
    text = str(compiled)
    if list(compiled.positiontup or ()) != table.columns.keys() or text.count(one) != 1:
        raise AssertionError("the rollup upsert must take one row of every column, in order")
    head, tail = text.split(one)
    return head, one, tail


#: PostgreSQL: the function and trigger that add every statement's inserted records to the
#: rollups (see :func:`create_trigger`).
TRIGGER = "cost_records_roll_up"


def create_trigger(conn: Connection) -> None:
    """PostgreSQL: make every INSERT or COPY into ``cost_records`` add the rows it inserted to
    the rollups, in its own statement (so in its transaction): an ``AFTER INSERT ... FOR EACH
    STATEMENT`` trigger whose transition table holds exactly those rows (not those an ``ON
    CONFLICT DO NOTHING`` skipped), summed by :func:`aggregate`. It kept the sink's direct
    COPY at 0.85x its rate without rollups here, against 0.68x for the same sums made in
    Python and sent by a second statement (see docs/PERFORMANCE.md)."""
    added = sa.table("added", *(sa.column(c.name) for c in cost_records.columns))
    adds = (upsert(aggregate(added, "postgresql", unit=unit), "postgresql", unit)
            for unit in LEVELS)
    body = "".join(f"{_constant(add, conn.dialect)};\n" for add in adds)
    table = conn.dialect.identifier_preparer.format_table(cost_records)
    # The function's search_path is the one the table was made under, so a session with
    # another one still adds to this ledger's rollups.
    conn.exec_driver_sql(
        f"CREATE OR REPLACE FUNCTION {TRIGGER}() RETURNS trigger LANGUAGE plpgsql "
        f"SET search_path FROM CURRENT AS $roll_up$\nBEGIN\n{body}RETURN NULL;\nEND\n$roll_up$")
    conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {TRIGGER} ON {table}")  # no OR REPLACE: 13
    conn.exec_driver_sql(
        f"CREATE TRIGGER {TRIGGER} AFTER INSERT ON {table} "
        f"REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION {TRIGGER}()")


def _constant(statement: sa.ClauseElement, dialect: sa.Dialect) -> str:
    compiled = statement.compile(dialect=dialect)
    if compiled.params:  # every constant is SQL text: nothing to bind
        raise AssertionError("a prepared rollup statement must not carry parameters")
    return str(compiled)


def change_records(conn: Connection, record_ids: Sequence[str], sign: int) -> None:
    """Add (``sign`` 1) or take out (-1) the stored records ``record_ids`` from their hours
    and days: around an update of them (``reprice``), in its transaction."""
    if not record_ids:
        return
    dialect = conn.dialect.name
    chosen = sa.select(cost_records).where(_r.record_id.in_(record_ids)).subquery()
    for unit in LEVELS:
        conn.execute(upsert(aggregate(chosen, dialect, sign, unit), dialect, unit))


def rebuild(conn: Connection, since: datetime | None = None) -> int:
    """Make the rollups of every level from ``since``'s hour (its day, for the daily ones) on
    (every hour: None) anew from ``cost_records``, in the caller's transaction; returns the
    hourly rollup rows written.

    The caller holds the ledger's write lock, or the hours it rebuilds can miss a batch that a
    writer commits meanwhile (see :func:`lock_ledger`).
    """
    dialect = conn.dialect.name
    written = {}
    for unit, table in LEVELS.items():
        drop = sa.delete(table)
        rows = sa.select(cost_records)
        if since is not None:
            start = _floor(since, unit)
            drop = drop.where(table.c[unit] >= start)
            rows = rows.where(_r.created_at >= start)
        conn.execute(drop)
        made = aggregate(rows.subquery(), dialect, unit=unit)
        result = conn.execute(sa.insert(table).from_select(list(_inserted(unit)), made))
        written[unit] = int(result.rowcount)
    return written["hour"]


def lock_ledger(conn: Connection) -> None:
    """Hold off every writer of ``cost_records`` until this transaction ends (a rebuild)."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        table = conn.dialect.identifier_preparer.format_table(cost_records)
        conn.exec_driver_sql(f"LOCK TABLE {table} IN SHARE MODE")


# -- reading ------------------------------------------------------------------------------------


def hour_floor(when: datetime) -> datetime:
    """The start of ``when``'s UTC hour."""
    return _floor(when, "hour")


def _floor(when: datetime, unit: str) -> datetime:
    start = as_utc(when).replace(minute=0, second=0, microsecond=0)
    return start.replace(hour=0) if unit == "day" else start


def _ceiling(when: datetime, unit: str) -> datetime:
    start = _floor(when, unit)
    return start if start == as_utc(when) else start + (_DAY if unit == "day" else _HOUR)


@dataclass(slots=True)
class Totals:
    """What a group of records adds up to. ``cost_pico`` sums the priced records only."""

    requests: int = 0
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROLLUP_TOKENS, 0))
    unpriced: int = 0
    no_usage: int = 0
    cost_pico: int = 0

    def add(self, other: Totals) -> None:
        self.requests += other.requests
        for name, count in other.tokens.items():
            self.tokens[name] += count
        self.unpriced += other.unpriced
        self.no_usage += other.no_usage
        self.cost_pico += other.cost_pico

    @property
    def cost_usd(self) -> Decimal | None:
        """The exact cost of the priced records; None when no record is priced (unknown)."""
        if self.requests and self.unpriced == self.requests:
            return None
        return _usd(self.cost_pico)


@dataclass(frozen=True, slots=True)
class Filters:
    """Only records whose column equals the value (None: any)."""

    provider: str | None = None
    model: str | None = None
    tenant: str | None = None
    route: str | None = None


#: A group's key: its value of each key column (None: null), then its bucket's start (UTC).
Key = tuple[Any, ...]


def totals(conn: Connection, keys: Sequence[str], bucket: str | None = None,
           since: datetime | None = None, until: datetime | None = None,
           filters: Filters = Filters()) -> tuple[dict[Key, Totals], str]:
    """Totals of the records in [since, until) (None: unbounded) matching ``filters``, per
    value of ``keys`` (of :data:`KEYS`) and, with ``bucket`` (of :data:`BUCKETS`), per day or
    hour; and where they came from: "rollups", "records" or "rollups+records".

    Exact: the whole days inside the period come from the daily rollups, the whole hours
    of a partial day from the hourly ones, the partial hours at its ends from the records.
    A key's value is None where the records had none; a bucket is the aware UTC datetime it
    starts at.
    """
    for name in keys:
        if name not in KEYS:
            raise ValueError(f"cannot total by {name!r}: one of {', '.join(KEYS)}")
    if bucket is not None and bucket not in BUCKETS:
        raise ValueError(f"cannot total by {bucket!r}: one of {', '.join(BUCKETS)}")
    since = None if since is None else as_utc(since)
    until = None if until is None else as_utc(until)
    result: dict[Key, Totals] = {}
    if since is not None and until is not None and since >= until:
        return result, "records"
    dialect = conn.dialect.name
    parts: list[Select[Any]] = []
    rest = _rolled_up(conn, keys, bucket, since, until, filters, parts)
    sources = ["rollups"] if parts else []
    for start, end in rest:
        parts.append(_from_records(conn, keys, bucket, start, end, filters))
    if rest:
        sources.append("records")
    for query in parts:
        for row in conn.execute(query):
            found = _totals_of(row[-len(_SUMMED) * _parts(dialect):], dialect)
            if not found.requests:
                continue  # no row matched (an aggregate without GROUP BY still returns one)
            key = tuple(row[:len(keys)])
            if bucket is not None:
                key += (_bucket(row[len(keys)]),)
            if key in result:
                result[key].add(found)
            else:
                result[key] = found
    return result, "+".join(sources)


#: A period [start, end), None: unbounded.
Period = tuple[datetime | None, datetime | None]


def _rolled_up(conn: Connection, keys: Sequence[str], bucket: str | None,
               since: datetime | None, until: datetime | None, filters: Filters,
               parts: list[Select[Any]]) -> list[Period]:
    """Add to ``parts`` the queries of the coarsest rollups that cover whole units of
    [since, until): whole days from the daily rollups (unless ``bucket`` is "hour"), the
    rest's whole hours from the hourly ones. Returns the pieces left (partial hours), for
    the records."""
    units = ("hour",) if bucket == "hour" else ("day", "hour")
    pending: list[Period] = [(since, until)]
    for unit in units:
        left: list[Period] = []
        for start, end in pending:
            inner_start = None if start is None else _ceiling(start, unit)
            inner_end = None if end is None else _floor(end, unit)
            if inner_start is not None and inner_end is not None and inner_start >= inner_end:
                left.append((start, end))  # no whole unit inside
                continue
            parts.append(_from_rollups(conn, unit, keys, bucket, inner_start, inner_end,
                                       filters))
            if start != inner_start:
                left.append((start, inner_start))
            if end != inner_end:
                left.append((inner_end, end))
        pending = left
    return pending


def spend(conn: Connection, scope: str, subject: str | None, since: datetime | None,
          until: datetime | None) -> Decimal:
    """The exact cost (USD) of the records in [since, until) whose ``scope`` column (of
    :data:`KEYS`) is ``subject``; ``scope`` "all": every record (``subject`` ignored).
    Unpriced records add nothing."""
    filters = Filters() if scope == "all" else Filters(**{_scope(scope): subject})
    found, _ = totals(conn, (), None, since, until, filters)
    return _usd(sum(t.cost_pico for t in found.values()))


def spend_by(conn: Connection, scope: str, since: datetime | None,
             until: datetime | None) -> dict[str | None, Decimal]:
    """:func:`spend` of every value of ``scope`` (of :data:`KEYS`) at once."""
    found, _ = totals(conn, (_scope(scope),), None, since, until)
    return {key[0]: _usd(t.cost_pico) for key, t in found.items()}


def _usd(pico: int) -> Decimal:
    return Decimal(pico).scaleb(-USD_SCALE) if pico else Decimal(0)


def _scope(scope: str) -> str:
    if scope not in KEYS:
        raise ValueError(f"unknown scope {scope!r}: one of {', '.join(KEYS)} or all")
    return scope


def _bucket(value: Any) -> datetime:
    if isinstance(value, str):  # SQLite's day: "YYYY-MM-DD"
        value = datetime.fromisoformat(value)
    return as_utc(value)


def _totals_of(values: Sequence[Any], dialect: str) -> Totals:
    """The totals of a row's :func:`_sums` (read in their order)."""
    if _parts(dialect) == 2:
        values = [int(high or 0) * _HALF + int(low or 0)
                  for high, low in zip(values[::2], values[1::2], strict=True)]
    requests, *rest = (int(v or 0) for v in values)
    tokens = dict(zip(ROLLUP_TOKENS, rest[:len(ROLLUP_TOKENS)], strict=True))
    unpriced, no_usage, pico = rest[len(ROLLUP_TOKENS):]
    return Totals(requests, tokens, unpriced, no_usage, pico)


def _from_rollups(conn: Connection, unit: str, keys: Sequence[str], bucket: str | None,
                  start: datetime | None, end: datetime | None,
                  filters: Filters) -> Select[Any]:
    dialect = conn.dialect.name
    u = LEVELS[unit].c
    columns: list[ColumnElement[Any]] = [_rolled_key(u, name) for name in keys]
    if bucket is not None:
        columns.append(u[unit] if bucket == unit else _truncate(u[unit], bucket, dialect))
    query = sa.select(*columns, *_sums([u[name] for name in _SUMMED], dialect))
    if start is not None:
        query = query.where(u[unit] >= start)
    if end is not None:
        query = query.where(u[unit] < end)
    for name, value in _given(filters):
        query = query.where(u[name] == value)
        if name in ROLLUP_NULL_BITS:
            query = query.where(u.nulls.op("&")(ROLLUP_NULL_BITS[name]) == 0)
    return query.group_by(*columns) if columns else query


def _rolled_key(u: Any, name: str) -> ColumnElement[Any]:
    """A key column of the rollups as the records had it: null where they had null."""
    if name not in ROLLUP_NULL_BITS:
        return u[name]  # type: ignore[no-any-return]
    bit: ColumnElement[int] = sa.literal_column(str(ROLLUP_NULL_BITS[name]))
    return sa.case((u.nulls.op("&")(bit) != 0, sa.null()), else_=u[name])


def _from_records(conn: Connection, keys: Sequence[str], bucket: str | None,
                  start: datetime | None, end: datetime | None,
                  filters: Filters) -> Select[Any]:
    dialect = conn.dialect.name
    columns: list[ColumnElement[Any]] = [_r[name] for name in keys]
    if bucket is not None:
        columns.append(_truncate(_r.created_at, bucket, dialect))
    zero: ColumnElement[int] = sa.literal_column("0")
    one: ColumnElement[int] = sa.literal_column("1")
    summed = [one, *(_r[name] for name in ROLLUP_TOKENS),
              sa.case((_r.cost_usd_pico.is_(None), one), else_=zero),
              sa.case((_r.input_tokens.is_(None), one), else_=zero), _r.cost_usd_pico]
    query = sa.select(*columns, *_sums(summed, dialect))
    # As UTC: SQLite compares the stored UTC text, so another offset would shift it.
    if start is not None:
        query = query.where(_r.created_at >= start)
    if end is not None:
        query = query.where(_r.created_at < end)
    for name, value in _given(filters):
        query = query.where(_r[name] == value)
    return query.group_by(*columns) if columns else query


def _sums(columns: Sequence[ColumnElement[Any]], dialect: str) -> list[ColumnElement[Any]]:
    """Exact sums of ``columns`` (null: 0), read back by :func:`_totals_of`: PostgreSQL's in
    NUMERIC; SQLite's as :func:`_halves`, combined in Python (a few absurd records pass a
    64-bit integer)."""
    if _parts(dialect) == 1:
        # Typed as plain integers: the sum of a companion is a count of units, not dollars.
        return [sa.func.sum(column, type_=sa.BigInteger()) for column in columns]
    return [half for column in columns for half in _halves(column)]


def _parts(dialect: str) -> int:
    """How many columns :func:`_sums` reads per sum."""
    return 2 if dialect == "sqlite" else 1


def _given(filters: Filters) -> Iterable[tuple[str, str]]:
    for name in KEYS:
        value = getattr(filters, name)
        if value is not None:
            yield name, value
