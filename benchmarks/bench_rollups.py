"""Rollups: ``report`` and an overview from the hourly rollups against the raw GROUP BY, on
ledgers of 1 million (and, with ``--large``, 10 million) rows; and the sink's write rate with
rollups against without.

Ledgers are made by SQL (PostgreSQL ``generate_series``, a recursive CTE on SQLite): 30 days of
records, 8 models over 3 providers, 50 tenants, 4 routes, one in ten unpriced; then
``rollups.rebuild`` (what ``cost-middleware rollups build`` runs) makes their rollups.
Baselines in the same run: the same report read from ``cost_records`` alone (one GROUP BY
over every row, as ``report`` did before rollups), and for writes a sink that writes the
same batches the way it did before rollups (no rollup statement on SQLite; on PostgreSQL the
same COPY into a table without the rollups' trigger).

    python benchmarks/bench_rollups.py [--quick] [--large]
    python benchmarks/bench_rollups.py --floor    # what the parts of a rollup write cost

``--floor`` prints, instead of the targets, the write rate of each part of the rollup work
alone against the sink without rollups, interleaved (5 rounds of 50,000 records; the median
of the rounds' ratios): on SQLite the Python sums computed and not written; on PostgreSQL a
trigger that does nothing, then one that only sums the transition table (both levels), then
one that appends the sums to a table without keys instead of upserting them.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from bench_storage import make_records, timed_writes
from common import NO_POSTGRES, Result, interleave, postgres_database, standalone

from cost_middleware.ops.report import build_report
from cost_middleware.records import CostRecord
from cost_middleware.schema import cost_records, metadata
from cost_middleware.storage import rollups
from cost_middleware.storage.engine import ensure_schema, make_engine
from cost_middleware.storage.sinks import SQLSink

READ_LIMIT_S = 0.100
#: ``--large``: the 10-million-row ledgers too (several minutes per backend).
LARGE = "--large" in sys.argv
#: ``--floor``: what each part of the rollup work costs the write rate (see the docstring).
FLOOR = "--floor" in sys.argv
WRITE_RATIO = 0.90
_PG_ROWS = """
INSERT INTO cost_records (record_id, created_at, provider, model, api, tenant, route,
    streamed, partial, input_tokens, cached_input_tokens, cache_write_input_tokens,
    output_tokens, reasoning_tokens, cost_usd, cost_usd_pico)
SELECT 'g' || i,
    timestamptz '2025-01-01 00:00:00+00' + (i * (2592000.0 / :n)) * interval '1 second',
    'p' || (i % 8 % 3), 'model-' || (i % 8), 'chat', 'tenant-' || (i % 50), '/v1/r' || (i % 4),
    false, false, 1000 + i % 997, i % 500, 0, 100 + i % 89, i % 7,
    CASE WHEN i % 10 = 0 THEN NULL ELSE (1000000 + i % 1000) * 0.000000000001 END,
    CASE WHEN i % 10 = 0 THEN NULL ELSE 1000000 + i % 1000 END
FROM generate_series(1, :n) AS i
"""
_SQLITE_ROWS = """
INSERT INTO cost_records (record_id, created_at, provider, model, api, tenant, route,
    streamed, partial, input_tokens, cached_input_tokens, cache_write_input_tokens,
    output_tokens, reasoning_tokens, cost_usd, cost_usd_pico)
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :n)
SELECT 'g' || i, datetime(1735689600 + i * 2592000 / :n, 'unixepoch') || '.000000',
    'p' || (i % 8 % 3), 'model-' || (i % 8), 'chat', 'tenant-' || (i % 50), '/v1/r' || (i % 4),
    0, 0, 1000 + i % 997, i % 500, 0, 100 + i % 89, i % 7,
    CASE WHEN i % 10 = 0 THEN NULL ELSE (1000000 + i % 1000) / 1000000000000.0 END,
    CASE WHEN i % 10 = 0 THEN NULL ELSE 1000000 + i % 1000 END
FROM s
"""


def make_ledger(engine: sa.Engine, n: int) -> float:
    """A fresh ledger of ``n`` generated records and its rollups; returns the build's seconds."""
    metadata.drop_all(engine)
    ensure_schema(engine)
    sql = _PG_ROWS if engine.dialect.name == "postgresql" else _SQLITE_ROWS
    with engine.begin() as conn:
        conn.execute(sa.text(sql), {"n": n})
    started = time.perf_counter()
    with engine.begin() as conn:
        rollups.lock_ledger(conn)
        rollups.rebuild(conn)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE"))
    return time.perf_counter() - started


def raw_report(engine: sa.Engine, by: str) -> int:
    """The report as it was read before rollups: one GROUP BY over every record."""
    c = cost_records.c
    query = sa.select(c[by], sa.func.count(), sa.func.sum(c.input_tokens),
                      sa.func.sum(c.output_tokens), sa.func.sum(c.cost_usd_pico),
                      sa.func.count(c.cost_usd_pico)).group_by(c[by])
    with engine.connect() as conn:
        return len(conn.execute(query).all())


def overview(engine: sa.Engine) -> int:
    """What the dashboard's overview asks: spend by day stacked by model, and by tenant."""
    return len(build_report(engine, "day,model").rows) + len(build_report(engine, "tenant").rows)


def raw_overview(engine: sa.Engine) -> int:
    c = cost_records.c
    day = rollups._truncate(c.created_at, "day", engine.dialect.name)
    with engine.connect() as conn:
        return (len(conn.execute(sa.select(day, c.model, sa.func.sum(c.cost_usd_pico))
                                 .group_by(day, c.model)).all())
                + raw_report(engine, "tenant"))


def best_seconds(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def bench_reads(backend: str, url: str, n: int, rounds: int) -> list[Result]:
    engine = make_engine(url)
    try:
        build = make_ledger(engine, n)
        ours = {"report": best_seconds(lambda: build_report(engine, "model"), rounds),
                "overview": best_seconds(lambda: overview(engine), rounds)}
        raw = {"report": best_seconds(lambda: raw_report(engine, "model"), max(1, rounds // 2)),
               "overview": best_seconds(lambda: raw_overview(engine), max(1, rounds // 2))}
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT count(*) FROM cost_rollups")).scalar()
            days = conn.execute(sa.text("SELECT count(*) FROM cost_rollups_daily")).scalar()
    finally:
        engine.dispose()
    return [Result(f"{what} from rollups, {backend}, {n:,} records", ours[what] * 1000, "ms",
                   "the same from cost_records (GROUP BY every row)", raw[what] * 1000,
                   f"≤ {READ_LIMIT_S * 1000:.0f} ms", ours[what] <= READ_LIMIT_S,
                   f"{rows:,} hourly and {days:,} daily rollup rows, built in {build:.1f} s")
            for what in ("report", "overview")]


class WithoutRollups(SQLSink):
    """The sink as it wrote before rollups: on SQLite the same statements without the rollup
    ones; on PostgreSQL the same code, on a table without the rollups' trigger (dropped by
    :func:`write_rate`)."""

    def _roll_up(self, cursor: Any, rows: list[tuple[Any, ...]], inserted: int,
                 before: int) -> None:
        pass  # nothing rolled up


def write_rate(engine: sa.Engine, sink_type: type[SQLSink], records: Sequence[CostRecord],
               batch: int = 500, setup: Callable[[sa.Connection], None] | None = None) -> float:
    """Records/s of ``sink_type`` into a fresh ledger, after ``setup`` of it (PostgreSQL: a
    trigger changed) when given."""
    metadata.drop_all(engine)
    ensure_schema(engine)
    if sink_type is WithoutRollups and engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TRIGGER {rollups.TRIGGER} ON cost_records"))
    if setup is not None:
        with engine.begin() as conn:
            setup(conn)
    return timed_writes(sink_type(engine), records, batch)


class SumsOnly(SQLSink):
    """SQLite: the batch's rollup sums made in Python, not written (the floor of that path)."""

    def _roll_up(self, cursor: Any, rows: list[tuple[Any, ...]], inserted: int,
                 before: int) -> None:
        rollups.sqlite_sums(rows)


def _trigger_body(conn: sa.Connection, part: str) -> str:
    """PostgreSQL: the body of a rollup trigger doing only ``part`` of the work."""
    if part == "empty":
        return ""
    added = sa.table("added", *(sa.column(c.name) for c in cost_records.columns))
    body = ""
    for unit in rollups.LEVELS:
        summed = rollups.aggregate(added, "postgresql", unit=unit)
        if part == "sums":
            body += f"PERFORM count(*) FROM ({rollups._constant(summed, conn.dialect)}) s;\n"
        else:  # "append": the sums inserted into a table without keys, no upsert
            names = rollups._inserted(unit)
            into = sa.table(f"bench_{unit}_appended", *(sa.column(n) for n in names))
            append = sa.insert(into).from_select(list(names), summed)
            body += f"{rollups._constant(append, conn.dialect)};\n"
    return body


def floor_rate(engine: sa.Engine, part: str, records: Sequence[CostRecord]) -> float:
    """Records/s of the sink with only ``part`` of the rollup work (see the docstring)."""
    if engine.dialect.name == "sqlite":
        sinks = {"off": WithoutRollups, "sums": SumsOnly, "on": SQLSink}
        return write_rate(engine, sinks[part], records)
    if part in ("off", "on"):
        return write_rate(engine, WithoutRollups if part == "off" else SQLSink, records)

    def only_part(conn: sa.Connection) -> None:
        for unit, table in rollups.LEVELS.items():
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS bench_{unit}_appended")
            conn.exec_driver_sql(f"CREATE TABLE bench_{unit}_appended (LIKE {table.name})")
        conn.exec_driver_sql(
            f"CREATE OR REPLACE FUNCTION {rollups.TRIGGER}() RETURNS trigger LANGUAGE plpgsql "
            f"AS $floor$\nBEGIN\n{_trigger_body(conn, part)}RETURN NULL;\nEND\n$floor$")

    return write_rate(engine, SQLSink, records, setup=only_part)


def print_floor() -> None:
    records = make_records(50_000)
    parts = {"SQLite": ("off", "sums", "on"),
             "PostgreSQL": ("off", "empty", "sums", "append", "on")}
    with tempfile.TemporaryDirectory() as tmp, postgres_database() as pg_url:
        urls = {"SQLite": f"sqlite:///{Path(tmp) / 'bench.db'}", "PostgreSQL": pg_url}
        for backend, url in urls.items():
            if url is None:
                print(f"{backend}: {NO_POSTGRES}")
                continue
            engine = make_engine(url)
            try:
                rates = interleave({part: partial(floor_rate, engine, part, records)
                                    for part in parts[backend]}, 5)
            finally:
                engine.dispose()
            off = rates["off"]
            for part, found in rates.items():
                # Each round runs every part back to back: a round's ratio is the least
                # touched by the machine's speed changing between rounds.
                ratio = statistics.median(f / o for f, o in zip(found, off, strict=True))
                print(f"{backend:10} {part:7} {max(found):9,.0f} records/s at best  "
                      f"median {ratio:.3f}x of off per round  (rounds: "
                      f"{', '.join(f'{r:,.0f}' for r in found)})")


def bench_writes(backend: str, url: str, n: int, rounds: int) -> Result:
    engine = make_engine(url)
    records = make_records(n)
    try:
        rates = interleave({"on": lambda: write_rate(engine, SQLSink, records),
                            "off": lambda: write_rate(engine, WithoutRollups, records)}, rounds)
    finally:
        engine.dispose()
    on, off = max(rates["on"]), max(rates["off"])
    return Result(f"SQLSink.write with rollups, {backend}, batch 500", on, "records/s",
                  "the same sink without rollups", off, f"≥ {WRITE_RATIO:.0%} of without",
                  on >= WRITE_RATIO * off, f"{n:,} records per round, 50 tenants")


def run(quick: bool) -> list[Result]:
    sizes = [100_000] if quick else [1_000_000]
    if LARGE:
        sizes.append(10_000_000)
    rounds = 3 if quick else 5
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp, postgres_database() as pg_url:
        urls = {"SQLite": f"sqlite:///{Path(tmp) / 'bench.db'}", "PostgreSQL": pg_url}
        for backend, url in urls.items():
            if url is None:
                results.append(Result.skipped(f"rollups, {backend}", "ms", NO_POSTGRES))
                continue
            results.append(bench_writes(backend, url, 20_000 if quick else 100_000, 3))
            for n in sizes:
                results += bench_reads(backend, url, n, rounds)
    return results


if __name__ == "__main__":
    if FLOOR:
        print_floor()
        sys.exit(0)
    if LARGE:
        sys.argv.remove("--large")  # not an option of the shared runner
    standalone(run, "rollups: reports from rollups against the raw GROUP BY, and write rates")
