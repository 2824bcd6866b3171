"""Storage benchmarks: sustained writes into SQLite and PostgreSQL, spool replay, backlog RSS.

    python benchmarks/bench_storage.py [--records N] [--backlog N] [--pg URL] [--quick]

Target (DESIGN): >= 100,000 records/s into PostgreSQL and into SQLite from one process.
Each write figure is ``SQLSink.write`` on a fresh table (record to row included), at batch
500 and 5000, with the record ids ``records.new_record_id`` makes and with time-ordered ids
(which keep B-tree inserts local). The backlog part submits ``--backlog`` records to a
``Batcher`` whose database is down, in a child process, and reports its peak RSS (bounded by
QUEUE_SIZE, not by the backlog) and the spool size, then replays the spool into each
database. PostgreSQL runs in a database this script creates and drops (admin URL from
--pg, ``COST_MIDDLEWARE_TEST_PG`` or ``postgresql+psycopg://postgres@127.0.0.1:5432/test``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa

from cost_middleware.batcher import Batcher
from cost_middleware.config import Settings
from cost_middleware.metrics import Metrics
from cost_middleware.records import CostRecord, new_record_id
from cost_middleware.schema import metadata
from cost_middleware.spool import Spool
from cost_middleware.storage import SQLSink, ensure_schema, make_engine
from cost_middleware.usage.model import Usage

PG_ADMIN_URL = os.environ.get("COST_MIDDLEWARE_TEST_PG",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")
USAGE = Usage(input_tokens=18_648, output_tokens=512, cached_input_tokens=12_400,
              cache_write_input_tokens=6_200, cache_write_5m_input_tokens=2_200,
              cache_write_1h_input_tokens=4_000, reasoning_tokens=128)


def time_ordered_id() -> str:
    """48 bits of milliseconds then 80 random bits, as hex (the UUIDv7 layout)."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


def make_records(n: int, ids: Callable[[], str]) -> list[CostRecord]:
    tenants = [f"tenant-{i}" for i in range(50)]
    return [CostRecord(provider="anthropic", api="messages", model="claude-sonnet-4-5",
                       usage=USAGE, tenant=tenants[i % 50], request_id=f"req-{i}",
                       method="POST", route="/v1/messages", status_code=200, streamed=True,
                       latency_ms=812.5, cost_usd=Decimal("0.072345678912"), price_version=7,
                       record_id=ids())
            for i in range(n)]


def write_rate(engine: sa.Engine, records: Sequence[CostRecord], batch: int) -> float:
    metadata.drop_all(engine)
    ensure_schema(engine)
    sink = SQLSink(engine)
    sink.write(records[:batch])  # connect and warm up outside the clock
    started = time.perf_counter()
    for i in range(batch, len(records), batch):
        sink.write(records[i:i + batch])
    elapsed = time.perf_counter() - started
    sink.close()
    return (len(records) - batch) / elapsed


def bench_writes(name: str, engine: sa.Engine, n: int) -> None:
    for label, ids in (("default ids", new_record_id), ("time-ordered ids", time_ordered_id)):
        records = make_records(n, ids)
        for batch in (500, 5000):
            rate = write_rate(engine, records, batch)
            print(f"  {name:<10} write  batch {batch:>5}  {label:<17} {rate:>10,.0f} records/s")


def peak_rss_kb() -> int:
    """This process's peak resident memory (``VmHWM``: unlike ``ru_maxrss``, not inherited
    from the parent that forked us)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def backlog_child(spool_dir: str, n: int) -> None:
    """Submit ``n`` records while the database is down; print peak RSS and timings."""
    settings = Settings(statsd_enabled=False)

    def down() -> SQLSink:
        raise ConnectionError("database down")

    baseline = peak_rss_kb()
    batcher = Batcher(down, settings, Metrics(settings), spool=Spool(spool_dir))
    started = time.perf_counter()
    for i in range(n):
        batcher.submit(CostRecord(provider="anthropic", api="messages", model="claude",
                                  usage=USAGE, tenant=f"t{i % 50}", route="/v1/messages",
                                  status_code=200, latency_ms=800.0))
    submitted = time.perf_counter() - started
    batcher.close(timeout=600)
    total = time.perf_counter() - started
    print(json.dumps({"baseline_kb": baseline, "peak_kb": peak_rss_kb(),
                      "submit_s": submitted, "total_s": total}))


def bench_backlog(n: int, urls: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        spool_dir = str(Path(directory) / "spool")
        done = subprocess.run([sys.executable, __file__, "--backlog-child", spool_dir, str(n)],
                              capture_output=True, text=True, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        status = Spool(spool_dir).status()
        print(f"  backlog of {n:,} records while the database is down "
              f"(QUEUE_SIZE {Settings().queue_size:,}):")
        print(f"    peak RSS {result['peak_kb'] / 1024:,.0f} MB "
              f"(after imports {result['baseline_kb'] / 1024:,.0f} MB); spooled "
              f"{status.records:,} records in {status.files} file(s), "
              f"{status.bytes / 1e6:,.0f} MB, at {n / result['total_s']:,.0f} records/s")
        for name, url in urls.items():
            copy = Path(directory) / f"copy-{name}"
            subprocess.run(["cp", "-r", spool_dir, str(copy)], check=True)
            engine = make_engine(url)
            metadata.drop_all(engine)
            ensure_schema(engine)
            sink = SQLSink(engine)
            started = time.perf_counter()
            replayed = Spool(str(copy)).replay(sink)
            elapsed = time.perf_counter() - started
            sink.close()
            engine.dispose()
            print(f"    replay into {name:<10} {replayed / elapsed:>10,.0f} records/s "
                  f"({replayed:,} in {elapsed:.1f} s)")


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str | None]:
    try:
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect():
            pass
    except Exception as error:
        print(f"  postgresql skipped: {type(error).__name__}")
        yield None
        return
    db = f"cm_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{db}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{db}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--backlog-child":
        backlog_child(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000, help="records per write run")
    parser.add_argument("--backlog", type=int, default=1_000_000, help="records spooled")
    parser.add_argument("--pg", default=PG_ADMIN_URL, help="PostgreSQL admin URL")
    parser.add_argument("--quick", action="store_true", help="20,000 records, 100,000 backlog")
    args = parser.parse_args()
    records, backlog = (20_000, 100_000) if args.quick else (args.records, args.backlog)
    with tempfile.TemporaryDirectory() as directory, postgres_database(args.pg) as pg_url:
        urls = {"sqlite": f"sqlite:///{directory}/bench.db"}
        if pg_url is not None:
            urls["postgresql"] = pg_url
        print(f"sustained writes ({records:,} records per run; target >= 100,000/s):")
        for name, url in urls.items():
            engine = make_engine(url)
            bench_writes(name, engine, records)
            engine.dispose()
        print("spool:")
        bench_backlog(backlog, urls)


if __name__ == "__main__":
    main()
