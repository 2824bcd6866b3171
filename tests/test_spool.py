"""spool.py: lossless lines, oldest-first replay, locking, resumable progress, bad disks."""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cost_middleware.config import Settings
from cost_middleware.engine import spool as spool_module
from cost_middleware.engine.spool import Spool, SpoolError, _Decoder, encode
from cost_middleware.metrics import Metrics
from cost_middleware.records import CostRecord
from cost_middleware.storage.sinks import MemorySink
from cost_middleware.usage.model import Usage

ROOT = Path(__file__).resolve().parent.parent


def make_metrics() -> Metrics:
    return Metrics(Settings(statsd_enabled=True))


def records(n: int, tag: str = "t") -> list[CostRecord]:
    return [CostRecord(provider="openai", api=tag, model="gpt-4o",
                       usage=Usage(input_tokens=i, output_tokens=2 * i),
                       cost_usd=Decimal(i).scaleb(-12), record_id=uuid.uuid4().hex)
            for i in range(n)]


def ids(items: Sequence[CostRecord]) -> list[str]:
    return [r.record_id for r in items]


def spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.spool"))


class FailingSink(MemorySink):
    """Fails on the given write calls (1-based)."""

    def __init__(self, fail_on: set[int]) -> None:
        super().__init__()
        self.calls = 0
        self.fail_on = fail_on

    def write(self, records: Sequence[CostRecord]) -> int:
        self.calls += 1
        if self.calls in self.fail_on:
            raise ConnectionError("database down")
        return super().write(records)


big = st.integers(-(2**70), 2**70)
maybe = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))
decimals = st.decimals(allow_nan=False)
usages = st.builds(
    Usage, input_tokens=big, output_tokens=big, cached_input_tokens=big,
    cache_write_input_tokens=st.integers(0, 10**9), cache_write_5m_input_tokens=maybe,
    cache_write_1h_input_tokens=maybe, reasoning_tokens=st.one_of(st.none(), st.just(0), big),
    web_search_requests=maybe, reported_cost_usd=st.one_of(st.none(), decimals),
)
cost_records_strategy = st.builds(
    CostRecord, provider=st.text(), api=st.text(), model=st.one_of(st.none(), st.text()),
    usage=st.one_of(st.none(), usages), tenant=st.one_of(st.none(), st.text()),
    status_code=maybe, streamed=st.booleans(), partial=st.booleans(),
    latency_ms=st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
    created_at=st.one_of(st.datetimes(), st.datetimes(timezones=st.timezones())),
    cost_usd=st.one_of(st.none(), decimals), price_version=maybe,
    record_id=st.uuids().map(lambda u: u.hex),
)


@settings(max_examples=100, deadline=None)
@given(cost_records_strategy)
def test_lines_are_lossless(record: CostRecord) -> None:
    back = _Decoder(spool_module._SCHEMA_LINE).decode(encode(record))
    assert back is not None
    if record.created_at.tzinfo is not None:  # the same instant, kept as UTC
        assert back.created_at.tzinfo is UTC
        # (compared in UTC: Python calls times in a DST gap unequal across zones)
        record = dataclasses.replace(record, created_at=record.created_at.astimezone(UTC))
    assert back == record
    assert str(back.cost_usd) == str(record.cost_usd)  # same digits, not only same value


def test_unpaired_surrogates_are_replaced_not_fatal() -> None:
    record = CostRecord(provider="a\ud800b", api="chat", model=None, usage=None)
    back = _Decoder(spool_module._SCHEMA_LINE).decode(encode(record))
    assert back is not None and back.provider == "a?b"


def test_append_then_replay_in_order_across_files(tmp_path: Path) -> None:
    metrics = make_metrics()
    writers = [Spool(str(tmp_path), metrics) for _ in range(3)]
    appended: dict[int, list[str]] = {0: [], 1: [], 2: []}
    for _ in range(2):
        for i, writer in enumerate(writers):
            batch = records(4, f"w{i}")
            writer.append(batch)
            appended[i] += ids(batch)
    for writer in writers:
        writer.close()
    sink = MemorySink()
    assert Spool(str(tmp_path), metrics).replay(sink) == 24
    # Oldest file first (writer 0 created its file first), each file in append order.
    assert ids(sink.records) == appended[0] + appended[1] + appended[2]
    assert spool_files(tmp_path) == []
    counters = metrics.snapshot()["counters"]
    assert counters["records.spooled"] == counters["records.replayed"] == 24
    assert metrics.snapshot()["gauges"]["spool.bytes"] == 0


def test_a_live_writers_file_is_not_replayed_by_others(tmp_path: Path) -> None:
    owner, other = Spool(str(tmp_path)), Spool(str(tmp_path))
    owner.append(records(5))
    sink = MemorySink()
    assert other.replay(sink) == 0
    owner.close()
    assert other.replay(sink) == 5


def test_the_owner_replays_its_own_file_and_keeps_appending(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    first, second = records(3), records(4)
    spool.append(first)
    sink = MemorySink()
    assert spool.replay(sink) == 3
    spool.append(second)
    assert spool.replay(sink) == 4
    assert ids(sink.records) == ids(first) + ids(second)


def test_partial_replay_resumes_without_resending(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "REPLAY_CHUNK", 100)
    writer = Spool(str(tmp_path))
    batch = records(2500)
    writer.append(batch)
    writer.close()
    sink = MemorySink()
    replayer = Spool(str(tmp_path))
    assert replayer.replay(sink, max_records=1000) == 1000
    assert replayer.status().records == 1500
    assert Spool(str(tmp_path)).replay(sink, max_records=1001) == 1001
    assert replayer.replay(sink) == 499
    assert ids(sink.records) == ids(batch)  # each exactly once, in order
    assert spool_files(tmp_path) == []


def test_a_sink_failure_keeps_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "REPLAY_CHUNK", 10)
    writer = Spool(str(tmp_path))
    batch = records(35)
    writer.append(batch)
    writer.close()
    sink = FailingSink(fail_on={3})
    replayer = Spool(str(tmp_path))
    with pytest.raises(ConnectionError):
        replayer.replay(sink)
    assert len(sink.records) == 20
    assert replayer.replay(sink) == 15
    assert ids(sink.records) == ids(batch)


def test_corrupt_and_torn_lines_are_counted_and_skipped(tmp_path: Path) -> None:
    metrics = make_metrics()
    writer = Spool(str(tmp_path))
    good = records(6)
    writer.append(good[:3])
    path = spool_files(tmp_path)[0]
    with open(path, "ab") as f:  # a foreign line in the middle
        f.write(b'{"not": "a record"}\n')
    writer.append(good[3:])
    writer.close()
    with open(path, "ab") as f:  # a write its process never finished
        f.write(b'["0123", "2025-01-01T00:00:00+00:00", nul')
    sink = MemorySink()
    assert Spool(str(tmp_path), metrics).replay(sink) == 6
    assert ids(sink.records) == ids(good)
    assert metrics.snapshot()["counters"]["spool.corrupt"] == 2
    assert spool_files(tmp_path) == []


def test_a_file_without_a_header_is_set_aside(tmp_path: Path) -> None:
    metrics = make_metrics()
    bad = tmp_path / f"{time.time_ns():020d}-1-abcdef01.spool"
    bad.write_bytes(b"garbage\n")
    spool = Spool(str(tmp_path), metrics)
    assert spool.replay(MemorySink()) == 0
    assert not bad.exists() and bad.with_name(bad.name + ".corrupt").exists()
    assert metrics.snapshot()["counters"]["spool.corrupt"] == 1


def test_status(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "spool"))
    assert spool.status().files == 0 and spool.status().oldest is None
    before = datetime.now(UTC)
    spool.append(records(7))
    other = Spool(str(tmp_path / "spool"))
    other.append(records(2))
    status = spool.status()
    assert (status.files, status.records) == (2, 9)
    assert status.bytes == sum(p.stat().st_size for p in spool_files(tmp_path / "spool"))
    assert status.oldest is not None and abs((status.oldest - before).total_seconds()) < 5


def test_files_are_private_and_named_by_pid(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    Spool(str(directory)).append(records(1))
    (path,) = spool_files(directory)
    assert f"-{os.getpid()}-" in path.name
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_an_unusable_directory_raises_spool_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpoolError):
        Spool(str(blocker / "spool")).append(records(1))


def test_a_failed_fsync_leaves_no_torn_line(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = make_metrics()
    spool = Spool(str(tmp_path), metrics)
    kept = records(3)
    spool.append(kept)
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(SpoolError):
        spool.append(records(4))
    monkeypatch.setattr(os, "fsync", real_fsync)
    later = records(2)
    spool.append(later)  # a new file: never append after a failure
    assert len(spool_files(tmp_path)) == 2
    sink = MemorySink()
    assert spool.replay(sink) == 5
    assert ids(sink.records) == ids(kept) + ids(later)
    assert "spool.corrupt" not in metrics.snapshot()["counters"]


def test_an_unreadable_file_is_skipped_not_fatal(tmp_path: Path) -> None:
    writer = Spool(str(tmp_path))
    writer.append(records(3))
    writer.close()
    (path,) = spool_files(tmp_path)
    unreadable = path.with_name("00000000000000000001-1-00000000.spool")
    unreadable.mkdir()  # a name the spool lists but cannot open as a file
    sink = MemorySink()
    assert Spool(str(tmp_path)).replay(sink) == 3


def test_stale_temporary_files_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / ".00000000000000000001-1-00000000.tmp"
    stale.write_bytes(b"")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    fresh = tmp_path / f".{time.time_ns():020d}-1-00000000.tmp"
    fresh.write_bytes(b"")
    Spool(str(tmp_path)).replay(MemorySink())
    assert not stale.exists() and fresh.exists()


def test_concurrent_replayers_never_send_a_record_twice(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "REPLAY_CHUNK", 50)
    expected: list[str] = []
    for _ in range(12):
        writer = Spool(str(tmp_path))
        batch = records(300)
        writer.append(batch)
        writer.close()
        expected += ids(batch)
    sinks = [MemorySink(), MemorySink()]
    barrier = threading.Barrier(2)

    def replay(sink: MemorySink) -> None:
        replayer = Spool(str(tmp_path))  # its own descriptors, as another process has
        barrier.wait()
        while replayer.replay(sink, max_records=120):
            pass

    threads = [threading.Thread(target=replay, args=(s,)) for s in sinks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = [ids(s.records) for s in sinks]
    assert set(got[0]).isdisjoint(got[1])
    assert sorted(got[0] + got[1]) == sorted(expected)


FORK_SCRIPT = """
import os, sys
from cost_middleware.engine.spool import Spool
from cost_middleware.storage.sinks import MemorySink
from cost_middleware.records import CostRecord
directory = sys.argv[1]
def batch(tag, n):
    return [CostRecord(provider="p", api=tag, model=None, usage=None) for _ in range(n)]
spool = Spool(directory)
spool.append(batch("parent", 2))
pid = os.fork()
if pid == 0:
    spool.append(batch("child", 3))  # a file of its own: never the parent's
    names = sorted(os.listdir(directory))
    os._exit(0 if len(names) == 2 and any(f"-{os.getpid()}-" in n for n in names) else 1)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0
sink = MemorySink()
# The child is gone, so its file is free; ours is still held by us, not by the child.
assert Spool(directory).replay(sink) == 3, len(sink.records)
spool.append(batch("parent", 1))
spool.close()
assert Spool(directory).replay(sink) == 3
assert [r.api for r in sink.records] == ["child"] * 3 + ["parent"] * 3
print("ok")
"""


def test_a_forked_child_appends_to_its_own_file(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", FORK_SCRIPT, str(tmp_path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_empty_append_and_replay_do_nothing(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "never"))
    spool.append([])
    assert spool.replay(MemorySink()) == 0
    assert not (tmp_path / "never").exists()
