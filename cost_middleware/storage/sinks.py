"""Where records end up: the ``Sink`` protocol, the SQL sink and an in-memory sink.

The SQL sink keeps one writer connection per process, taken from the engine's pool and
detached from it, so the pool can neither reset it under us nor hand it to a forked child.
SQLite gets ``INSERT ... ON CONFLICT (record_id) DO NOTHING`` statements of many rows each,
in one transaction per batch. PostgreSQL gets a binary ``COPY`` (several times faster than
an executemany there): straight into the table, or, when a batch holds records already
stored, into a temporary staging table followed by ``INSERT ... SELECT ... ON CONFLICT DO
NOTHING``. Either way a record already stored is ignored, which is what makes retries and
spool replays safe, and a batch is committed before ``write`` returns. The batch's hourly
and daily rollups are added in the same transaction, from the rows actually inserted: on
SQLite by upserting the batch's sums (made in Python when every record was new, by SQL
otherwise), by the table's trigger on PostgreSQL (see :mod:`cost_middleware.storage.rollups`).

Each new writer connection first checks that the ledger is at the schema revision this code
writes; a ledger behind it (not yet migrated) fails the write with a
:class:`~cost_middleware.storage.revision.LedgerVersionError`, so the batcher keeps the records
in its spool, and replays them once ``cost-middleware migrate`` has run.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from itertools import chain
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.pool import StaticPool

from cost_middleware import config, forks
from cost_middleware.config import ConfigError
from cost_middleware.records import CostRecord
from cost_middleware.schema import cost_records
from cost_middleware.storage import rollups
from cost_middleware.storage.engine import PG_STATEMENT_TIMEOUT_MS
from cost_middleware.storage.revision import require_head
from cost_middleware.storage.rows import _COLUMNS, _cleaned_row, _fast_row, _SQLiteTimes

log = logging.getLogger("cost_middleware")

_STAGE = "cost_records_stage"
_SUPPORTED = (("sqlite", "pysqlite"), ("postgresql", "psycopg"))
#: The most rows one SQLite INSERT carries (fewer when the library's variable limit is lower:
#: 999 before SQLite 3.32). Each statement releases the GIL once, and under load every release
#: means waiting to win it back from the request threads: a batch of 500 is now 6 statements
#: (it was 20 of 25 rows), and the rest of a partial batch no longer goes row by row.
_MAX_ROWS_PER_INSERT = 256


class Sink(Protocol):
    """Stores batches of records."""

    def write(self, records: Sequence[CostRecord]) -> int:
        """Store ``records``; return how many were new (a known ``record_id`` is ignored).

        Raises on failure; the caller retries or spools the whole batch.
        """
        ...

    def stored(self, record_ids: Sequence[str]) -> set[str]:
        """Which of ``record_ids`` are stored already (a replay asks before it writes)."""
        ...

    def close(self) -> None: ...


class SQLSink:
    """Writes batches into ``cost_records`` over one long-lived connection per process.

    PostgreSQL: the connection is in autocommit mode, so a binary COPY straight into the
    table is one statement, one round trip and its own transaction, committed (or, on a
    duplicate, rolled back) before it returns; the table's trigger adds the rows to the
    rollups within it. When the batch holds a record already stored (a retry or a replay),
    the batch goes through a temporary staging table and ``INSERT ... ON CONFLICT DO
    NOTHING`` in one transaction, which stays the path while batches keep carrying
    duplicates.
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
        # PostgreSQL: the rollups are added by the table's trigger (rollups.create_trigger).
        self._insert_staged = (f"INSERT INTO {table} ({names}) SELECT {names} FROM {_STAGE} "
                               f"ON CONFLICT ({quote('record_id')}) DO NOTHING")
        # SQLite: multi-row INSERTs of power-of-two sizes, so any batch is a few statements
        # (500 rows: 256 + 128 + 64 + 32 + 16 + 4) that SQLite's statement cache keeps; the
        # same for the rollup rows of a batch.
        self._insert_parts = (f"INSERT INTO {table} ({names}) VALUES ",
                              "(" + ", ".join("?" * len(_COLUMNS)) + ")",
                              f" ON CONFLICT ({quote('record_id')}) DO NOTHING")
        if not self._copy:
            self._rowid_before = str(sa.select(sa.func.max(sa.literal_column("rowid")))
                                     .select_from(cost_records).compile(dialect=dialect))
            self._roll_up_after = rollups.sqlite_added_since(dialect)
            self._roll_up_parts = {unit: rollups.sqlite_values_upsert(dialect, unit)
                                   for unit in rollups.LEVELS}
        record_id = quote("record_id")
        self._select_stored = (f"SELECT {record_id} FROM {table} WHERE {record_id} = ANY(%s)"
                               if self._copy else
                               f"SELECT {record_id} FROM {table} WHERE {record_id} IN ")
        #: SQLite: (rows, statement) by decreasing size, of the records and of each level's
        #: rollups, made at the first write (the connection tells the library's variable
        #: limit).
        self._inserts: _Statements = ()
        self._roll_up_inserts: dict[str, _Statements] = {}
        self._lock = threading.Lock()
        self._fairy: Any = None  # the pool's proxy of our connection, detached
        self._conn: Any = None  # the DBAPI connection inside it
        self._copy_types: list[int] | None = None
        self._staged = False  # recent batches carried duplicates: skip the direct COPY
        forks.reset_in_child(self, SQLSink._after_fork)

    def write(self, records: Sequence[CostRecord]) -> int:
        if not records:
            return 0
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
        with self._lock:
            self._discard()

    def stored(self, record_ids: Sequence[str]) -> set[str]:
        if not record_ids:
            return set()
        ids = list(record_ids)
        with self._lock:
            conn = self._connection()
            try:
                if self._copy:
                    with conn.cursor() as cursor:
                        cursor.execute(self._select_stored, (ids,))
                        return {row[0] for row in cursor.fetchall()}
                found: set[str] = set()
                step = _MAX_ROWS_PER_INSERT
                for at in range(0, len(ids), step):
                    part = ids[at:at + step]
                    sql = self._select_stored + "(" + ", ".join("?" * len(part)) + ")"
                    found.update(row[0] for row in conn.execute(sql, part))
                return found
            except BaseException:
                self._discard()
                raise

    def _rows(self, records: Sequence[CostRecord]) -> Iterator[tuple[Any, ...]]:
        times = self._times
        # A row is a non-empty tuple, so `or` falls back only when the fast path refused.
        return (_fast_row(r, times) or _cleaned_row(r, times) for r in records)

    def _connection(self) -> Any:
        if self._conn is None:
            with self._engine.connect() as check:
                require_head(check)
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
        """In a forked child: the parent's connection is never used or closed here."""
        if self._fairy is not None:
            forks.abandon(self._fairy)
        self._fairy = self._conn = self._copy_types = None
        self._lock = threading.Lock()  # the parent's may have been held at fork time

    def _insert_rows(self, conn: Any, built: Iterator[tuple[Any, ...]]) -> int:
        rows = list(built)
        if not self._inserts:
            limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            self._inserts = _in_sizes(*self._insert_parts, limit)
            self._roll_up_inserts = {unit: _in_sizes(*parts, limit)
                                     for unit, parts in self._roll_up_parts.items()}
        cursor = conn.cursor()
        try:
            # The write lock first: the rows above the largest rowid are then this batch's
            # alone, and they are what the rollups add when some records were stored already.
            cursor.execute("BEGIN IMMEDIATE")
            before = cursor.execute(self._rowid_before).fetchone()[0] or 0
            inserted = _execute_in_sizes(cursor, self._inserts, rows)
            self._roll_up(cursor, rows, inserted, before)
        finally:
            cursor.close()
        conn.commit()
        return inserted

    def _roll_up(self, cursor: Any, rows: list[tuple[Any, ...]], inserted: int,
                 before: int) -> None:
        """SQLite: add what the batch inserted to the rollups, in its transaction."""
        if inserted == len(rows):  # every record was new: their sums, made here
            for unit, rolled in rollups.sqlite_sums(rows).items():
                _execute_in_sizes(cursor, self._roll_up_inserts[unit], rolled)
        elif inserted:  # only the rows SQLite inserted, summed by SQL
            for sql in self._roll_up_after:
                cursor.execute(sql, (before,))

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


#: (rows, statement) by decreasing size (see :func:`_in_sizes`).
_Statements = tuple[tuple[int, str], ...]


def _in_sizes(head: str, one_row: str, tail: str, variable_limit: int) -> _Statements:
    """SQLite: the statement ``head`` + rows of ``one_row`` + ``tail`` for every power of two
    up to :data:`_MAX_ROWS_PER_INSERT` rows (fewer where ``variable_limit`` says)."""
    fits = variable_limit // one_row.count("?")
    largest = min(_MAX_ROWS_PER_INSERT, 1 << (max(1, fits).bit_length() - 1))
    return tuple((size, head + ", ".join([one_row] * size) + tail)
                 for size in (1 << i for i in reversed(range(largest.bit_length()))))


def _execute_in_sizes(cursor: Any, statements: _Statements, rows: Sequence[tuple[Any, ...]]) -> int:
    """Send ``rows`` as few of ``statements`` as their number allows; returns the rows the
    statements changed."""
    changed = done = 0
    flat = chain.from_iterable
    for size, sql in statements:
        end = done + (len(rows) - done) // size * size
        if end == done:
            continue
        cursor.executemany(sql, (tuple(flat(rows[i:i + size])) for i in range(done, end, size)))
        changed += cursor.rowcount
        done = end
    return changed


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

    def stored(self, record_ids: Sequence[str]) -> set[str]:
        with self._lock:
            return {i for i in record_ids if i in self._ids}

    def close(self) -> None:
        self.closed = True
