"""How fast a price change reaches every process, per sync channel.

Run: ``python benchmarks/bench_sync.py [--quick]``. Starts private redis-servers, spawns
worker processes that each run a PriceSync on a book that reports every eviction with its time,
then makes changes from this process with ``notify_change`` and measures, for each change and
worker, the time until that worker's book dropped the entry. Channels:
``keyspace`` (the default user; the flags get merged in), ``tracking`` (an ACL user without
CONFIG, notifications off), and as the baseline a bare redis-py pub/sub subscriber per process
receiving the same keyspace events with nothing of ours in the way. The three runs alternate
(twice in full mode) and each figure pools every change seen by every process.

tests/test_sync.py uses :func:`measure` for its multi-process cases.
"""

from __future__ import annotations

import importlib
import multiprocessing
import queue
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from functools import partial
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import redis
from common import Result, interleave, percentile, standalone

from cost_middleware.pricing.channels import DOWN
from cost_middleware.pricing.listener import PriceSync
from cost_middleware.pricing.redis_keys import PREFIX, notify_change

READY = "ready"
#: Events that are not the channel under test stay out of the way: polls come every minute.
POLL_INTERVAL = 60.0
#: A change not seen within this long counts as lost (latency inf).
SEEN_TIMEOUT = 2.0
PROCESSES = 4
LIMIT_MS = 50.0


class ReportingBook:
    """Stands in for a PriceBook (whose cache would keep an entry for its 300 s TTL unless
    invalidated): every eviction goes to ``events`` with the wall-clock time it happened."""

    def __init__(self, index: int, events: Any) -> None:
        self._index = index
        self._events = events

    def invalidate(self, provider: str, model: str) -> None:
        self._events.put((self._index, time.time(), provider, model))

    def invalidate_all(self) -> None:
        self._events.put((self._index, time.time(), None, None))


def _sync_worker(index: int, url: str, events: Any, stop: Event) -> None:
    sync = PriceSync(ReportingBook(index, events), url, poll_interval=POLL_INTERVAL)
    sync.start()
    deadline = time.monotonic() + 20
    while sync.channel == DOWN and time.monotonic() < deadline:
        time.sleep(0.005)
    events.put((index, time.time(), READY, sync.channel))
    stop.wait()
    sync.stop()


def _bare_worker(index: int, url: str, events: Any, stop: Event) -> None:
    pubsub = redis.Redis.from_url(url).pubsub(  # type: ignore[no-untyped-call]
        ignore_subscribe_messages=True)
    pubsub.psubscribe(f"__keyspace@0__:{PREFIX}*")
    pubsub.get_message(timeout=1.0)  # the confirmation: subscribed from here on
    events.put((index, time.time(), READY, "bare pub/sub"))
    while not stop.is_set():
        if pubsub.get_message(timeout=0.1) is not None:
            events.put((index, time.time(), None, None))
    pubsub.close()


@dataclass(frozen=True, slots=True)
class Propagation:
    #: The channel each worker had live.
    channels: list[str]
    #: Per worker, seconds from each change to that worker's eviction (inf: not seen).
    latencies: list[list[float]]

    def all(self) -> list[float]:
        return [x for per_worker in self.latencies for x in per_worker]


def measure(url: str, *, processes: int = 4, changes: int = 50, notify_url: str | None = None,
            bare: bool = False) -> Propagation:
    """Spawn ``processes`` workers on ``url``, make ``changes`` changes through ``notify_url``
    (default ``url``) one after another, and time their arrival in every worker."""
    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue()
    stop = ctx.Event()
    target = _bare_worker if bare else _sync_worker
    workers = [ctx.Process(target=target, args=(i, url, events, stop), daemon=True)
               for i in range(processes)]
    for w in workers:
        w.start()
    client = redis.Redis.from_url(notify_url or url)
    try:
        channels: dict[int, str] = {}
        while len(channels) < processes:
            index, _, kind, channel = events.get(timeout=60)
            if kind == READY:
                channels[index] = channel
        token = uuid.uuid4().hex[:8]
        latencies: list[list[float]] = [[] for _ in range(processes)]
        for i in range(changes):
            model = f"bench-{token}-{i}"
            started = time.time()
            notify_change(client, "bench", model)
            seen = _wait_seen(events, processes, started, model)
            for index in range(processes):
                latencies[index].append(seen.get(index, float("inf")))
        return Propagation([channels[i] for i in range(processes)], latencies)
    finally:
        stop.set()
        for w in workers:
            w.join(10)
            if w.is_alive():
                w.terminate()
        client.close()
        events.close()


def _wait_seen(events: Any, processes: int, started: float, model: str) -> dict[int, float]:
    """Per worker, seconds until its first eviction covering ``model`` after ``started``."""
    seen: dict[int, float] = {}
    deadline = time.monotonic() + SEEN_TIMEOUT
    while len(seen) < processes and (left := deadline - time.monotonic()) > 0:
        try:
            index, at, _, evicted = events.get(timeout=left)
        except queue.Empty:  # whoever is missing did not see it
            break
        if index not in seen and at >= started and evicted in (None, model):
            seen[index] = at - started
    return seen


def acl_user_url(url: str, *denied: str) -> str:
    """A URL for a new ACL user allowed everything but the ``denied`` commands (default CONFIG)."""
    admin = redis.Redis.from_url(url)
    admin.execute_command(  # type: ignore[no-untyped-call]
        "ACL", "SETUSER", "limited", "on", ">pw", "~*", "&*", "+@all",
        *(f"-{d}" for d in denied or ("config",)))
    admin.close()
    return url.replace("redis://", "redis://limited:pw@")


def describe(name: str, result: Propagation) -> str:
    every = result.all()
    rows = [f"{name:<13} {sorted(set(result.channels))!s:<14} {len(result.latencies):>5} "
            f"{len(every):>7} {percentile(every, 50) * 1e3:>8.3f} "
            f"{percentile(every, 99) * 1e3:>8.3f} {max(every) * 1e3:>8.3f}"]
    for index, per_worker in enumerate(result.latencies):
        rows.append(f"  process {index}: p50 {percentile(per_worker, 50) * 1e3:.3f} ms, "
                    f"p99 {percentile(per_worker, 99) * 1e3:.3f} ms")
    return "\n".join(rows)


def run(quick: bool) -> list[Result]:
    names = ("keyspace", "tracking")
    if shutil.which("redis-server") is None:
        return [Result.skipped(f"price change seen by {PROCESSES} processes, {name}: p{q}",
                               "ms", "redis-server not found") for name in names for q in (50, 99)]
    # The tests' private-server helper: a redis-server on a free port.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    redis_server: Any = importlib.import_module("conftest").RedisServer

    changes = 50 if quick else 100
    with tempfile.TemporaryDirectory() as tmp:
        # Tracking needs a server whose notification flags nobody merged in.
        servers = [redis_server(Path(tmp)), redis_server(Path(tmp))]
        for server in servers:
            server.start()
        keyspace_url, tracking_server = servers[0].url, servers[1]
        try:
            tracking_url = acl_user_url(tracking_server.url)
            rounds = interleave({
                "keyspace": partial(measure, keyspace_url, processes=PROCESSES, changes=changes),
                # The same server, flags merged by then: the same events, nothing of ours.
                "bare": partial(measure, keyspace_url, processes=PROCESSES, changes=changes,
                                bare=True),
                "tracking": partial(measure, tracking_url, processes=PROCESSES, changes=changes,
                                    notify_url=tracking_server.url),
            }, 1 if quick else 2)
        finally:
            for server in servers:
                server.stop()
    samples = {k: [x for r in runs for x in r.all()] for k, runs in rounds.items()}
    results = []
    for name in names:
        channels = sorted({c for r in rounds[name] for c in r.channels})
        lost = sum(1 for x in samples[name] if x == float("inf"))
        for q in (50, 99):
            value = percentile(samples[name], q) * 1e3
            results.append(Result(
                f"price change seen by {PROCESSES} processes, {name}: p{q}", value, "ms",
                f"bare redis-py pub/sub: p{q}", percentile(samples["bare"], q) * 1e3,
                f"p99 ≤ {LIMIT_MS:g} ms" if q == 99 else "",
                value <= LIMIT_MS if q == 99 else None,
                f"channel live: {', '.join(channels)}; {len(samples[name])} samples, "
                f"{lost} lost; max {max(samples[name]) * 1e3:.1f} ms"))
    return results


if __name__ == "__main__":
    standalone(run, "sync: how fast a price change reaches every process")
