"""The background writer: a bounded queue, one worker thread, the sink and the disk spool.

Request path: :meth:`Batcher.submit` appends to a ``deque`` (atomic, no lock) and, once a
batch is ready, sets an event. It never blocks on the database and never raises.

Worker: takes a batch when ``batch_size`` records are queued or ``flush_interval`` has passed
(up to ten batches' worth at once when it fell behind), calls ``process`` (the tracker prices
the batch there), then ``sink.write``, then ``written`` (the tracker counts cost and token
totals of what reached the database). A failed write sends the batch to the spool and starts a
backoff (0.1 s doubling to 5 s, with jitter) during which batches go straight to the spool,
unprocessed, so memory stays bounded however long the database is away; after the backoff the
next batch (or a spool replay) probes it again. Once a write succeeds the spool is replayed, a
slice per turn so live records keep flowing, and ``process`` runs on replayed records that are
still unpriced. At start the worker replays what earlier processes left.

Full queue: the record goes to an overflow list that the worker spools at its next turn. If
the worker is stuck (a database call that has not returned yet) and the overflow reaches its
cap, the submitting thread spools the whole overflow itself: one disk write per
``overflow_cap`` records, which keeps memory bounded without making every request pay.

Only a failing disk (or running without a spool) loses records; they are counted in
``records.dropped`` and logged.

Lifecycle: the owner closes the batcher (the tracker does, and the tracker's one ``atexit``
hook closes every live tracker). No signal handler is installed: gunicorn turns SIGTERM into
a graceful exit that runs ``atexit``; uvicorn runs the ASGI lifespan shutdown (where the
middleware closes the engine) and then re-raises SIGTERM, which skips ``atexit``, so under
uvicorn lifespan must be on. After ``fork`` the child gets an empty queue, new locks and no
thread: it starts one at its first record or, when the parent's was started by ``start()``,
at once (a gunicorn worker forked from a preloading master replays the spool without waiting
for a request); the parent's queued records stay the parent's, so none is written twice.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from cost_middleware import forks
from cost_middleware.config import Settings
from cost_middleware.engine.spool import Spool, SpoolError
from cost_middleware.metrics import Metrics
from cost_middleware.records import CostRecord

if TYPE_CHECKING:
    # Only for annotations: storage pulls in SQLAlchemy, which the request path never needs.
    from cost_middleware.storage.sinks import Sink

log = logging.getLogger("cost_middleware")

RETRY_FIRST_SECONDS = 0.1
RETRY_MAX_SECONDS = 5.0
#: A writer that fell behind takes up to this many batches' worth of records in one write.
MAX_BATCHES_PER_WRITE = 10
#: Batches' worth of spooled records replayed per turn of the worker.
REPLAY_BATCHES = 10
#: How often the worker looks for spool files left by processes that died meanwhile.
ORPHAN_SCAN_SECONDS = 30.0
#: At most one "records lost" log line per this many seconds (each loss is counted).
_DROP_LOG_SECONDS = 10.0


class _Marker:
    """Queued by flush(): set once everything queued before it is written or spooled."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class InDoubt:
    """Ids of records whose write failed with its outcome unknown: a connection lost just as
    the database committed leaves them stored, though the writer saw an error and spooled them.
    Bounded (oldest forgotten first); a forgotten one found stored at replay counts as a
    duplicate, so the totals then fall short of the ledger by it, never exceed it."""

    LIMIT = 100_000

    def __init__(self) -> None:
        self._ids: dict[str, None] = {}

    def add(self, records: Sequence[CostRecord]) -> None:
        ids = self._ids
        ids.update(dict.fromkeys(r.record_id for r in records))
        for _ in range(len(ids) - self.LIMIT):
            del ids[next(iter(ids))]

    def settle(self, record_ids: set[str]) -> set[str]:
        """Forget ``record_ids``; return those that were in doubt."""
        ids = self._ids
        return {i for i in record_ids if ids.pop(i, 0) is None}


class ReplaySink:
    """The worker's sink as the spool sees it: prices records that were spooled unpriced, and
    counts each stored record once (in ``records.replayed`` and through ``written``).

    A spooled record the table already holds was stored by a write whose answer was lost (it
    is in doubt): it counts as replayed now, since nothing counted it then. Otherwise it was
    counted when first stored (a replay interrupted before it recorded its progress): it is a
    duplicate.
    """

    def __init__(self, sink: Sink, process: Callable[[list[CostRecord]], None],
                 written: Callable[[list[CostRecord]], None], in_doubt: InDoubt) -> None:
        self._sink = sink
        self._process = process
        self._written = written
        self._in_doubt = in_doubt

    def write(self, records: Sequence[CostRecord]) -> int:
        held = self._sink.stored([r.record_id for r in records])
        late = self._in_doubt.settle(held)
        fresh = [r for r in records if r.record_id not in held]
        unpriced = [r for r in fresh if r.cost_usd is None]
        if unpriced:
            self._process(unpriced)
        try:
            inserted = self._sink.write(fresh) if fresh else 0
        except BaseException:
            self._in_doubt.add(fresh)
            raise
        stored = fresh + [r for r in records if r.record_id in late]
        if stored:
            self._written(stored)
        return inserted + len(late)

    def close(self) -> None:
        """The worker owns and closes the real sink."""


class Batcher:
    """Queues records on the request path and writes them in batches from one thread."""

    def __init__(
        self,
        sink_factory: Callable[[], Sink],
        settings: Settings,
        metrics: Metrics,
        *,
        process: Callable[[list[CostRecord]], None] | None = None,
        written: Callable[[list[CostRecord]], None] | None = None,
        tick: Callable[[], None] | None = None,
        spool: Spool | None = None,
    ) -> None:
        self._sink_factory = sink_factory
        self._metrics = metrics
        self._process = process
        self._written = written
        self._tick = tick
        self._spool = spool
        self._batch_size = settings.batch_size
        self._interval = settings.flush_interval
        self._queue_size = settings.queue_size
        self._overflow_cap = max(settings.batch_size, settings.queue_size // 10)
        self._shutdown_timeout = settings.shutdown_timeout
        self._closed = False
        self._sink: Sink | None = None
        self._last_drop_log = float("-inf")
        self._in_doubt = InDoubt()
        self._reset_runtime()
        forks.reset_in_child(self, Batcher._reset_runtime)

    def _reset_runtime(self) -> None:
        """Fresh queue, locks and worker state (at construction and in a forked child)."""
        self._queue: deque[CostRecord | _Marker] = deque()
        self._overflow: list[CostRecord] = []
        self._overflow_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._flush_requested = False
        self._inflight: list[CostRecord] = []
        self._failures = 0
        self._retry_at = 0.0
        self._spool_dirty = self._spool is not None  # earlier processes may have left records
        self._failed_hooks: set[str] = set()

    # -- request path ----------------------------------------------------------------------

    def submit(self, record: CostRecord) -> None:
        """Queue one record. Never blocks on the database, never raises."""
        try:
            if self._closed or (self._thread is None and not self._start()):
                self._metrics.incr("records.enqueued")
                self._spool_or_drop([record])
                return
            queue = self._queue
            if len(queue) < self._queue_size:
                queue.append(record)
                if len(queue) >= self._batch_size and not self._wake.is_set():
                    self._wake.set()
                if self._closed:  # close() ran meanwhile: the worker may be gone already
                    self._spool_leftovers()
            else:
                self._spill(record)
        except Exception as error:
            self._drop([record], _describe(error))

    def _spill(self, record: CostRecord) -> None:
        with self._overflow_lock:
            overflow = self._overflow
            overflow.append(record)
            if len(overflow) < self._overflow_cap:
                if len(overflow) == 1:
                    self._wake.set()
                return
            self._overflow = []
        # The worker has not taken the overflow for overflow_cap records: it is stuck.
        self._metrics.incr("records.enqueued", len(overflow))
        self._spool_or_drop(overflow)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker now (it replays the spool) rather than at the first record, and
        at once in every child forked from now on."""
        _started.add(self)
        self._start()

    def start_if_spooled(self) -> None:
        """:meth:`start` if earlier processes left records in the spool, so that they are
        replayed without waiting for a record (or a request) to start the worker."""
        if self._spool is not None and self._spool.status().files:
            self.start()

    def _start(self) -> bool:
        with self._start_lock:
            if self._closed:
                return False
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="cost-middleware-writer",
                                          daemon=True)
                try:
                    thread.start()
                except RuntimeError as error:  # interpreter shutting down, or out of threads
                    log.warning("cost_middleware: cannot start the writer thread (%s); "
                                "spooling records directly", _describe(error))
                    return False
                self._thread = thread
        return True

    def flush(self, timeout: float) -> bool:
        """True once everything submitted before the call is written or spooled."""
        thread = self._thread
        if self._closed or thread is None:
            return True
        if not thread.is_alive():
            return not self._queue and not self._overflow
        marker = _Marker()
        self._queue.append(marker)
        self._flush_requested = True
        self._wake.set()
        return marker.done.wait(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush within ``timeout``, spool what remains, stop the worker. Idempotent.

        If the worker is stuck in a database call past the timeout, the batch it holds is
        spooled as well: should the call still succeed, the replay ignores the duplicate.
        """
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
        timeout = self._shutdown_timeout if timeout is None else timeout
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            self._wake.set()  # the worker writes what is queued, then stops
            thread.join(timeout)
            if thread.is_alive():
                log.warning("cost_middleware: the writer did not finish within %.1f s; "
                            "spooling what it holds", timeout)
                self._spool_or_drop(list(self._inflight))
        self._spool_leftovers()
        if self._spool is not None:
            self._spool.close()

    def _spool_leftovers(self) -> None:
        records: list[CostRecord] = []
        queue = self._queue
        while True:
            try:
                item = queue.popleft()
            except IndexError:
                break
            if isinstance(item, _Marker):
                item.done.set()
            else:
                records.append(item)
        with self._overflow_lock:
            records.extend(self._overflow)
            self._overflow = []
        if records:
            self._metrics.incr("records.enqueued", len(records))
            self._spool_or_drop(records)

    # -- worker ----------------------------------------------------------------------------

    def _run(self) -> None:
        interval = self._interval
        now = time.monotonic()
        next_flush = next_tick = now + interval
        next_scan = now + ORPHAN_SCAN_SECONDS
        stopping = False
        while not stopping:
            if (len(self._queue) < self._batch_size and not self._flush_requested
                    and not self._overflow and not self._closed):
                wake_at = min(next_flush, next_tick)
                if self._spool_dirty:
                    wake_at = min(wake_at, self._retry_at)
                self._wake.wait(max(0.0, wake_at - time.monotonic()))
                self._wake.clear()
            now = time.monotonic()
            try:
                closing = self._closed
                everything = closing or self._flush_requested or now >= next_flush
                self._flush_requested = False
                if now >= next_flush:
                    next_flush = now + interval
                self._spool_overflow()
                self._drain(everything)
                stopping = closing and not self._queue
                if self._spool is not None and not closing:
                    if now >= next_scan:
                        self._spool_dirty, next_scan = True, now + ORPHAN_SCAN_SECONDS
                    if self._spool_dirty and time.monotonic() >= self._retry_at:
                        self._replay_some()
                self._metrics.gauge("queue.depth", len(self._queue))
            except Exception as error:  # a bug here must not stop the worker or lose a batch
                log.error("cost_middleware: writer error (%s)", _describe(error))
                if self._inflight:
                    self._spool_or_drop(self._inflight)
                    self._inflight = []
            if stopping or now >= next_tick:
                self._call_tick()
                next_tick = now + interval
        if self._sink is not None:
            try:
                self._sink.close()
            except Exception as error:
                log.debug("cost_middleware: closing the sink: %s", _describe(error))

    def _drain(self, everything: bool) -> None:
        """Write full batches; when ``everything``, also what was queued when the drain began.

        Records that arrive during an ``everything`` drain wait for the next full batch or
        interval: chasing them would, under steady traffic, write a trickle of batches of a
        few records each (one per write's duration) for as long as the traffic lasts.
        """
        queue = self._queue
        owed = len(queue) if everything else 0
        while queue and (owed > 0 or len(queue) >= self._batch_size):
            batch, marker = self._take()
            owed -= len(batch) + (marker is not None)
            if batch:
                self._deliver(batch)
            if marker is not None:
                self._spool_overflow()  # records that overflowed before the marker
                marker.done.set()

    def _take(self) -> tuple[list[CostRecord], _Marker | None]:
        """The next batch: ``batch_size`` records, or as many whole batches as are waiting,
        up to ``MAX_BATCHES_PER_WRITE`` (a writer that fell behind catches up in fewer, larger
        writes, which cost less per record); it ends early at a flush marker."""
        queue = self._queue
        size = self._batch_size
        limit = size * max(1, min(len(queue) // size, MAX_BATCHES_PER_WRITE))
        batch: list[CostRecord] = []
        while len(batch) < limit:
            try:
                item = queue.popleft()
            except IndexError:
                break
            if isinstance(item, _Marker):
                self._inflight = batch
                return batch, item
            batch.append(item)
        self._inflight = batch
        return batch, None

    def _deliver(self, batch: list[CostRecord]) -> None:
        self._metrics.incr("records.enqueued", len(batch))
        if self._spool is not None and time.monotonic() < self._retry_at:
            # The database failed moments ago: straight to disk, at disk speed. Pricing
            # waits for the replay (it may need that database too).
            self._spool_or_drop(batch)
        else:
            self._run_process(batch)
            if not self._write(batch):
                self._spool_or_drop(batch)
        self._inflight = []

    def _write(self, batch: list[CostRecord]) -> bool:
        try:
            sink = self._sink if self._sink is not None else self._make_sink()
            started = time.perf_counter()
            inserted = sink.write(batch)
        except Exception as error:
            self._in_doubt.add(batch)
            self._failed(error)
            return False
        self._metrics.timing("batch.flush", (time.perf_counter() - started) * 1000.0)
        self._metrics.incr("records.written", inserted)
        if inserted < len(batch):
            self._metrics.incr("records.duplicates", len(batch) - inserted)
        self._run_written(batch)
        self._recovered()
        return True

    def _make_sink(self) -> Sink:
        self._sink = self._sink_factory()
        return self._sink

    def _replay_some(self) -> None:
        spool = self._spool
        if spool is None:
            return
        limit = self._batch_size * REPLAY_BATCHES
        try:
            sink = self._sink if self._sink is not None else self._make_sink()
            replayed = spool.replay(
                ReplaySink(sink, self._run_process, self._run_written, self._in_doubt),
                max_records=limit)
        except Exception as error:
            self._failed(error)
            return
        if replayed:
            self._recovered()
        if replayed < limit:
            self._spool_dirty = False

    def _spool_overflow(self) -> None:
        with self._overflow_lock:
            overflow, self._overflow = self._overflow, []
        if overflow:
            self._metrics.incr("records.enqueued", len(overflow))
            self._spool_or_drop(overflow)

    def _failed(self, error: Exception) -> None:
        self._metrics.incr("batch.failed")
        self._failures += 1
        delay = min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** min(self._failures - 1, 16))
        # Jitter, so processes that failed together do not all retry together.
        self._retry_at = time.monotonic() + delay * _jitter.uniform(0.5, 1.0)
        if self._failures == 1:
            where = repr(str(self._spool.directory)) if self._spool is not None else "nowhere"
            log.warning("cost_middleware: writing records failed (%s); spooling to %s "
                        "and retrying", _describe(error), where)
        else:
            log.debug("cost_middleware: write retry %d failed (%s)", self._failures,
                      _describe(error))

    def _recovered(self) -> None:
        if self._failures:
            log.warning("cost_middleware: database writes recovered after %d failed attempt(s)",
                        self._failures)
            self._failures = 0
            self._retry_at = 0.0

    def _spool_or_drop(self, records: list[CostRecord]) -> None:
        if not records:
            return
        if self._spool is None:
            self._drop(records, "no spool is configured")
            return
        try:
            self._spool.append(records)
        except SpoolError as error:
            self._drop(records, str(error))
            return
        except Exception as error:  # a bug must not escape into submit() or the worker
            self._drop(records, _describe(error))
            return
        if self._closed and threading.current_thread() is not self._thread:
            # After close nobody here replays it: leave the file to the next process now.
            self._spool.close()
        self._spool_dirty = True

    def _drop(self, records: list[CostRecord], reason: str) -> None:
        self._metrics.incr("records.dropped", len(records))
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_SECONDS:
            self._last_drop_log = now
            log.error("cost_middleware: %d record(s) lost: %s (every loss is counted in "
                      "records.dropped)", len(records), reason)

    def _run_process(self, batch: list[CostRecord]) -> None:
        self._call_hook(self._process, batch, "processing a batch failed (%s); writing it "
                        "unpriced")

    def _run_written(self, batch: list[CostRecord]) -> None:
        """Tell the owner what reached the database (it counts totals there, once)."""
        self._call_hook(self._written, batch, "the after-write hook failed (%s)")

    def _call_tick(self) -> None:
        self._call_hook(self._tick, None, "the periodic tick failed (%s)")

    def _call_hook(self, hook: Callable[..., None] | None, batch: list[CostRecord] | None,
                   failure: str) -> None:
        """Run an owner's hook; a failure is logged once per hook and never stops the worker."""
        if hook is None:
            return
        try:
            if batch is None:
                hook()
            else:
                hook(batch)
        except Exception as error:
            if failure not in self._failed_hooks:
                self._failed_hooks.add(failure)
                log.error("cost_middleware: " + failure, _describe(error))


def _describe(error: BaseException) -> str:
    """Exception type and the first line of its message, escaped and bounded, for logs."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {(lines[0] if lines else '')[:200]!r}"


#: Our own generator: an application's random.seed() must not synchronize retries, and it
#: is reseeded in a forked child so sibling workers retry apart.
_jitter = random.Random()
os.register_at_fork(after_in_child=_jitter.seed)

#: Batchers whose worker was started before any record (``start()``).
_started: weakref.WeakSet[Batcher] = weakref.WeakSet()


def _start_in_child() -> None:
    for batcher in list(_started):
        batcher._start()


# Registered after ``forks``' hook (imported above), so it runs once every object has been
# reset in the child: the new worker never sees what the parent's used.
os.register_at_fork(after_in_child=_start_in_child)
