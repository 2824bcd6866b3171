"""storage.py against real SQLite and real PostgreSQL: exact rows, duplicates, bad values."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cost_middleware.config import ConfigError
from cost_middleware.records import CostRecord
from cost_middleware.schema import USD_SCALE, ExactDecimal, cost_records
from cost_middleware.storage.engine import ensure_schema, make_engine
from cost_middleware.storage.rows import (
    _COLUMNS,
    _ROW_ORDER,
    MAX_USD,
    _fast_row,
    _sqlite_datetime,
    _SQLiteTimes,
    record_row,
)
from cost_middleware.storage.sinks import _MAX_ROWS_PER_INSERT, MemorySink, SQLSink
from cost_middleware.usage.model import Usage

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sink(engine: sa.Engine) -> Iterator[SQLSink]:
    sink = SQLSink(engine)
    yield sink
    sink.close()


def full_usage(**overrides: Any) -> Usage:
    values: dict[str, Any] = dict(
        input_tokens=120_000, output_tokens=4_321, cached_input_tokens=100_000,
        cache_write_input_tokens=7_000, cache_write_5m_input_tokens=5_000,
        cache_write_1h_input_tokens=2_000, reasoning_tokens=0, web_search_requests=3,
        reported_cost_usd=Decimal("0.000000000001"),
    )
    values.update(overrides)
    return Usage(**values)


def make_record(usage: Usage | None, **overrides: Any) -> CostRecord:
    values: dict[str, Any] = dict(
        provider="anthropic", api="messages", model="claude-sonnet-4-5", usage=usage,
        tenant="acme", request_id="req-42", method="POST", route="/v1/messages",
        status_code=200, streamed=True, partial=False, latency_ms=812.25,
        created_at=datetime(2025, 3, 4, 5, 6, 7, 891011, tzinfo=UTC),
        cost_usd=Decimal("123456.123456789012"), price_version=17,
        record_id=uuid.uuid4().hex,  # independent of the random state hypothesis seeds
    )
    values.update(overrides)
    return CostRecord(**values)


def stored(engine: sa.Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(sa.select(cost_records)).mappings()]
    for row in rows:
        if row["created_at"].tzinfo is None:  # SQLite returns UTC as naive
            row["created_at"] = row["created_at"].replace(tzinfo=UTC)
    return {row["record_id"]: row for row in rows}


def test_row_order_is_the_table_order() -> None:
    assert _ROW_ORDER == _COLUMNS
    assert tuple(record_row(make_record(full_usage()))) == _COLUMNS


def test_round_trip_is_exact_in_every_column(engine: sa.Engine, sink: SQLSink) -> None:
    priced = make_record(full_usage())
    no_usage = make_record(None, cost_usd=None, price_version=None, tenant=None,
                           request_id=None, method=None, route=None, status_code=None,
                           model=None, latency_ms=None, streamed=False, partial=True)
    unknown_reasoning = make_record(full_usage(reasoning_tokens=None, reported_cost_usd=None,
                                               web_search_requests=None),
                                    cost_usd=Decimal("0.000000000001"))
    other_zone = make_record(full_usage(), created_at=datetime(
        2025, 3, 4, 7, 6, 7, 891011, tzinfo=timezone(timedelta(hours=2))))
    naive = make_record(full_usage(), created_at=datetime(2025, 3, 4, 5, 6, 7, 891011))
    records = [priced, no_usage, unknown_reasoning, other_zone, naive]
    assert sink.write(records) == len(records)

    rows = stored(engine)
    for record in records:
        assert rows[record.record_id] == record_row(record)
    row = rows[priced.record_id]
    assert row["cost_usd"] == Decimal("123456.123456789012")
    assert row["reported_cost_usd"] == Decimal("0.000000000001")
    assert row["reasoning_tokens"] == 0
    assert row["created_at"] == datetime(2025, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    assert (row["input_tokens"], row["cached_input_tokens"], row["cache_write_input_tokens"],
            row["cache_write_5m_input_tokens"], row["cache_write_1h_input_tokens"],
            row["output_tokens"], row["web_search_requests"]) == (
        120_000, 100_000, 7_000, 5_000, 2_000, 4_321, 3)
    assert (row["tenant"], row["request_id"], row["method"], row["route"], row["status_code"],
            row["provider"], row["model"], row["api"], row["streamed"], row["partial"],
            row["price_version"], row["latency_ms"]) == (
        "acme", "req-42", "POST", "/v1/messages", 200, "anthropic", "claude-sonnet-4-5",
        "messages", True, False, 17, 812.25)
    assert rows[unknown_reasoning.record_id]["reasoning_tokens"] is None
    assert rows[unknown_reasoning.record_id]["cost_usd"] == Decimal("0.000000000001")
    empty = rows[no_usage.record_id]
    assert all(empty[c] is None for c in (
        "input_tokens", "cached_input_tokens", "cache_write_input_tokens", "output_tokens",
        "reasoning_tokens", "cost_usd", "reported_cost_usd"))
    assert empty["partial"] is True
    assert rows[other_zone.record_id]["created_at"] == row["created_at"]
    assert rows[naive.record_id]["created_at"] == row["created_at"]


def test_sub_pico_amounts_round_the_same_on_both_backends(engine: sa.Engine, sink: SQLSink) -> None:
    records = [make_record(None, cost_usd=Decimal(v)) for v in
               ("0.0000000000015", "0.0000000000025", "1.00000000000049", "2.5E-13")]
    sink.write(records)
    rows = stored(engine)
    assert [rows[r.record_id]["cost_usd"] for r in records] == [
        Decimal("0.000000000002"), Decimal("0.000000000002"), Decimal("1.000000000000"),
        Decimal("0")]


def test_duplicates_are_ignored(engine: sa.Engine, sink: SQLSink) -> None:
    batch = [make_record(full_usage()) for _ in range(50)]
    assert sink.write(batch) == 50
    assert sink.write(batch) == 0
    # Half known, half new, and one new record twice in the same batch.
    fresh = [make_record(None) for _ in range(10)]
    assert sink.write(batch[:25] + fresh + fresh[:1]) == 10
    # After duplicates, a clean batch is fully written again.
    assert sink.write([make_record(None) for _ in range(5)]) == 5
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(cost_records)).scalar_one()
        distinct = conn.execute(sa.select(sa.func.count(sa.distinct(cost_records.c.record_id)))
                                ).scalar_one()
    assert total == distinct == 65


texts = st.one_of(st.none(), st.text(max_size=600), st.text(
    st.sampled_from(["a", "\x00", "\ud800", "é", "\U0001f600", "'", '"', ";"]), max_size=80))
ints = st.one_of(st.none(), st.integers(-(2**70), 2**70))
money = st.one_of(st.none(), st.decimals(allow_nan=True, allow_infinity=True),
                  st.decimals(min_value=-10**7, max_value=10**7, places=15))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tenant=texts, route=texts, model=texts, method=texts, request_id=texts,
       provider=st.text(max_size=100), input_tokens=st.integers(-(2**70), 2**70),
       reasoning=ints, status=ints, cost=money, reported=money,
       latency=st.one_of(st.none(), st.floats(allow_nan=False)))
def test_any_record_is_storable(
    engine: sa.Engine, sink: SQLSink, tenant: str | None, route: str | None,
    model: str | None, method: str | None, request_id: str | None, provider: str,
    input_tokens: int, reasoning: int | None, status: int | None, cost: Decimal | None,
    reported: Decimal | None, latency: float | None,
) -> None:
    """A row a backend refuses would fail its batch forever: no record may build one."""
    record = make_record(
        Usage(input_tokens=input_tokens, output_tokens=1, reasoning_tokens=reasoning,
              reported_cost_usd=reported),
        tenant=tenant, route=route, model=model, method=method, request_id=request_id,
        provider=provider, status_code=status, cost_usd=cost, latency_ms=latency)
    assert sink.write([record]) == 1
    row = stored_one(engine, record.record_id)
    expected = record_row(record)
    if engine.dialect.name == "sqlite" and expected["latency_ms"] is not None:
        expected["latency_ms"] = float(expected["latency_ms"])
    assert row == {k: _quantized(v) if k.endswith("cost_usd") else v for k, v in expected.items()}
    assert row["tenant"] is None or len(row["tenant"]) <= 256
    assert row["cost_usd"] is None or abs(row["cost_usd"]) <= MAX_USD


def test_a_time_outside_the_datetime_range_in_utc_is_stored_as_now(
        engine: sa.Engine, sink: SQLSink) -> None:
    before = datetime.now(UTC)
    east = datetime.min.replace(tzinfo=timezone(timedelta(hours=2)))  # 0000-12-31 in UTC
    record = make_record(None, created_at=east)
    assert sink.write([record]) == 1
    assert before <= stored_one(engine, record.record_id)["created_at"] <= datetime.now(UTC)


def _quantized(value: Decimal | None) -> Decimal | None:
    return None if value is None else value.quantize(Decimal("1E-12"))


def stored_one(engine: sa.Engine, record_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = dict(conn.execute(sa.select(cost_records).where(
            cost_records.c.record_id == record_id)).mappings().one())
    if row["created_at"].tzinfo is None:
        row["created_at"] = row["created_at"].replace(tzinfo=UTC)
    return row


@settings(max_examples=200, deadline=None)
@given(st.datetimes(timezones=st.just(UTC)))
def test_sqlite_datetime_text_is_sqlalchemys(value: datetime) -> None:
    dialect = sa.create_engine("sqlite://").dialect
    process = cost_records.c.created_at.type.dialect_impl(dialect).bind_processor(dialect)
    assert process is not None
    assert _sqlite_datetime(value) == process(value)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.datetimes(timezones=st.just(UTC)), min_size=1, max_size=20), st.booleans())
def test_sqlite_times_cached_by_second_are_sqlalchemys(values: list[datetime],
                                                       ordered: bool) -> None:
    times = _SQLiteTimes()
    edges = [datetime.max.replace(tzinfo=UTC), datetime.min.replace(tzinfo=UTC),
             datetime(2025, 1, 1, 0, 0, 0, 999_999, tzinfo=UTC),
             datetime(2025, 1, 1, 0, 0, 1, tzinfo=UTC)]
    for value in [*(sorted(values) if ordered else values), *edges]:
        assert times.text(value) == _sqlite_datetime(value)


#: A live engine is not needed to build rows: SQLSink connects at its first write.
OFFLINE_URLS = ["sqlite://", "postgresql+psycopg://nobody@127.0.0.1:1/none"]


def bound_by_sqlalchemy(record: CostRecord, dialect: sa.Dialect) -> list[tuple[type, Any]]:
    """What SQLAlchemy would send for ``record_row(record)``, with each value's type."""
    row = record_row(record)
    values = []
    for column in cost_records.columns:
        value = row[column.name]
        process = column.type.dialect_impl(dialect).bind_processor(dialect)
        if process is not None and value is not None:
            value = process(value)
        values.append((type(value), value))
    return values


def sink_rows(sink: SQLSink, records: list[CostRecord]) -> list[list[tuple[type, Any]]]:
    return [[(type(v), v) for v in row] for row in sink._rows(records)]


ascii_text = st.characters(min_codepoint=32, max_codepoint=126)
any_text = st.one_of(st.none(), st.text(ascii_text, max_size=30),
                     st.text(ascii_text, min_size=12, max_size=520), texts)
any_int = st.one_of(st.none(), st.integers(0, 10**7), st.integers(-(2**70), 2**70),
                    st.booleans(), st.floats(allow_nan=False))
any_money = st.one_of(st.none(), st.decimals(min_value=0, max_value=100, places=15), money,
                      st.floats(allow_nan=False), st.integers(-5, 5))
any_time = st.one_of(
    st.datetimes(timezones=st.just(UTC)),
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1),
                 timezones=st.sampled_from([timezone(timedelta(hours=-5)),
                                            timezone(timedelta(hours=2))])),
    st.datetimes(),  # (not a datetime becomes "now": not comparable between two builds)
)
RECORD_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    **dict.fromkeys(("tenant", "route", "model", "method", "request_id", "provider", "api",
                     "record_id"), any_text),
    "status_code": any_int, "price_version": any_int, "cost_usd": any_money,
    "latency_ms": st.one_of(st.none(), st.floats(allow_nan=False), st.integers(0, 9)),
    "streamed": st.one_of(st.booleans(), st.none(), st.integers(0, 2)), "created_at": any_time,
}
USAGE_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    **dict.fromkeys(("input_tokens", "output_tokens", "cached_input_tokens",
                     "cache_write_input_tokens", "cache_write_5m_input_tokens",
                     "cache_write_1h_input_tokens", "reasoning_tokens", "web_search_requests"),
                    any_int),
    "reported_cost_usd": any_money,
}


@st.composite
def any_record(draw: st.DrawFn) -> CostRecord:
    """A clean record with up to three fields replaced by anything, so that every check
    of the fast path meets values it must refuse."""
    dirty = draw(st.sets(st.sampled_from([*RECORD_FIELDS, *USAGE_FIELDS]), max_size=3))
    counts = {name: draw(USAGE_FIELDS[name]) for name in sorted(dirty & USAGE_FIELDS.keys())}
    with_usage = bool(counts) or draw(st.booleans())
    usage = full_usage(**counts) if with_usage else None
    return make_record(usage, **{name: draw(RECORD_FIELDS[name])
                                 for name in sorted(dirty & RECORD_FIELDS.keys())})


@pytest.mark.parametrize("url", OFFLINE_URLS)
@settings(max_examples=150, deadline=None)
@given(records=st.lists(any_record(), min_size=1, max_size=4))
def test_rows_are_what_sqlalchemy_would_bind(url: str, records: list[CostRecord]) -> None:
    """Fast path or full cleaning, every value is sent as SQLAlchemy would bind the
    cleaned row (same type, same value)."""
    engine = make_engine(url)
    sink = SQLSink(engine)
    assert sink_rows(sink, records) == [bound_by_sqlalchemy(r, engine.dialect) for r in records]


@pytest.mark.parametrize("url", OFFLINE_URLS)
def test_clean_records_take_the_fast_path(url: str) -> None:
    times = _SQLiteTimes() if url.startswith("sqlite") else None
    usual = [make_record(full_usage()), make_record(None, cost_usd=None, tenant=None),
             make_record(full_usage(reasoning_tokens=None, cache_write_5m_input_tokens=None),
                         latency_ms=None, status_code=None, price_version=None)]
    for record in usual:
        assert _fast_row(record, times) is not None
    # Each of these needs the full cleaning, and gets it.
    needs_cleaning = [
        make_record(None, tenant="a\x00b"), make_record(None, route="/é"),
        make_record(None, model="m" * 257), make_record(None, method="x" * 17),
        make_record(None, request_id=42), make_record(None, provider=None),
        make_record(full_usage(input_tokens=2**63)), make_record(full_usage(output_tokens=-1)),
        make_record(full_usage(reasoning_tokens=True)), make_record(None, status_code=2**31),
        make_record(None, price_version=1.5), make_record(None, cost_usd=Decimal("NaN")),
        make_record(None, cost_usd=MAX_USD + 1), make_record(None, cost_usd=0.25),
        make_record(full_usage(reported_cost_usd=Decimal("-Infinity"))),
        make_record(None, latency_ms=3), make_record(None, created_at=datetime(2025, 1, 1)),
        make_record(None, created_at=datetime(2025, 1, 1, tzinfo=timezone(timedelta(hours=1)))),
        *(make_record(None, **{name: "x" * ((column.type.length or 0) + 1)})
          for name, column in cost_records.c.items()
          if isinstance(column.type, sa.String) and name in RECORD_FIELDS),
        *(make_record(full_usage(**{name: bad}))
          for name in USAGE_FIELDS if name != "reported_cost_usd"
          for bad in (True, -1, 2**63, 1.0, "1")),
    ]
    sink = SQLSink(make_engine(url))
    for record in needs_cleaning:
        assert _fast_row(record, times) is None
        assert sink_rows(sink, [record]) == [bound_by_sqlalchemy(record, sink._engine.dialect)]


@settings(max_examples=200, deadline=None)
@given(st.decimals(allow_nan=False, allow_infinity=False, min_value=-(10**15),
                   max_value=10**15))
def test_money_units_round_half_even_to_pico_dollars(value: Decimal) -> None:
    kind = cost_records.c.cost_usd.type
    assert isinstance(kind, ExactDecimal)
    exact = value.quantize(Decimal(1).scaleb(-USD_SCALE))
    assert kind.exact(value) == exact
    assert kind.units(value) == int(exact.scaleb(USD_SCALE))


def check_batches_around(n: int, engine: sa.Engine, sink: SQLSink) -> None:
    """Batches of sizes around the statement sizes; duplicates inside a statement, across
    statements and in the smallest ones are each stored once."""
    first = [make_record(full_usage()) for _ in range(2 * n + 7)]
    assert sink.write(first) == len(first)
    fresh = [make_record(None) for _ in range(n + 3)]
    mixed = [*fresh[:n // 2], first[0], *fresh[n // 2:], fresh[0], first[-1], fresh[-1]]
    assert sink.write(mixed) == len(fresh)
    assert sink.write([make_record(None) for _ in range(n)]) == n
    assert sink.write([make_record(None)]) == 1
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(cost_records)).scalar_one()
    assert total == len(first) + len(fresh) + n + 1


def test_batches_around_the_rows_per_insert(engine: sa.Engine, sink: SQLSink) -> None:
    check_batches_around(_MAX_ROWS_PER_INSERT, engine, sink)
    if engine.dialect.name == "sqlite":
        # 519 rows: 256 + 256 + 4 + 2 + 1, each size one cached statement.
        assert [size for size, _ in sink._inserts[:2]] == [256, 128]


def test_an_old_sqlite_variable_limit_is_respected(sqlite_url: str) -> None:
    """SQLite before 3.32 allows 999 parameters per statement: 41 rows of 24 columns, so
    statements carry at most 32 rows there."""
    engine = make_engine(sqlite_url)

    @sa.event.listens_for(engine, "connect")
    def old_limit(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)

    ensure_schema(engine)
    sink = SQLSink(engine)
    try:
        check_batches_around(100, engine, sink)
        assert sink._inserts[0][0] == 32
    finally:
        sink.close()
        engine.dispose()


def test_sqlite_engine_settings_and_creates_nothing(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
    assert sa.inspect(engine).get_table_names() == []
    engine.dispose()


def test_in_memory_sqlite_is_one_database() -> None:
    engine = make_engine("sqlite://")
    ensure_schema(engine)
    sink = SQLSink(engine)
    record = make_record(full_usage())
    assert sink.write([record]) == 1
    assert stored_one(engine, record.record_id)["cost_usd"] == record.cost_usd
    sink.close()


def test_postgresql_urls_use_psycopg(pg_url: str) -> None:
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")
    engine = make_engine(plain)
    assert engine.dialect.driver == "psycopg"
    assert sa.inspect(engine).get_table_names() == []
    engine.dispose()


@pytest.mark.parametrize("url", [
    "postgresql+psycopg2://user:secret@db/x", "mysql://user:secret@db/x",
    "sqlite+pysqlcipher://:secret@/x.db",
])
def test_unsupported_urls_are_refused_without_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_engine(url)
    assert "secret" not in str(info.value)
    assert info.value.variable == "COST_MIDDLEWARE_DATABASE_URL"


def test_ensure_schema_when_processes_start_together(db_url: str) -> None:
    engines = [make_engine(db_url) for _ in range(4)]
    barrier = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def start(engine: sa.Engine) -> None:
        try:
            barrier.wait()
            ensure_schema(engine)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert {"cost_records", "model_prices"} <= set(sa.inspect(engines[0]).get_table_names())
    for engine in engines:
        engine.dispose()


def test_reconnects_after_the_connection_dies(pg_url: str) -> None:
    engine = make_engine(pg_url)
    ensure_schema(engine)
    sink = SQLSink(engine)
    first = [make_record(None) for _ in range(3)]
    assert sink.write(first) == 3
    with engine.connect() as admin:
        admin.execute(sa.text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    second = [make_record(None) for _ in range(3)]
    try:
        sink.write(second)  # may fail once: the server closed our connection
    except Exception:
        assert sink.write(second) == 3
    assert sink.write(second) == 0
    assert len(stored(engine)) == 6
    sink.close()
    engine.dispose()


FORK_SCRIPT = """
import os, sys
from cost_middleware.storage.engine import make_engine
from cost_middleware.storage.sinks import SQLSink
from cost_middleware.records import CostRecord
engine = make_engine(sys.argv[1])
sink = SQLSink(engine)
def batch(tag):
    return [CostRecord(provider="p", api=tag, model=None, usage=None) for _ in range(5)]
assert sink.write(batch("parent-before")) == 5
pid = os.fork()
if pid == 0:
    code = 0 if sink.write(batch("child")) == 5 else 1
    sink.close()
    os._exit(code)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert sink.write(batch("parent-after")) == 5  # the child never touched our connection
sink.close()
print("ok")
"""


def test_a_forked_child_opens_its_own_connection(pg_url: str) -> None:
    engine = make_engine(pg_url)
    ensure_schema(engine)
    done = subprocess.run([sys.executable, "-c", FORK_SCRIPT, pg_url], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    with engine.connect() as conn:
        apis = conn.execute(sa.select(cost_records.c.api, sa.func.count()).group_by(
            cost_records.c.api)).all()
    assert dict(apis) == {"parent-before": 5, "child": 5, "parent-after": 5}
    engine.dispose()


def test_memory_sink_ignores_duplicates() -> None:
    sink = MemorySink()
    batch = [make_record(None) for _ in range(3)]
    assert sink.write(batch) == 3
    assert sink.write([*batch, make_record(None)]) == 1
    assert len(sink.records) == 4
    sink.close()
    assert sink.closed
