"""batcher.py: batching by size and age, flush/close, failures, overflow, fork, metrics."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import wait_for

from cost_middleware.config import Settings
from cost_middleware.engine.batcher import Batcher
from cost_middleware.engine.spool import Spool
from cost_middleware.metrics import Metrics
from cost_middleware.records import CostRecord
from cost_middleware.storage.sinks import MemorySink
from cost_middleware.usage.model import Usage

ROOT = Path(__file__).resolve().parent.parent


class RecordingSink(MemorySink):
    """A memory sink that can fail or hang on demand and remembers its batch sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.down = False
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def write(self, records: Sequence[CostRecord]) -> int:
        self.entered.set()
        self.gate.wait()
        if self.down:
            raise ConnectionError("database down")
        self.batches.append(len(records))
        return super().write(records)


def record(i: int = 0) -> CostRecord:
    return CostRecord(provider="openai", api="chat", model="gpt-4o",
                      usage=Usage(input_tokens=i, output_tokens=1), record_id=uuid.uuid4().hex)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(Settings(statsd_enabled=True))


@pytest.fixture
def make(metrics: Metrics, tmp_path: Path) -> Iterator[Callable[..., Batcher]]:
    made: list[Batcher] = []

    def build(sink: MemorySink, *, spool: bool = True,
              process: Callable[[list[CostRecord]], None] | None = None,
              **overrides: object) -> Batcher:
        values: dict[str, object] = dict(batch_size=10, flush_interval=60.0, queue_size=1000,
                                         shutdown_timeout=5.0)
        values.update(overrides)
        settings = Settings(**values)  # type: ignore[arg-type]
        b = Batcher(lambda: sink, settings, metrics, process=process,
                    spool=Spool(str(tmp_path / "spool"), metrics) if spool else None)
        made.append(b)
        return b

    yield build
    for b in made:
        b.close(timeout=1.0)


def counters(metrics: Metrics) -> dict[str, float]:
    return metrics.snapshot()["counters"]


def test_full_batches_are_written_without_waiting(make: Callable[..., Batcher]) -> None:
    sink = RecordingSink()
    b = make(sink)
    for i in range(25):
        b.submit(record(i))
    assert wait_for(lambda: len(sink.records) == 20)
    time.sleep(0.2)
    # Two full batches, in one write or two (the worker takes whole batches that are
    # waiting together); the partial batch waits for the interval.
    assert sum(sink.batches) == 20 and all(n % 10 == 0 for n in sink.batches)
    assert b.flush(5)
    assert sink.batches[-1] == 5 and sum(sink.batches) == 25


def test_a_writer_that_fell_behind_catches_up_in_larger_writes(
        make: Callable[..., Batcher]) -> None:
    sink = RecordingSink()
    b = make(sink)
    sink.gate.clear()  # the database is slow: the first write hangs
    for i in range(10):
        b.submit(record(i))
    assert sink.entered.wait(5)
    for i in range(10, 1_000):
        b.submit(record(i))  # 99 batches' worth queue up behind it
    sink.gate.set()
    assert wait_for(lambda: len(sink.records) == 1_000)
    assert sink.batches == [10] + [100] * 9 + [90]  # at most 10 batches per write
    assert [r.usage.input_tokens for r in sink.records if r.usage] == list(range(1_000))


def test_records_arriving_during_an_interval_flush_wait_for_a_full_batch(
        make: Callable[..., Batcher]) -> None:
    """Under steady traffic, an interval flush must not chase the records that arrive while
    it writes: that wrote batches of a few records each for as long as traffic lasted."""
    sink = RecordingSink()
    b = make(sink, batch_size=100)
    arrivals = iter(range(1_000, 1_300))
    original = sink.write

    def write_while_traffic_arrives(records: Sequence[CostRecord]) -> int:
        for _ in range(3):  # three requests finish during each write
            i = next(arrivals, None)
            if i is not None:
                b.submit(record(i))
        return original(records)

    sink.write = write_while_traffic_arrives  # type: ignore[method-assign]
    for i in range(40):
        b.submit(record(i))
    assert b.flush(5)  # the drain an interval triggers
    time.sleep(0.2)
    assert sink.batches == [40]  # the 3 that arrived meanwhile wait for the next batch
    assert len(b._queue) == 3


def test_a_partial_batch_is_written_after_the_interval(make: Callable[..., Batcher]) -> None:
    sink = RecordingSink()
    b = make(sink, batch_size=1000, flush_interval=0.1)
    for i in range(3):
        b.submit(record(i))
    assert wait_for(lambda: len(sink.records) == 3, timeout=3)


def test_close_flushes_and_later_records_are_spooled(make: Callable[..., Batcher],
                                                     tmp_path: Path) -> None:
    sink = RecordingSink()
    b = make(sink)
    first = [record(i) for i in range(7)]
    for r in first:
        b.submit(r)
    b.close()
    assert [r.record_id for r in sink.records] == [r.record_id for r in first]
    assert sink.closed
    b.close()  # idempotent
    late = record(99)
    b.submit(late)  # never lost: straight to the spool
    assert b.flush(1)
    again = RecordingSink()
    fresh = make(again)
    fresh.start()  # replays what is left in the spool directory
    assert wait_for(lambda: len(again.records) == 1)
    assert again.records[0].record_id == late.record_id


def test_flush_with_nothing_submitted(make: Callable[..., Batcher]) -> None:
    b = make(RecordingSink())
    assert b.flush(0.1)


def test_process_prices_each_batch_in_the_worker(make: Callable[..., Batcher]) -> None:
    seen: list[str] = []

    def price(batch: list[CostRecord]) -> None:
        seen.append(threading.current_thread().name)
        for r in batch:
            r.cost_usd = Decimal("0.5")

    sink = RecordingSink()
    b = make(sink, process=price)
    for i in range(12):
        b.submit(record(i))
    assert b.flush(5)
    assert all(r.cost_usd == Decimal("0.5") for r in sink.records) and len(sink.records) == 12
    assert seen == ["cost-middleware-writer"] * 2


def test_a_failing_process_is_logged_once_and_records_are_written_unpriced(
    make: Callable[..., Batcher], caplog: pytest.LogCaptureFixture
) -> None:
    def broken(batch: list[CostRecord]) -> None:
        raise RuntimeError("price book unavailable")

    sink = RecordingSink()
    b = make(sink, process=broken)
    with caplog.at_level(logging.ERROR, logger="cost_middleware"):
        for i in range(30):
            b.submit(record(i))
        assert b.flush(5)
    assert len(sink.records) == 30 and all(r.cost_usd is None for r in sink.records)
    assert sum("processing a batch failed" in m for m in caplog.messages) == 1


def test_tick_runs_every_interval_and_is_guarded(
    metrics: Metrics, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ticks: list[float] = []

    def tick() -> None:
        ticks.append(time.monotonic())
        raise RuntimeError("statsd exploded")

    sink = RecordingSink()
    b = Batcher(lambda: sink, Settings(flush_interval=0.05, batch_size=5), metrics, tick=tick)
    with caplog.at_level(logging.ERROR, logger="cost_middleware"):
        b.start()
        assert wait_for(lambda: len(ticks) >= 5, timeout=5)
        b.submit(record())
        assert b.flush(5)
        b.close()
    assert len(sink.records) == 1
    assert sum("periodic tick failed" in m for m in caplog.messages) == 1


def test_an_outage_spools_then_everything_is_replayed_once(
    make: Callable[..., Batcher], metrics: Metrics
) -> None:
    sink = RecordingSink()
    b = make(sink, flush_interval=0.05)
    submitted = []
    for i in range(20):
        submitted.append(record(i))
        b.submit(submitted[-1])
    assert b.flush(5)
    sink.down = True
    for i in range(200):
        submitted.append(record(i))
        b.submit(submitted[-1])
    assert b.flush(5)  # spooled counts as handled
    assert len(sink.records) == 20
    sink.down = False
    assert wait_for(lambda: len(sink.records) == 220, timeout=15)
    assert sorted(r.record_id for r in sink.records) == sorted(r.record_id for r in submitted)
    # The spool counts a replayed chunk just after the sink stored it.
    assert wait_for(lambda: counters(metrics).get("records.replayed", 0) >= 200)
    c = counters(metrics)
    assert c["batch.failed"] >= 1
    assert c["records.spooled"] >= 200
    assert c["records.replayed"] >= 200
    assert c["records.written"] + c["records.replayed"] == 220  # rows inserted
    assert c["records.enqueued"] == 220


def test_a_full_queue_spills_to_the_spool_without_blocking(
    make: Callable[..., Batcher], metrics: Metrics
) -> None:
    sink = RecordingSink()
    sink.gate.clear()  # the worker hangs in its first write, as on a dead network
    b = make(sink, queue_size=100, batch_size=10)
    submitted = [record(i) for i in range(2000)]
    slowest = 0.0
    for r in submitted[:10]:
        b.submit(r)
    assert sink.entered.wait(5)
    for r in submitted[10:]:
        started = time.perf_counter()
        b.submit(r)
        slowest = max(slowest, time.perf_counter() - started)
    assert slowest < 1.0  # at most one disk write, never a wait on the database
    c = counters(metrics)
    assert c["records.spooled"] >= 2000 - 100 - 100 - 10
    sink.gate.set()
    assert wait_for(lambda: len(sink.records) == 2000, timeout=20)
    assert sorted(r.record_id for r in sink.records) == sorted(r.record_id for r in submitted)


def test_close_spools_what_a_stuck_worker_holds(make: Callable[..., Batcher],
                                                tmp_path: Path) -> None:
    sink = RecordingSink()
    sink.gate.clear()
    b = make(sink, batch_size=5)
    submitted = [record(i) for i in range(12)]
    for r in submitted:
        b.submit(r)
    assert sink.entered.wait(5)
    started = time.monotonic()
    b.close(timeout=0.3)
    assert time.monotonic() - started < 3
    sink.gate.set()  # the hung call finally returns: those records may now be stored twice
    again = RecordingSink()
    fresh = make(again)
    fresh.start()
    wanted = {r.record_id for r in submitted}
    assert wait_for(lambda: {r.record_id for r in [*sink.records, *again.records]} == wanted)


def test_flush_reports_a_timeout(make: Callable[..., Batcher]) -> None:
    sink = RecordingSink()
    sink.gate.clear()
    b = make(sink, batch_size=1)
    b.submit(record())
    assert sink.entered.wait(5)
    b.submit(record())
    assert not b.flush(0.1)
    sink.gate.set()
    assert b.flush(5)


def test_without_a_spool_failed_records_are_counted_as_dropped(
    make: Callable[..., Batcher], metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    sink = RecordingSink()
    sink.down = True
    b = make(sink, spool=False)
    with caplog.at_level(logging.ERROR, logger="cost_middleware"):
        for i in range(15):
            b.submit(record(i))
        assert b.flush(5)
    assert counters(metrics)["records.dropped"] == 15
    assert any("record(s) lost" in m for m in caplog.messages)


def test_an_unusable_spool_counts_and_logs_and_submit_never_raises(
    metrics: Metrics, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    sink = RecordingSink()
    sink.down = True
    b = Batcher(lambda: sink, Settings(batch_size=10, queue_size=50), metrics,
                spool=Spool(str(blocker / "spool"), metrics))
    with caplog.at_level(logging.ERROR, logger="cost_middleware"):
        for i in range(500):
            b.submit(record(i))
        b.close(timeout=5)
        b.submit(record())
    assert counters(metrics)["records.dropped"] == 501
    assert any("record(s) lost" in m for m in caplog.messages)


def test_an_unusable_spool_does_not_stop_healthy_writes(metrics: Metrics,
                                                         tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    sink = RecordingSink()
    b = Batcher(lambda: sink, Settings(batch_size=10), metrics,
                spool=Spool(str(blocker / "spool"), metrics))
    b.start()  # its first replay finds no readable directory: not a database failure
    for i in range(35):
        b.submit(record(i))
    assert b.flush(5)
    b.close()
    assert len(sink.records) == 35
    assert "records.dropped" not in counters(metrics)
    assert "batch.failed" not in counters(metrics)


def test_a_sink_factory_failure_is_a_write_failure(metrics: Metrics, tmp_path: Path) -> None:
    def no_database() -> MemorySink:
        raise OSError("connection refused")

    b = Batcher(no_database, Settings(batch_size=5), metrics,
                spool=Spool(str(tmp_path / "spool"), metrics))
    for i in range(5):
        b.submit(record(i))
    assert b.flush(5)
    b.close()
    assert counters(metrics)["records.spooled"] == 5
    assert Spool(str(tmp_path / "spool")).status().records == 5


def test_at_start_earlier_records_are_replayed_and_priced(metrics: Metrics,
                                                          tmp_path: Path) -> None:
    left = [record(i) for i in range(30)]
    previous = Spool(str(tmp_path / "spool"))
    previous.append(left)
    previous.close()

    def price(batch: list[CostRecord]) -> None:
        for r in batch:
            r.cost_usd = Decimal(1)

    sink = RecordingSink()
    b = Batcher(lambda: sink, Settings(), metrics, process=price,
                spool=Spool(str(tmp_path / "spool"), metrics))
    b.start()
    assert wait_for(lambda: len(sink.records) == 30)
    assert all(r.cost_usd == Decimal(1) for r in sink.records)
    b.close()


def test_metrics(make: Callable[..., Batcher], metrics: Metrics) -> None:
    sink = RecordingSink()
    b = make(sink, flush_interval=0.05)
    batch = [record(i) for i in range(25)]
    for r in batch:
        b.submit(r)
    assert b.flush(5)
    sink.write(batch[:3])  # already stored: the next write of them counts duplicates
    for r in batch[:3]:
        b.submit(r)
    assert b.flush(5)
    assert wait_for(lambda: "queue.depth" in metrics.snapshot()["gauges"])
    snap = metrics.snapshot()
    assert snap["counters"]["records.enqueued"] == 28
    assert snap["counters"]["records.written"] == 25
    assert snap["counters"]["records.duplicates"] == 3
    assert len(snap["timings"]["batch.flush"]) >= 3


def test_atexit_hook_closes_live_batchers(tmp_path: Path) -> None:
    # The one atexit hook is the tracker's: closing a tracker closes (flushes) its batcher.
    from cost_middleware.engine import tracker as tracker_module
    from cost_middleware.engine.tracker import CostTracker
    from cost_middleware.pricing.book import PriceBook
    from cost_middleware.pricing.sources import MemoryPriceSource

    sink = RecordingSink()
    settings = Settings(batch_size=10, flush_interval=60.0, statsd_enabled=False,
                        spool_dir=str(tmp_path / "spool"))
    tracker = CostTracker(settings, sink=sink, price_book=PriceBook(MemoryPriceSource()))
    tracker.record(record())
    tracker_module._close_all()
    assert len(sink.records) == 1 and sink.closed


FORK_SCRIPT = """
import os, sys
from collections.abc import Sequence
from cost_middleware.engine.batcher import Batcher
from cost_middleware.config import Settings
from cost_middleware.metrics import Metrics
from cost_middleware.records import CostRecord
from cost_middleware.engine.spool import Spool
directory = sys.argv[1]

class FileSink:
    # Appends the ids it is given to a file named after the writing process.
    def write(self, records: Sequence[CostRecord]) -> int:
        with open(os.path.join(directory, f"written-{os.getpid()}"), "a") as f:
            f.writelines(r.record_id + "\\n" for r in records)
        return len(records)
    def stored(self, record_ids: Sequence[str]) -> set[str]:
        return set()
    def close(self) -> None:
        pass

settings = Settings(batch_size=1000, flush_interval=60, statsd_enabled=False)
b = Batcher(FileSink, settings, Metrics(settings), spool=Spool(os.path.join(directory, "spool")))
def submit(n):
    out = []
    for _ in range(n):
        r = CostRecord(provider="p", api="a", model=None, usage=None)
        b.submit(r)
        out.append(r.record_id)
    return out
parent = submit(50)  # still queued in memory when the process forks
pid = os.fork()
if pid == 0:
    child = submit(7)
    b.close()
    with open(os.path.join(directory, "child-submitted"), "w") as f:
        f.write("\\n".join(child))
    os._exit(0)
os.waitpid(pid, 0)
b.close()
with open(os.path.join(directory, "parent-submitted"), "w") as f:
    f.write("\\n".join(parent))
print(pid)
"""


def test_a_forked_child_writes_only_its_own_records(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", FORK_SCRIPT, str(tmp_path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    child_pid = int(done.stdout.strip())
    written = {p.name: p.read_text().split() for p in tmp_path.glob("written-*")}
    child = written.pop(f"written-{child_pid}")
    (parent,) = written.values()
    assert child == (tmp_path / "child-submitted").read_text().split()
    assert parent == (tmp_path / "parent-submitted").read_text().split()
    assert set(child).isdisjoint(parent)
