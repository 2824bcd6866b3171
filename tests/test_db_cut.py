"""A database cut at the worst moment: every stored record counted once, and a quiet log.

PostgreSQL sits behind the cuttable proxy (tests/faults.py). The hard case is a write whose
commit happened but whose answer was lost: the worker sees an error and spools the batch, the
replay then finds every record already stored. Those records must be counted once (as
replayed: nothing counted them when they were stored) and reach the after-write hook once, so
``records.written + records.replayed`` equals the rows and the cost totals equal the ledger.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import wait_for
from faults import Proxy

from cost_middleware.config import Settings
from cost_middleware.engine.batcher import Batcher, InDoubt, ReplaySink
from cost_middleware.engine.spool import Spool
from cost_middleware.metrics import Metrics
from cost_middleware.records import CostRecord
from cost_middleware.schema import cost_records
from cost_middleware.storage.engine import ensure_schema, make_engine
from cost_middleware.storage.sinks import MemorySink, SQLSink
from cost_middleware.usage.model import Usage


def record(i: int = 0) -> CostRecord:
    return CostRecord(provider="openai", api="chat", model="gpt-4o", tenant="acme",
                      usage=Usage(input_tokens=i + 1, output_tokens=1),
                      record_id=uuid.uuid4().hex)


@pytest.fixture
def db(pg_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(pg_url)
    ensure_schema(engine)
    yield engine
    engine.dispose()


def row_count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(cost_records)).scalar_one())


# -- the accounting, without a server ------------------------------------------------------


def test_a_replay_counts_records_a_lost_answer_stored_once_and_true_duplicates_never() -> None:
    sink = MemorySink()
    lost, counted, new = [record(i) for i in range(3)], [record(9)], [record(7), record(8)]
    sink.write(lost + counted)  # `lost`: committed, answer lost; `counted`: counted already
    doubt = InDoubt()
    doubt.add(lost)
    seen: list[str] = []
    replay = ReplaySink(sink, lambda rs: None, lambda rs: seen.extend(r.record_id for r in rs),
                        doubt)
    assert replay.write(lost + counted + new) == len(lost) + len(new)
    assert sorted(seen) == sorted(r.record_id for r in lost + new)
    assert len(sink.records) == 6
    # Settled: a second replay of the same records (a crash before its progress was saved)
    # finds only duplicates.
    seen.clear()
    assert replay.write(lost + new) == 0 and seen == []


def test_a_failed_replay_leaves_its_records_in_doubt() -> None:
    class Failing(MemorySink):
        def write(self, records: object) -> int:
            super().write(records)  # type: ignore[arg-type]
            raise ConnectionError("the answer was lost")

    sink, doubt = Failing(), InDoubt()
    batch = [record(i) for i in range(4)]
    with pytest.raises(ConnectionError):
        ReplaySink(sink, lambda rs: None, lambda rs: None, doubt).write(batch)
    assert doubt.settle({r.record_id for r in batch}) == {r.record_id for r in batch}


def test_in_doubt_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(InDoubt, "LIMIT", 10)
    doubt = InDoubt()
    batch = [record(i) for i in range(25)]
    doubt.add(batch)
    ids = {r.record_id for r in batch}
    assert doubt.settle(ids) == {r.record_id for r in batch[-10:]}


# -- against PostgreSQL, cut at the commit -------------------------------------------------


def test_a_commit_whose_answer_is_lost_is_counted_once(
        proxy: Proxy, pg_url: str, db: sa.Engine, tmp_path: Path) -> None:
    settings = Settings(batch_size=200, flush_interval=0.1, shutdown_timeout=10,
                        statsd_enabled=True)
    metrics = Metrics(settings)
    engine = make_engine(proxy.url(pg_url))
    hooked: list[str] = []
    b = Batcher(lambda: SQLSink(engine), settings, metrics,
                written=lambda rs: hooked.extend(r.record_id for r in rs),
                spool=Spool(str(tmp_path / "spool"), metrics))
    try:
        for i in range(200):
            b.submit(record(i))
        assert b.flush(10)
        proxy.cut_on_reply(b"COPY ")  # the next COPY commits, its answer never arrives
        for i in range(200):
            b.submit(record(i))
        assert b.flush(10)
        assert proxy.cut_replies == 1
        for i in range(200):
            b.submit(record(i))
        assert b.flush(10)
        assert wait_for(lambda: metrics.snapshot()["counters"].get("records.replayed", 0)
                        + metrics.snapshot()["counters"].get("records.written", 0) >= 600, 30)
    finally:
        b.close()
        engine.dispose()
    counters = metrics.snapshot()["counters"]
    assert counters["batch.failed"] >= 1 and counters["records.spooled"] >= 200
    assert row_count(db) == 600
    assert counters["records.written"] + counters["records.replayed"] == 600, counters
    assert counters.get("records.duplicates", 0) == 0
    assert len(hooked) == len(set(hooked)) == 600


def test_a_cut_logs_no_traceback(proxy: Proxy, pg_url: str, db: sa.Engine, tmp_path: Path,
                                 caplog: pytest.LogCaptureFixture) -> None:
    """Every pooled and detached connection broken at once: one line each way, no trace."""
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.pool")
    caplog.set_level(logging.INFO, logger="cost_middleware")
    settings = Settings(batch_size=50, flush_interval=0.05, shutdown_timeout=10,
                        statsd_enabled=False)
    engine = make_engine(proxy.url(pg_url))
    b = Batcher(lambda: SQLSink(engine), settings, Metrics(settings),
                spool=Spool(str(tmp_path / "spool"), None))
    try:
        submitted = 0

        def run(seconds: float) -> None:
            nonlocal submitted
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                for _ in range(10):
                    b.submit(record(submitted))
                    submitted += 1
                # Pooled connections too (price lookups use the pool): check one out now.
                try:
                    with engine.connect() as conn:
                        conn.execute(sa.text("SELECT 1"))
                except sa.exc.OperationalError:
                    pass
                time.sleep(0.02)

        run(1.0)
        proxy.cut()
        run(1.5)
        proxy.restore()
        run(1.0)
        assert b.flush(20)
        assert wait_for(lambda: row_count(db) == submitted, 30)
    finally:
        b.close()
        engine.dispose()
    traced = [r for r in caplog.records if r.exc_info or "Exception during reset" in r.message]
    assert traced == [], [r.getMessage() for r in traced]
    ours = [r for r in caplog.records if r.name == "cost_middleware"
            and r.levelno >= logging.WARNING]
    assert 1 <= len(ours) <= 3, [r.getMessage() for r in ours]
    assert all("\n" not in r.getMessage() for r in ours)
