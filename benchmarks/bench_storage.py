"""Storage: sustained writes into SQLite and PostgreSQL, spool replay, memory under a backlog.

Writes: ``SQLSink.write`` (record to row included) on a fresh ``cost_records``, in alternating
rounds with the baseline: the same records, turned into rows before the clock starts, written
by the bare driver into a table of the same columns without keys or indexes (``sqlite3``
``executemany``; psycopg 3 binary ``COPY``), over the same engine's connection and batch size.

Sustained worker rate: the same records through ``CostTracker.record`` and its background
worker (price from the seeded price table, write, count totals), submitted as fast as one
thread can; baseline: ``SQLSink.write`` at ``BATCH_SIZE``.

Backlog: a child process submits records to a ``Batcher`` whose database is down and reports
its peak RSS; the baseline is the same with half the backlog (both ten or more times
``QUEUE_SIZE``), so a ratio near 1 means memory is bounded by the queue, not by the backlog.
Part of the spool it leaves is then replayed into each database (baseline: ``SQLSink.write`` at
the replay's chunk size).
PostgreSQL runs in a database created and dropped here (admin URL from
``COST_MIDDLEWARE_TEST_PG``).

    python benchmarks/bench_storage.py [--quick]
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from common import NO_POSTGRES, Result, interleave, postgres_database, standalone

from cost_middleware.config import Settings
from cost_middleware.engine.batcher import Batcher
from cost_middleware.engine.spool import REPLAY_CHUNK, Spool
from cost_middleware.engine.tracker import CostTracker
from cost_middleware.metrics import Metrics
from cost_middleware.records import CostRecord
from cost_middleware.schema import cost_records
from cost_middleware.storage.engine import ensure_schema, make_engine
from cost_middleware.storage.rows import record_row
from cost_middleware.storage.sinks import SQLSink
from cost_middleware.usage.model import Usage

WRITE_LIMIT = 100_000
#: Peak RSS with the full backlog over peak RSS with half of it.
RSS_FACTOR = 1.25
BATCHES = (Settings().batch_size, REPLAY_CHUNK)
USAGE = Usage(input_tokens=18_648, output_tokens=512, cached_input_tokens=12_400,
              cache_write_input_tokens=6_200, cache_write_5m_input_tokens=2_200,
              cache_write_1h_input_tokens=4_000, reasoning_tokens=128)


def make_records(n: int) -> list[CostRecord]:
    tenants = [f"tenant-{i}" for i in range(50)]
    return [CostRecord(provider="anthropic", api="messages", model="claude-sonnet-4-5",
                       usage=USAGE, tenant=tenants[i % 50], request_id=f"req-{i}",
                       method="POST", route="/v1/messages", status_code=200, streamed=True,
                       latency_ms=812.5, cost_usd=Decimal("0.072345678912"), price_version=7)
            for i in range(n)]


# -- sustained writes ------------------------------------------------------------------------


class BareTable:
    """``cost_records``' columns without keys or indexes, filled by the bare driver."""

    NAME = "bench_bare"

    def __init__(self, engine: sa.Engine, records: Sequence[CostRecord]) -> None:
        self._engine = engine
        self._table = sa.Table(self.NAME, sa.MetaData(),
                               *(sa.Column(c.name, c.type) for c in cost_records.columns))
        dialect = engine.dialect
        # The values as the driver takes them (money as REAL dollars beside its integer
        # companion, and datetime text, on SQLite), converted before any clock starts.
        processors = [c.type.dialect_impl(dialect).bind_processor(dialect)
                      for c in self._table.columns]
        self.rows = [tuple(v if p is None or v is None else p(v)
                           for p, v in zip(processors, record_row(r).values(), strict=True))
                     for r in records]
        names = ", ".join(c.name for c in self._table.columns)
        self._copy = f"COPY {self.NAME} ({names}) FROM STDIN (FORMAT BINARY)"
        marks = ", ".join("?" for _ in self._table.columns)
        self._insert = f"INSERT INTO {self.NAME} ({names}) VALUES ({marks})"

    def write_rate(self, batch: int) -> float:
        self._table.drop(self._engine, checkfirst=True)
        self._table.create(self._engine)
        fairy = self._engine.raw_connection()
        conn = fairy.driver_connection
        try:
            write = self._copy_batch if self._engine.dialect.name == "postgresql" \
                else self._insert_batch
            types = self._copy_types(conn) if self._engine.dialect.name == "postgresql" else []
            write(conn, self.rows[:batch], types)  # warm up outside the clock, as for ours
            started = time.perf_counter()
            for i in range(batch, len(self.rows), batch):
                write(conn, self.rows[i:i + batch], types)
            return (len(self.rows) - batch) / (time.perf_counter() - started)
        finally:
            fairy.close()

    def _insert_batch(self, conn: Any, rows: Sequence[tuple[Any, ...]], _types: list[int]) -> None:
        conn.executemany(self._insert, rows)
        conn.commit()

    def _copy_batch(self, conn: Any, rows: Sequence[tuple[Any, ...]], types: list[int]) -> None:
        with conn.cursor() as cursor, cursor.copy(self._copy) as copy:
            copy.set_types(types)
            for row in rows:
                copy.write_row(row)
        conn.commit()

    def _copy_types(self, conn: Any) -> list[int]:
        with conn.cursor() as cursor:
            cursor.execute("SELECT attname, atttypid FROM pg_attribute WHERE attrelid = "
                           "%s::regclass AND attnum > 0 AND NOT attisdropped", (self.NAME,))
            oids = dict(cursor.fetchall())
        conn.commit()
        return [int(oids[c.name]) for c in self._table.columns]


def sink_rate(engine: sa.Engine, records: Sequence[CostRecord], batch: int) -> float:
    cost_records.drop(engine, checkfirst=True)
    ensure_schema(engine)
    return timed_writes(SQLSink(engine), records, batch)


def timed_writes(sink: SQLSink, records: Sequence[CostRecord], batch: int) -> float:
    """Records/s ``sink`` writes ``records`` at, in batches; closes it. The first batch
    (connecting, warming up) is outside the clock."""
    try:
        sink.write(records[:batch])
        started = time.perf_counter()
        for i in range(batch, len(records), batch):
            sink.write(records[i:i + batch])
        return (len(records) - batch) / (time.perf_counter() - started)
    finally:
        sink.close()


def tracker_rate(url: str, records: Sequence[CostRecord], spool_dir: str) -> float:
    """Records/s through the whole worker, as an app runs it: ``CostTracker.record`` from this
    thread as fast as it goes, then the batcher prices each batch from the price table, writes
    it and counts its totals; the clock stops when ``flush`` says everything is stored."""
    engine = make_engine(url)
    cost_records.drop(engine, checkfirst=True)
    engine.dispose()
    settings = Settings(database_url=url, spool_dir=spool_dir, statsd_enabled=False)
    tracker = CostTracker(settings)
    try:
        warm = Settings().batch_size
        for r in records[:warm]:  # tables, the price cache and the connection, off the clock
            tracker.record(r)
        tracker.flush(60)
        started = time.perf_counter()
        for r in records[warm:]:
            tracker.record(r)
        if not tracker.flush(600):
            raise RuntimeError("the tracker did not flush in time")
        return (len(records) - warm) / (time.perf_counter() - started)
    finally:
        tracker.close()


def bench_writes(backend: str, url: str, n: int, quick: bool, spool_dir: str) -> list[Result]:
    engine = make_engine(url)
    records = make_records(n)
    bare = BareTable(engine, records)
    driver = "psycopg binary COPY" if engine.dialect.name == "postgresql" \
        else "sqlite3 executemany"
    results = []
    try:
        for batch in BATCHES:
            samplers = {"ours": partial(sink_rate, engine, records, batch),
                        "bare": partial(bare.write_rate, batch)}
            best = {k: max(v) for k, v in interleave(samplers, 2 if quick else 3).items()}
            results.append(Result(
                f"SQLSink.write, {backend}, batch {batch:,}", best["ours"], "records/s",
                f"{driver}, bare table", best["bare"], f"≥ {WRITE_LIMIT:,}/s",
                best["ours"] >= WRITE_LIMIT,
                f"{n:,} records per round; ours: unique key, 1 index, rows built in the clock"))
        # The same records through the worker: pricing included, whole batches coalesced.
        sustained = max(tracker_rate(url, records, spool_dir) for _ in range(2 if quick else 3))
        batch = Settings().batch_size
        results.append(Result(
            f"sustained worker rate, {backend} (price, write, count)", sustained, "records/s",
            f"SQLSink.write, batch {batch:,} (above)", results[0].value or 0.0,
            f"≥ {WRITE_LIMIT:,}/s", sustained >= WRITE_LIMIT,
            f"{n:,} records submitted at full speed from one thread; BATCH_SIZE {batch:,}, "
            "up to 10 batches per write while behind"))
    finally:
        engine.dispose()
    return results


# -- backlog and replay ----------------------------------------------------------------------


def peak_rss_kb() -> int:
    """This process's peak resident memory (``VmHWM``: unlike ``ru_maxrss``, not inherited
    from the parent that forked us)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def backlog_child(spool_dir: str, n: int, queue_size: int) -> None:
    """Submit ``n`` records while the database is down; print peak RSS and timings."""
    settings = Settings(statsd_enabled=False, queue_size=queue_size)

    def down() -> SQLSink:
        raise ConnectionError("database down")

    after_imports = peak_rss_kb()
    batcher = Batcher(down, settings, Metrics(settings), spool=Spool(spool_dir))
    started = time.perf_counter()
    for i in range(n):
        batcher.submit(CostRecord(provider="anthropic", api="messages", model="claude",
                                  usage=USAGE, tenant=f"t{i % 50}", route="/v1/messages",
                                  status_code=200, latency_ms=800.0))
    batcher.close(timeout=600)
    print(json.dumps({"after_imports_kb": after_imports, "peak_kb": peak_rss_kb(),
                      "seconds": time.perf_counter() - started}))


@dataclass(frozen=True, slots=True)
class Backlog:
    records: int
    peak_mb: float
    after_imports_mb: float
    seconds: float


def run_backlog(spool_dir: str, n: int, queue_size: int) -> Backlog:
    done = subprocess.run([sys.executable, __file__, "--backlog-child", spool_dir, str(n),
                           str(queue_size)], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return Backlog(n, result["peak_kb"] / 1024, result["after_imports_kb"] / 1024,
                   result["seconds"])


def bench_backlog(directory: Path, n: int, queue_size: int) -> tuple[Result, str]:
    """The RSS row, and the spool directory the full backlog left."""
    half = run_backlog(str(directory / "half"), n // 2, queue_size)
    spool_dir = str(directory / "spool")
    full = run_backlog(spool_dir, n, queue_size)
    status = Spool(spool_dir).status()
    return Result(
        f"peak RSS, backlog of {n:,} records, database down", full.peak_mb, "MB",
        f"backlog of {half.records:,}", half.peak_mb,
        f"≤ {RSS_FACTOR:g}x: bounded by QUEUE_SIZE", full.peak_mb <= half.peak_mb * RSS_FACTOR,
        f"QUEUE_SIZE {queue_size:,}; {full.after_imports_mb:.0f} MB after imports; spooled "
        f"{status.records:,} records ({status.bytes / 1e6:.0f} MB) at "
        f"{n / full.seconds:,.0f}/s"), spool_dir


def bench_replay(backend: str, url: str, spool_dir: str, copy_to: Path, records: int,
                 write_rate: float) -> Result:
    shutil.copytree(spool_dir, copy_to)
    engine = make_engine(url)
    cost_records.drop(engine, checkfirst=True)
    ensure_schema(engine)
    sink = SQLSink(engine)
    try:
        started = time.perf_counter()
        replayed = Spool(str(copy_to)).replay(sink, max_records=records)
        elapsed = time.perf_counter() - started
    finally:
        sink.close()
        engine.dispose()
    return Result(f"spool replay into {backend}", replayed / elapsed, "records/s",
                  f"SQLSink.write, batch {REPLAY_CHUNK:,} (above)", write_rate,
                  notes=f"{replayed:,} records in {elapsed:.1f} s, decoding included")


def run(quick: bool) -> list[Result]:
    n, backlog, replayed = (20_000, 100_000, 40_000) if quick else (100_000, 1_000_000, 200_000)
    # Quick mode keeps the backlog ten times the queue with a smaller queue.
    queue_size = 10_000 if quick else Settings().queue_size
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp, postgres_database() as pg_url:
        directory = Path(tmp)
        urls = {"SQLite": f"sqlite:///{directory / 'bench.db'}", "PostgreSQL": pg_url}
        chunk_rates: dict[str, float] = {}
        for backend, url in urls.items():
            if url is None:
                results += [Result.skipped(f"SQLSink.write, {backend}, batch {b:,}",
                                           "records/s", NO_POSTGRES) for b in BATCHES]
                results.append(Result.skipped(
                    f"sustained worker rate, {backend} (price, write, count)", "records/s",
                    NO_POSTGRES))
                continue
            rows = bench_writes(backend, url, n, quick, str(directory / f"spool-{backend}"))
            chunk_rates[backend] = rows[BATCHES.index(REPLAY_CHUNK)].value or 0.0
            results += rows
        rss, spool_dir = bench_backlog(directory, backlog, queue_size)
        results.append(rss)
        for backend, url in urls.items():
            if url is None:
                results.append(Result.skipped(f"spool replay into {backend}", "records/s",
                                              NO_POSTGRES))
            else:
                results.append(bench_replay(backend, url, spool_dir, directory / backend,
                                            replayed, chunk_rates[backend]))
    return results


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--backlog-child":
        backlog_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        standalone(run, "storage: sustained writes, spool replay and backlog memory")


if __name__ == "__main__":
    main()
