"""Where records end up: the ``Sink`` protocol, the SQL sink and an in-memory sink.

The SQL sink keeps one writer connection per process, taken from the engine's pool and
detached from it, so the pool can neither reset it under us nor hand it to a forked child.
SQLite gets ``INSERT ... ON CONFLICT (record_id) DO NOTHING`` statements of many rows each,
in one transaction per batch. PostgreSQL gets a binary ``COPY`` (several times faster than
an executemany there): straight into the table, or, when a batch holds records already
stored, into a temporary staging table followed by ``INSERT ... SELECT ... ON CONFLICT DO
NOTHING``. Either way a record already stored is ignored, which is what makes retries and
spool replays safe, and a batch is committed before ``write`` returns.

Rows are built in one pass per record, checked and converted to what the driver binds; only
a record with a value no column can hold (rare: our extractors build valid values) goes
through the full cleaning.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from itertools import chain
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.pool import StaticPool

from cost_middleware import config
from cost_middleware.config import ConfigError
from cost_middleware.records import CostRecord, utcnow
from cost_middleware.schema import ExactDecimal, cost_records, metadata

log = logging.getLogger("cost_middleware")

#: How long a SQLite writer waits for another process's write lock.
SQLITE_BUSY_TIMEOUT_MS = 5_000
#: PostgreSQL: fail a connect, or a write the network stopped acknowledging, instead of
#: hanging for the kernel's default TCP timeout (minutes): the batcher then spools.
PG_CONNECT_TIMEOUT_S = 5
PG_TCP_USER_TIMEOUT_MS = 10_000
#: The writer session's bound on one statement (e.g. waiting behind a migration's lock).
PG_STATEMENT_TIMEOUT_MS = 60_000
#: A cost no backend can store is recorded as unpriced (null) instead of failing the batch.
#: SQLite keeps pico-dollars in a signed 64-bit integer (about 9.22e6 USD).
MAX_USD = Decimal(9_000_000)

_COLUMNS = tuple(c.name for c in cost_records.columns)
_STAGE = "cost_records_stage"
_SUPPORTED = (("sqlite", "pysqlite"), ("postgresql", "psycopg"))
#: The most rows one SQLite INSERT carries (fewer when the library's variable limit is lower:
#: 999 before SQLite 3.32). Each statement releases the GIL once, and under load every release
#: means waiting to win it back from the request threads: a batch of 500 is now 6 statements
#: (it was 20 of 25 rows), and the rest of a partial batch no longer goes row by row.
_MAX_ROWS_PER_INSERT = 256
#: Connections a forked child inherited: never used or closed here (the socket and the
#: SQLite locks belong to the parent), only kept so their finalizers never run in the child.
_INHERITED: list[Any] = []


class Sink(Protocol):
    """Stores batches of records."""

    def write(self, records: Sequence[CostRecord]) -> int:
        """Store ``records``; return how many were new (a known ``record_id`` is ignored).

        Raises on failure; the caller retries or spools the whole batch.
        """
        ...

    def close(self) -> None: ...


# -- engine and schema -------------------------------------------------------------------


def make_engine(url: str) -> sa.Engine:
    """An engine tuned for the ledger. Creates nothing in the database.

    SQLite: WAL, ``synchronous=NORMAL``, a busy timeout, usable from any thread.
    PostgreSQL: the psycopg 3 driver (``postgresql://`` means it), ``pool_pre_ping``,
    connect and TCP timeouts. Either way, a pooled connection inherited across ``fork`` is
    discarded at checkout instead of being shared with the parent.
    """
    parsed = sa.make_url(url)
    safe = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    if backend in ("postgres", "postgresql"):
        if parsed.drivername in ("postgres", "postgresql"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        if parsed.get_driver_name() != "psycopg":
            raise ConfigError(config.DATABASE_URL, safe,
                              "PostgreSQL needs the psycopg 3 driver: postgresql+psycopg://")
        defaults = {"connect_timeout": PG_CONNECT_TIMEOUT_S,
                    "tcp_user_timeout": PG_TCP_USER_TIMEOUT_MS}
        connect_args = {k: v for k, v in defaults.items() if k not in parsed.query}
        engine = sa.create_engine(parsed, pool_pre_ping=True, hide_parameters=True,
                                  connect_args=connect_args)
    elif backend == "sqlite":
        if parsed.get_driver_name() != "pysqlite":
            raise ConfigError(config.DATABASE_URL, safe, "SQLite needs the default driver: sqlite://")
        in_memory = parsed.database in (None, "", ":memory:")
        # An in-memory database exists once per connection: share one, or records vanish.
        engine = sa.create_engine(parsed, hide_parameters=True,
                                  connect_args={"check_same_thread": False},
                                  **({"poolclass": StaticPool} if in_memory else {}))
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        raise ConfigError(config.DATABASE_URL, safe, "only SQLite and PostgreSQL are supported")
    event.listen(engine, "connect", _remember_pid)
    event.listen(engine, "checkout", _refuse_inherited)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS:d}")
    finally:
        cursor.close()


def _remember_pid(_dbapi_connection: Any, record: Any) -> None:
    record.info["pid"] = os.getpid()


def _refuse_inherited(_dbapi_connection: Any, record: Any, proxy: Any) -> None:
    # SQLAlchemy's documented recipe for pools that cross os.fork().
    if record.info.get("pid") != os.getpid():
        record.dbapi_connection = proxy.dbapi_connection = None
        raise exc.DisconnectionError("connection was opened by the parent process")


def ensure_schema(engine: sa.Engine) -> None:
    """Create the tables that are missing; safe when several processes start at once.

    Two processes can both see a table missing and both create it: the loser gets an
    "already exists" error, retries, and then finds the table.
    """
    attempts = 5
    for attempt in range(attempts):
        try:
            metadata.create_all(engine)
            return
        except exc.DBAPIError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


# -- records to rows ---------------------------------------------------------------------


def record_row(record: CostRecord) -> dict[str, Any]:
    """The ``cost_records`` row of one record (column name to value).

    Every value is made storable on every backend: text is cut to its column's length and
    cleared of NUL and unpaired surrogates, integers are clamped to their column's range,
    money that cannot be stored becomes null (unpriced), datetimes become aware UTC. A row
    a backend refuses would fail its whole batch on every retry, so none may be built.
    """
    return dict(zip(_COLUMNS, _row_values(record), strict=True))


def _row_values(record: CostRecord) -> list[Any]:
    """:func:`record_row`'s values in ``_COLUMNS`` order (the full cleaning)."""
    usage = record.usage
    if usage is None:
        tokens: tuple[Any, ...] = _NO_TOKENS
        reported = None
    else:
        tokens = (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_input_tokens,
                  usage.cache_write_5m_input_tokens, usage.cache_write_1h_input_tokens,
                  usage.output_tokens, usage.reasoning_tokens, usage.web_search_requests)
        reported = usage.reported_cost_usd
    values = [
        record.record_id, _utc(record.created_at), record.request_id, record.tenant,
        record.method, record.route, record.status_code, record.provider, record.model,
        record.api, bool(record.streamed), bool(record.partial), *tokens,
        record.cost_usd, reported, record.price_version, record.latency_ms,
    ]
    for i, limit, required in _TEXT_CHECKS:
        v = values[i]
        if v is None:
            if required:
                values[i] = ""
        elif not (type(v) is str and len(v) <= limit and v.isascii() and "\x00" not in v):
            values[i] = _clean_text(v, limit)
    for i, bound in _INT_CHECKS:
        v = values[i]
        if v is not None and not (type(v) is int and -bound - 1 <= v <= bound):
            values[i] = _clean_int(v, bound)
    for i, _money in _MONEY:
        v = values[i]
        if v is not None and not (type(v) is Decimal and v.is_finite()
                                  and -MAX_USD <= v <= MAX_USD):
            values[i] = _clean_money(v, record.record_id, _COLUMNS[i])
    v = values[_LATENCY]
    if v is not None and type(v) is not float:
        values[_LATENCY] = _clean_float(v)
    return values


_NO_TOKENS = (None,) * 8
#: The order the row builders use; a test checks it is the table's column order.
_ROW_ORDER = (
    "record_id", "created_at", "request_id", "tenant", "method", "route", "status_code",
    "provider", "model", "api", "streamed", "partial", "input_tokens", "cached_input_tokens",
    "cache_write_input_tokens", "cache_write_5m_input_tokens", "cache_write_1h_input_tokens",
    "output_tokens", "reasoning_tokens", "web_search_requests", "cost_usd", "reported_cost_usd",
    "price_version", "latency_ms",
)
_TEXT_CHECKS = tuple(
    (i, c.type.length, not c.nullable) for i, c in enumerate(cost_records.columns)
    if isinstance(c.type, sa.String) and c.type.length
)
_INT_CHECKS = tuple(
    (i, 2**63 - 1 if isinstance(c.type, sa.BigInteger) else 2**31 - 1)
    for i, c in enumerate(cost_records.columns) if isinstance(c.type, sa.Integer)
)
_MONEY = tuple((i, kind) for i, kind in enumerate(c.type for c in cost_records.columns)
               if isinstance(kind, ExactDecimal))
_CREATED = _COLUMNS.index("created_at")
_BOOLEANS = tuple(i for i, c in enumerate(cost_records.columns) if isinstance(c.type, sa.Boolean))
_LATENCY = _COLUMNS.index("latency_ms")


def _clean_text(value: object, limit: int) -> str:
    text = value if isinstance(value, str) else str(value)
    # PostgreSQL refuses NUL in text, and UTF-8 has no unpaired surrogates.
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")[:limit]


def _clean_int(value: object, bound: int) -> int | None:
    try:
        number: int = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return None
    return max(-bound - 1, min(bound, number))


def _clean_float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None


def _clean_money(value: object, record_id: object, column: str) -> Decimal | None:
    try:
        amount = Decimal(str(value))
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
    tz = value.tzinfo
    if tz is UTC:
        return value
    if tz is None:  # naive means UTC throughout this package
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # before 0001-01-01 or after 9999 in UTC: no datetime holds it
        return utcnow()


# -- rows as the drivers take them -------------------------------------------------------
#
# The sink stores each value in the form SQLAlchemy would bind it (a test compares): on
# SQLite, money as integer units (ExactDecimal), datetimes as SQLAlchemy's DATETIME text,
# booleans as 0/1; on PostgreSQL, money rounded to the column's scale. Most records need no
# cleaning at all (our extractors build valid values), so :func:`_fast_row` checks and
# converts them in one pass; a record it refuses goes through :func:`_row_values`.

_MAX_LEN = {_COLUMNS[i]: limit for i, limit, _required in _TEXT_CHECKS}
_RECORD_ID_LEN, _REQUEST_ID_LEN = _MAX_LEN["record_id"], _MAX_LEN["request_id"]
_TENANT_LEN, _METHOD_LEN, _ROUTE_LEN = _MAX_LEN["tenant"], _MAX_LEN["method"], _MAX_LEN["route"]
_PROVIDER_LEN, _MODEL_LEN, _API_LEN = _MAX_LEN["provider"], _MAX_LEN["model"], _MAX_LEN["api"]
_BIG_MIN, _BIG_MAX = -(2**63), 2**63 - 1
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
(_, _COST), (_, _REPORTED) = _MONEY  # cost_usd, reported_cost_usd
_SECOND = timedelta(seconds=1)


def _fast_row(record: CostRecord, times: _SQLiteTimes | None) -> tuple[Any, ...] | None:
    """The stored row of a record none of whose values needs cleaning, or None.

    Accepts only what :func:`_row_values` would keep unchanged (plain ``str``, ``int``,
    ``Decimal``, ``float``, UTC ``datetime`` values within their columns' limits), and
    converts for SQLite when ``times`` is given, for PostgreSQL otherwise. A test checks
    that both paths give the same row.
    """
    rid, request_id, tenant = record.record_id, record.request_id, record.tenant
    method, route, provider = record.method, record.route, record.provider
    model, api = record.model, record.api
    if not (type(rid) is str and len(rid) <= _RECORD_ID_LEN
            and (request_id is None
                 or (type(request_id) is str and len(request_id) <= _REQUEST_ID_LEN))
            and (tenant is None or (type(tenant) is str and len(tenant) <= _TENANT_LEN))
            and (method is None or (type(method) is str and len(method) <= _METHOD_LEN))
            and (route is None or (type(route) is str and len(route) <= _ROUTE_LEN))
            and type(provider) is str and len(provider) <= _PROVIDER_LEN
            and (model is None or (type(model) is str and len(model) <= _MODEL_LEN))
            and type(api) is str and len(api) <= _API_LEN):
        return None
    # One scan of all the text for what a column cannot hold (None reads "None": harmless).
    text = f"{rid}{request_id}{tenant}{method}{route}{provider}{model}{api}"
    if not text.isascii() or "\x00" in text:
        return None

    usage = record.usage
    if usage is None:
        inp = cached = writes = writes_5m = writes_1h = out = reasoning = searches = None
        reported = None
    else:
        inp, cached, out = usage.input_tokens, usage.cached_input_tokens, usage.output_tokens
        writes = usage.cache_write_input_tokens
        writes_5m, writes_1h = usage.cache_write_5m_input_tokens, usage.cache_write_1h_input_tokens
        reasoning, searches = usage.reasoning_tokens, usage.web_search_requests
        reported = usage.reported_cost_usd
        # Token counts are never negative, and the OR of non-negative ints fits in a
        # BIGINT exactly when each does: one range check for all (a negative count, which
        # no provider reports, takes the full cleaning).
        if not (type(inp) is int and type(cached) is int and type(writes) is int
                and type(out) is int
                and (writes_5m is None or type(writes_5m) is int)
                and (writes_1h is None or type(writes_1h) is int)
                and (reasoning is None or type(reasoning) is int)
                and (searches is None or type(searches) is int)
                and 0 <= (inp | cached | writes | out | (writes_5m or 0) | (writes_1h or 0)
                          | (reasoning or 0) | (searches or 0)) <= _BIG_MAX):
            return None
    status, version = record.status_code, record.price_version
    if not ((status is None or (type(status) is int and _INT_MIN <= status <= _INT_MAX))
            and (version is None
                 or (type(version) is int and _BIG_MIN <= version <= _BIG_MAX))):
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
    stored_cost: Decimal | int | None
    stored_reported: Decimal | int | None
    if times is None:
        when = created
        streamed, partial = bool(record.streamed), bool(record.partial)
        stored_cost = None if cost is None else _COST.exact(cost)
        stored_reported = None if reported is None else _REPORTED.exact(reported)
    else:
        when = times.text(created)
        streamed, partial = (1 if record.streamed else 0), (1 if record.partial else 0)
        stored_cost = None if cost is None else _COST.units(cost)
        stored_reported = None if reported is None else _REPORTED.units(reported)
    return (rid, when, request_id, tenant, method, route, status, provider, model, api,
            streamed, partial, inp, cached, writes, writes_5m, writes_1h, out, reasoning,
            searches, stored_cost, stored_reported, version, latency)


def _cleaned_row(record: CostRecord, times: _SQLiteTimes | None) -> tuple[Any, ...]:
    """The stored row of any record: :func:`_row_values`, then converted as in
    :func:`_fast_row`."""
    values = _row_values(record)
    for i, money in _MONEY:
        if values[i] is not None:
            values[i] = money.exact(values[i]) if times is None else money.units(values[i])
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


# -- sinks -------------------------------------------------------------------------------


class SQLSink:
    """Writes batches into ``cost_records`` over one long-lived connection per process.

    PostgreSQL: the connection is in autocommit mode, so a binary COPY straight into the
    table is one statement, one round trip and its own transaction, committed (or, on a
    duplicate, rolled back) before it returns. When the batch holds a record already stored
    (a retry or a replay), the batch goes through a temporary staging table and
    ``INSERT ... ON CONFLICT DO NOTHING`` in one transaction, which stays the path while
    batches keep carrying duplicates.
    """

    def __init__(self, engine: sa.Engine) -> None:
        dialect = engine.dialect
        if (dialect.name, dialect.driver) not in _SUPPORTED:
            raise ConfigError(config.DATABASE_URL,
                              engine.url.render_as_string(hide_password=True),
                              "needs sqlite:// or postgresql+psycopg:// (use make_engine)")
        self._engine = engine
        self._copy = dialect.name == "postgresql"
        self._times = None if self._copy else _SQLiteTimes()
        quote = dialect.identifier_preparer.quote
        table = quote(cost_records.name)
        names = ", ".join(quote(c) for c in _COLUMNS)
        self._copy_direct = f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)"
        self._stage_create = (f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} "
                              f"(LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
        self._copy_staged = f"COPY {_STAGE} ({names}) FROM STDIN (FORMAT BINARY)"
        self._insert_staged = (f"INSERT INTO {table} ({names}) SELECT {names} FROM {_STAGE} "
                               f"ON CONFLICT ({quote('record_id')}) DO NOTHING")
        # SQLite: multi-row INSERTs of power-of-two sizes, so any batch is a few statements
        # (500 rows: 256 + 128 + 64 + 32 + 16 + 4) that SQLite's statement cache keeps.
        values = "(" + ", ".join("?" * len(_COLUMNS)) + ")"
        self._insert_head = f"INSERT INTO {table} ({names}) VALUES "
        self._insert_values = values
        self._insert_tail = f" ON CONFLICT ({quote('record_id')}) DO NOTHING"
        #: (rows, statement) by decreasing size, made at the first write (the connection
        #: tells the library's variable limit).
        self._inserts: tuple[tuple[int, str], ...] = ()
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._fairy: Any = None  # the pool's proxy of our connection, detached
        self._conn: Any = None  # the DBAPI connection inside it
        self._copy_types: list[int] | None = None
        self._staged = False  # recent batches carried duplicates: skip the direct COPY

    def write(self, records: Sequence[CostRecord]) -> int:
        if not records:
            return 0
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            conn = self._connection()
            try:
                if self._copy:
                    return self._copy_rows(conn, records)
                return self._insert_rows(conn, self._rows(records))
            except BaseException:
                # The connection's state is unknown after a failure: start a fresh one.
                self._discard()
                raise

    def close(self) -> None:
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            self._discard()

    def _rows(self, records: Sequence[CostRecord]) -> Iterator[tuple[Any, ...]]:
        times = self._times
        # A row is a non-empty tuple, so `or` falls back only when the fast path refused.
        return (_fast_row(r, times) or _cleaned_row(r, times) for r in records)

    def _connection(self) -> Any:
        if self._conn is None:
            fairy = self._engine.raw_connection()
            conn: Any = fairy.driver_connection
            if not isinstance(self._engine.pool, StaticPool):
                fairy.detach()  # ours alone from now on; a static pool has only this one
            if self._copy:
                conn.autocommit = True  # detached: the pool never sees this connection again
            self._fairy, self._conn = fairy, conn
        return self._conn

    def _discard(self) -> None:
        fairy, self._fairy, self._conn, self._copy_types = self._fairy, None, None, None
        if fairy is not None:
            try:
                fairy.close()
            except Exception as error:  # already broken: nothing more to release
                log.debug("cost_middleware: closing a failed connection: %s", type(error).__name__)

    def _after_fork(self) -> None:
        if self._fairy is not None:
            _INHERITED.append(self._fairy)
        self._fairy = self._conn = self._copy_types = None
        self._lock = threading.Lock()  # the parent's may have been held at fork time
        self._pid = os.getpid()

    def _insert_rows(self, conn: Any, built: Iterator[tuple[Any, ...]]) -> int:
        rows = list(built)
        if not self._inserts:
            self._inserts = self._insert_statements(conn)
        inserted = done = 0
        flat = chain.from_iterable
        cursor = conn.cursor()
        try:
            for size, sql in self._inserts:
                end = done + (len(rows) - done) // size * size
                if end == done:
                    continue
                cursor.executemany(sql, (tuple(flat(rows[i:i + size]))
                                         for i in range(done, end, size)))
                inserted += cursor.rowcount
                done = end
        finally:
            cursor.close()
        conn.commit()
        return inserted

    def _insert_statements(self, conn: Any) -> tuple[tuple[int, str], ...]:
        fits = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(_COLUMNS)
        largest = min(_MAX_ROWS_PER_INSERT, 1 << (max(1, fits).bit_length() - 1))
        return tuple(
            (size, self._insert_head + ", ".join([self._insert_values] * size)
             + self._insert_tail)
            for size in (1 << i for i in reversed(range(largest.bit_length())))
        )

    def _copy_rows(self, conn: Any, records: Sequence[CostRecord]) -> int:
        from psycopg import errors

        with conn.cursor() as cursor:
            if self._copy_types is None:
                self._prepare_copy(cursor)
            if not self._staged:
                try:
                    self._copy_into(cursor, self._copy_direct, records)
                    return len(records)
                except errors.UniqueViolation:
                    self._staged = True  # the server rolled the COPY back
            with conn.transaction():
                self._copy_into(cursor, self._copy_staged, records)
                cursor.execute(self._insert_staged)
                inserted = int(cursor.rowcount)
        self._staged = inserted < len(records)
        return inserted

    def _prepare_copy(self, cursor: Any) -> None:
        """Set up a new session: a bound on how long a write may wait (a lock held by a
        migration, say) before it fails and is spooled, the staging table, and the column
        types COPY sends."""
        cursor.execute("SELECT set_config('statement_timeout', %s, false)",
                       (f"{PG_STATEMENT_TIMEOUT_MS}ms",))
        cursor.execute(self._stage_create)
        cursor.execute(
            "SELECT attname, atttypid FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (f"pg_temp.{_STAGE}",),
        )
        oids = dict(cursor.fetchall())
        self._copy_types = [int(oids[name]) for name in _COLUMNS]

    def _copy_into(self, cursor: Any, sql: str, records: Sequence[CostRecord]) -> None:
        # Rows are built as they are sent: the server inserts the first ones while the
        # rest are built (the driver sends every 32 kB).
        with cursor.copy(sql) as copy:
            copy.set_types(self._copy_types)
            write_row = copy.write_row
            for row in self._rows(records):
                write_row(row)


class MemorySink:
    """Keeps records in a list (tests, demos); same duplicate rule as the SQL sink."""

    def __init__(self) -> None:
        self.records: list[CostRecord] = []
        self.closed = False
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def write(self, records: Sequence[CostRecord]) -> int:
        inserted = 0
        with self._lock:
            for record in records:
                if record.record_id not in self._ids:
                    self._ids.add(record.record_id)
                    self.records.append(record)
                    inserted += 1
        return inserted

    def close(self) -> None:
        self.closed = True
