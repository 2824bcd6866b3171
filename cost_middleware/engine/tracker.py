"""The engine both adapters drive: detection, the batcher, pricing, storage and metrics.

The request path only builds a :class:`CostRecord` and submits it. The database engine, the
price book and Redis sync are created lazily in the background worker, so starting a tracker
touches no network and a cache miss never blocks a request.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections.abc import Sequence
from decimal import Decimal
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from cost_middleware.budgets.gate import Gate
from cost_middleware.config import Settings
from cost_middleware.engine.batcher import Batcher
from cost_middleware.engine.spool import Spool
from cost_middleware.guard import Guard
from cost_middleware.metrics import Metrics
from cost_middleware.records import CostRecord
from cost_middleware.usage.detect import Detector

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from cost_middleware.budgets.runtime import BudgetRuntime
    from cost_middleware.engine.otel import OtelRecorder
    from cost_middleware.pricing.book import PriceBook
    from cost_middleware.pricing.listener import PriceSync
    from cost_middleware.pricing.refresh import PriceRefresher
    from cost_middleware.storage.sinks import Sink

log = logging.getLogger("cost_middleware")

_MICRO = Decimal(1_000_000)
_ZERO = Decimal(0)
_TOKEN_KINDS = tuple((name.removesuffix("_tokens"), name) for name in (
    "input_tokens", "cached_input_tokens", "cache_write_input_tokens", "output_tokens",
    "reasoning_tokens"))
_token_counts = attrgetter(*(attribute for _, attribute in _TOKEN_KINDS))


class CostTracker:
    """Owns one pipeline: ``record()`` on the request path, everything else in the background."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        sink: Sink | None = None,
        price_book: PriceBook | None = None,
    ) -> None:
        self.settings = settings if settings is not None else Settings.from_env()
        self.metrics = Metrics(self.settings)
        self.guard = Guard(self.metrics)
        self.detector = Detector(self.settings.paths, self.settings.route_providers)
        self.closed = False
        self._sink = sink
        self._book = price_book
        self._owns_book = price_book is None
        self._engine: Engine | None = None
        self._sync: PriceSync | None = None
        self._refresher: PriceRefresher | None = None
        self._setup_lock = threading.Lock()
        #: Fractions of a micro-dollar not yet sent, per provider.model (writer thread only).
        self._cost_carry: dict[tuple[str, str], Decimal] = {}
        self._otel: OtelRecorder | None = None
        if self.settings.otel_enabled and self.settings.enabled:
            # Imported only when on: the extra may not even be installed otherwise.
            from cost_middleware.engine.otel import OtelRecorder

            self._otel = OtelRecorder(self.settings, self.metrics)
        #: Budgets live in the ledger: a tracker given a sink of its own (a test's memory
        #: sink) has none, and must not open a database for them.
        self._budgets_on = sink is None and self.settings.enabled
        #: Spent budgets, read on the request path; kept by the budget worker (``budgets``).
        self.budget_gate = Gate()
        self._budgets: BudgetRuntime | None = None
        self.batcher = Batcher(
            self._make_sink,
            self.settings,
            self.metrics,
            process=self.price_batch,
            written=self._after_write,
            tick=self._tick,
            spool=Spool(self.settings.spool_dir, self.metrics),
        )
        if self.settings.redis_url:
            # Imported now: the first pricing may run at interpreter exit, when redis's own
            # imports can no longer register their atexit hooks.
            import cost_middleware.pricing.listener
            import cost_middleware.pricing.redis_tier  # noqa: F401
        _register_atexit(self)

    # -- request path -------------------------------------------------------------------

    def record(self, record: CostRecord) -> None:
        """Queue a record for pricing and storage. Never blocks, never raises."""
        if self._otel is not None:
            self.guard.call("otel", self._otel.annotate, record)
        self.batcher.submit(record)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the background worker now rather than at the first record."""
        self.batcher.start()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything recorded so far is written (or spooled)."""
        return self.batcher.flush(self.settings.shutdown_timeout if timeout is None else timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush within the timeout, spool the rest, release connections. Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            self.batcher.close(timeout)
        finally:
            if self._refresher is not None:
                self._refresher.stop()
            if self._budgets is not None:
                self._budgets.close()
            if self._sync is not None:
                self._sync.stop()
            if self._book is not None and self._owns_book:
                self._book.close()
            self.metrics.close()
            if self._engine is not None:
                self._engine.dispose()

    # -- background worker --------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine for records and prices, created (with the tables) on first use."""
        with self._setup_lock:
            if self._engine is None:
                # SQLAlchemy is loaded here, in the background, not at import.
                from cost_middleware.engine.ledger import open_ledger

                self._engine = open_ledger(self.settings)
                if self.settings.prices_refresh is not None and not self.closed:
                    self._start_refresh(self._engine)
            return self._engine

    def _start_refresh(self, engine: Engine) -> None:
        """The price refresh, when configured: started with the worker (which creates the
        engine), never at import or on the request path; imported only then."""
        from cost_middleware.pricing.refresh import PriceRefresher

        self._refresher = PriceRefresher(self.settings, engine, self.metrics,
                                         invalidate=self._invalidate_price)
        self._refresher.start()

    def _invalidate_price(self, provider: str, model: str) -> None:
        # A refresh this process applied reaches its own book at once, with or without Redis.
        book = self._book
        if book is not None:
            book.invalidate(provider, model)

    @property
    def price_book(self) -> PriceBook:
        if self._book is None:
            from cost_middleware.pricing.book import PriceBook

            book = PriceBook.from_settings(self.settings, self.engine, self.metrics)
            if self.settings.redis_url:
                from cost_middleware.pricing.listener import PriceSync

                self._sync = PriceSync(book, self.settings.redis_url, self.metrics)
                self._sync.start()
            self._book = book
        return self._book

    def _make_sink(self) -> Sink:
        if self._sink is None:
            from cost_middleware.storage.sinks import SQLSink

            self._sink = SQLSink(self.engine)
        return self._sink

    def price_batch(self, records: list[CostRecord]) -> None:
        self.price_book.price_many(records)

    def _after_write(self, records: Sequence[CostRecord]) -> None:
        """What the worker does with records that reached the ledger (each batch once)."""
        self._count_totals(records)
        if self._otel is not None:
            self._otel.written(records)
        if self._budgets_on:
            self.budgets.count(records)

    def _tick(self) -> None:
        self.metrics.flush()
        if self._budgets_on:
            self.budgets.tick()

    @property
    def budgets(self) -> BudgetRuntime:
        """The budget worker, made in the background thread (it loads SQLAlchemy and redis)."""
        if self._budgets is None:
            from cost_middleware.budgets.runtime import BudgetRuntime

            self._budgets = BudgetRuntime(self.settings, self.metrics, lambda: self.engine,
                                          self.budget_gate)
        return self._budgets

    def _count_totals(self, records: Sequence[CostRecord]) -> None:
        """Cost (micro-dollars) and tokens per provider and model, summed per batch.

        The fraction of a micro-dollar a batch leaves over is carried to the next, so the
        counter's total matches the ledger instead of drifting low.
        """
        metrics = self.metrics
        # Grouped by the raw names first, labelled once per group: per record this is only a
        # dict lookup and two appends (it runs under the GIL the request threads want).
        groups: dict[tuple[str, str | None], tuple[list[Decimal], list[tuple[Any, ...]]]] = {}
        for r in records:
            group = groups.get((r.provider, r.model))
            if group is None:
                group = groups[(r.provider, r.model)] = ([], [])
            if r.cost_usd is not None:
                group[0].append(r.cost_usd)
            if r.usage is not None:
                group[1].append(_token_counts(r.usage))
        costs: dict[tuple[str, str], Decimal] = {}
        tokens: dict[tuple[str, str, str], int] = {}
        for (provider_name, model_name), (usds, counts) in groups.items():
            # Several names can share a label (sanitized alike, or the "other" bucket).
            key = (metrics.label("provider", provider_name), metrics.label("model", model_name))
            if usds:
                costs[key] = costs.get(key, _ZERO) + sum(usds, _ZERO)
            if not counts:
                continue
            for (kind, _), column in zip(_TOKEN_KINDS, zip(*counts, strict=True), strict=True):
                total = sum(filter(None, column))  # None: a count the provider did not report
                if total:
                    tokens[(kind, *key)] = tokens.get((kind, *key), 0) + total
        carry = self._cost_carry
        for (provider, model), usd in costs.items():
            micro = usd * _MICRO + carry.get((provider, model), _ZERO)
            whole = int(micro)
            carry[provider, model] = micro - whole
            if whole:
                metrics.incr(f"cost.{provider}.{model}", whole)
        for (kind, provider, model), value in tokens.items():
            metrics.incr(f"tokens.{kind}.{provider}.{model}", value)


_live: weakref.WeakSet[CostTracker] = weakref.WeakSet()
_atexit_installed = False


def _register_atexit(tracker: CostTracker) -> None:
    """One atexit hook closes every live tracker (flushing what is queued)."""
    global _atexit_installed
    _live.add(tracker)
    if not _atexit_installed:
        _atexit_installed = True
        atexit.register(_close_all)


def _close_all() -> None:
    for tracker in list(_live):
        try:
            tracker.close()
        except Exception:
            log.exception("cost_middleware: closing at exit failed")
