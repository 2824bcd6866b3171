"""One process's budget worker: loads budgets, counts each written batch, keeps the gate.

Runs in the tracker's background thread (``count`` after every write, ``tick`` at every
interval) and, with Redis, in a price-sync listener that hears of budget notices. Nothing here
runs on the request path, which only reads ``gate``.

With Redis, counts go to the shared counters (``counting.RedisCounters``); a batch that
crosses a limit tells every process at once. Without Redis, or while it is down, this process
counts alone in memory, starting from the ledger's sums of the current windows. After Redis
comes back the current windows are recounted from the ledger (set, never added, so nothing is
counted twice), and once more a few seconds later, when batches that were in flight during
the first recount have settled. See docs/BUDGETS.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from functools import cache
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from cost_middleware.budgets.counting import (
    ALERT_CROSSED,
    CHANGED,
    LIMIT_CROSSED,
    NOTICE_PROVIDER,
    SPENT,
    Addition,
    Counters,
    LocalCounters,
    RedisCounters,
    Window,
)
from cost_middleware.budgets.gate import NOTHING, Blocked, Blocks, Gate
from cost_middleware.budgets.model import EACH, Budget, window_bounds, window_id
from cost_middleware.budgets.spend import OTHER
from cost_middleware.config import Settings
from cost_middleware.metrics import Metrics
from cost_middleware.pricing.commands import loggable
from cost_middleware.records import CostRecord
from cost_middleware.utc import utcnow

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from cost_middleware.pricing.listener import PriceSync
    from cost_middleware.pricing.redis_keys import SharedClient
    from cost_middleware.schema import ExactDecimal

log = logging.getLogger("cost_middleware")

#: Seconds between re-reads of the budgets table and the counters (the backstop for a lost
#: notice; without Redis, how soon a `budgets set` elsewhere applies).
POLL_SECONDS = 5.0
#: Seconds between attempts to reach Redis again while it is down.
RETRY_SECONDS = 1.0
#: Seconds after recovering before the second recount.
SETTLE_SECONDS = 3.0
#: Values of one ``*`` budget that get gauges (the most spent).
GAUGED_VALUES = 20

_PICO = Decimal(10) ** 12


@cache
def _money() -> ExactDecimal:
    from cost_middleware.schema import USD_SCALE, ExactDecimal

    return ExactDecimal(USD_SCALE)


def pico(usd: Decimal) -> int:
    """USD as integer pico-dollars, rounded as the ledger's companion column rounds them."""
    return _money().units(usd)


def usd(pico_dollars: int) -> Decimal:
    return Decimal(pico_dollars) / _PICO


def current_window(budget: Budget, at: datetime) -> Window:
    return Window(budget.ident, budget.window, window_id(budget.window, at))


def recount(engine: Engine, counters: Counters, budget: Budget, at: datetime, *,
            force: bool) -> dict[str, int]:
    """Start (``force``: restart) the budget's current window from the ledger's sum; returns
    the totals now counted."""
    from cost_middleware.budgets.spend import window_spend

    window = current_window(budget, at)
    spend = window_spend(engine, budget, *window_bounds(budget.window, at))
    counters.seed(window, spend, force=force)
    totals = counters.read(window)
    return spend if totals is None else totals


class BudgetRuntime:
    """Budgets as one process enforces them. ``gate`` is what the request path reads."""

    def __init__(self, settings: Settings, metrics: Metrics, engine: Callable[[], Engine],
                 gate: Gate) -> None:
        self.gate = gate
        self._settings = settings
        self._metrics = metrics
        self._engine = engine
        self._lock = threading.RLock()
        self._budgets: dict[str, Budget] = {}
        self._totals: dict[Window, dict[str, int]] = {}
        self._loaded = False
        self._next_poll = 0.0
        self._local = LocalCounters()
        self._redis: RedisCounters | None = None
        self._shared: SharedClient | None = None
        self._sync: PriceSync | None = None
        self._sync_was_up = False
        self._down = False
        self._retry_at = 0.0
        self._settle_at: float | None = None
        self._failed_load = False
        if settings.redis_url is not None:
            from cost_middleware.pricing.redis_keys import SharedClient

            self._shared = SharedClient(settings.redis_url)
            self._redis = RedisCounters(self._shared)

    @property
    def budgets(self) -> list[Budget]:
        return list(self._budgets.values())

    @property
    def counters(self) -> Counters:
        return self._redis if self._redis is not None and not self._down else self._local

    # -- the background thread ---------------------------------------------------------

    def tick(self) -> None:
        """Load or re-read budgets when due; follow Redis going down and coming back."""
        now = time.monotonic()
        with self._lock:
            if self._redis is not None:
                self._watch_redis(now)
            if not self._loaded or now >= self._next_poll:
                self._next_poll = now + POLL_SECONDS
                self._reload(full=True)

    def count(self, records: Sequence[CostRecord]) -> None:
        """Add the cost of records that reached the ledger to their budgets' current windows."""
        if not self._budgets:
            return
        with self._lock:
            batch = self._additions(records)
            if not batch:
                return
            try:
                results = self.counters.add(batch)
            except (RedisError, OSError) as exc:
                # The ledger already holds this batch: the local recount includes it.
                self._went_down(exc)
                return
            crossed = False
            for (window, _), (seeded, counted) in zip(batch, results, strict=True):
                if not seeded:
                    # A new window, or Redis lost it: start it from the ledger (which holds
                    # this batch too), so the counter is whole.
                    budget = self._budgets[window.ident]
                    self._totals[window] = self._recount(budget, force=False)
                    crossed = True
                    continue
                totals = self._totals.setdefault(window, {})
                for c in counted:
                    totals[c.value] = c.total
                    if c.crossed:
                        crossed |= self._crossed(self._budgets[window.ident], c.value, c.total,
                                                 c.crossed)
            if crossed:
                self._rebuild()
                self._notify(SPENT)

    def _additions(self, records: Sequence[CostRecord]) -> list[tuple[Window, list[Addition]]]:
        now = utcnow()
        plans = []
        for budget in self._budgets.values():
            start, end = window_bounds(budget.window, now)
            plans.append((budget, current_window(budget, now), start, end, pico(budget.limit_usd),
                          None if budget.alert_at is None
                          else pico(budget.limit_usd * Decimal(repr(budget.alert_at)))))
        sums: dict[Window, dict[str, int]] = {}
        for record in records:
            if record.cost_usd is None:
                continue
            cost = pico(record.cost_usd)
            if cost <= 0:
                continue
            at = record.created_at
            for budget, window, start, end, _, _ in plans:
                if start is not None and end is not None and not start <= at < end:
                    continue  # a record of an earlier window (replayed from the spool)
                value = budget.value_of(None if budget.scope == "all"
                                        else getattr(record, budget.scope))
                if value is not None:
                    per_value = sums.setdefault(window, {})
                    per_value[value] = per_value.get(value, 0) + cost
        limits = {window: (limit, alert) for _, window, _, _, limit, alert in plans}
        return [(window, [Addition(v, p, *limits[window]) for v, p in values.items()])
                for window, values in sums.items()]

    def _crossed(self, budget: Budget, value: str, total: int, crossed: int) -> bool:
        """Log and count a threshold this process's batch crossed (once per window across
        every process: only the batch that crossed it hears so). True for the limit."""
        name = value if value == EACH else loggable(value)
        for bit, what in ((ALERT_CROSSED, "its alert threshold"), (LIMIT_CROSSED, "its limit")):
            if crossed & bit:
                log.warning("cost_middleware: budget %s %s (%s, %s) crossed %s: %s of %s USD",
                            budget.scope, name, budget.window, budget.mode, what, usd(total),
                            budget.limit_usd)
        if crossed & ALERT_CROSSED:
            self._metrics.incr("budget.alert")
        if crossed & LIMIT_CROSSED:
            self._metrics.incr("budget.exceeded")
        return bool(crossed & LIMIT_CROSSED)

    # -- loading -----------------------------------------------------------------------

    def _reload(self, *, full: bool, budgets: list[Budget] | None = None) -> None:
        """Re-read the budgets (``full``; ``budgets`` if already read) and the current
        windows' totals, then the gate."""
        from sqlalchemy.exc import SQLAlchemyError

        from cost_middleware.budgets.store import list_budgets

        try:
            if budgets is not None:
                self._budgets = {b.ident: b for b in budgets}
            elif full or not self._loaded:
                self._budgets = {b.ident: b for b in list_budgets(self._engine())}
            now = utcnow()
            totals: dict[Window, dict[str, int]] = {}
            for budget in self._budgets.values():
                window = current_window(budget, now)
                known = self.counters.read(window)
                totals[window] = (self._recount(budget, force=False) if known is None
                                  else known)
        except (RedisError, OSError) as exc:
            self._went_down(exc)
            return
        except SQLAlchemyError as exc:
            if not self._failed_load:
                self._failed_load = True
                log.warning("cost_middleware: budgets could not be read (%s); the last ones "
                            "known stay in force", type(exc).__name__)
            return
        self._failed_load = False
        self._loaded = True
        self._totals = totals
        self._local.forget_before(set(totals))
        self._rebuild()
        self._gauges()

    def _recount(self, budget: Budget, *, force: bool) -> dict[str, int]:
        return recount(self._engine(), self.counters, budget, utcnow(), force=force)

    def notice(self, kind: str) -> None:
        """From the listener: another process changed budgets (``changed``) or spent one."""
        budgets = None
        if kind != SPENT:
            # Read before taking the lock: the writer may hold it for a batch meanwhile.
            from sqlalchemy.exc import SQLAlchemyError

            from cost_middleware.budgets.store import list_budgets

            try:
                budgets = list_budgets(self._engine())
            except SQLAlchemyError:
                budgets = None  # _reload tries again, and says so
        with self._lock:
            if not self._down:
                self._reload(full=kind != SPENT, budgets=budgets)

    # -- Redis up and down -------------------------------------------------------------

    def _watch_redis(self, now: float) -> None:
        if self._sync is None:
            self._start_sync()
        sync = self._sync
        if sync is not None:
            from cost_middleware.pricing.channels import DOWN

            if sync.channel != DOWN:
                self._sync_was_up = True
            elif self._sync_was_up and not self._down:
                self._went_down(ConnectionError("the notification channel is down"))
        if self._down and now >= self._retry_at:
            self._try_recover(now)
        elif self._settle_at is not None and now >= self._settle_at:
            self._settle_at = None
            self.reconcile()

    def _start_sync(self) -> None:
        from cost_middleware.pricing.listener import PriceSync

        assert self._settings.redis_url is not None  # only called with Redis
        self._sync = PriceSync(_Notices(self), self._settings.redis_url)
        self._sync.start()

    def _went_down(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._retry_at = now + RETRY_SECONDS
        if self._down:
            return
        self._down = True
        self._sync_was_up = False
        self._metrics.incr("budget.redis_down")
        closed = self._settings.budgets_fail_closed
        log.warning("cost_middleware: budgets: Redis failed (%s: %s); counting in this "
                    "process from the ledger, and %s until it is back", type(exc).__name__, exc,
                    "blocking every request a block budget covers" if closed
                    else "blocking on what this process knows")
        self._local = LocalCounters()
        self._reload(full=False)  # local now: the windows start from the ledger's sums
        self._rebuild()

    def _try_recover(self, now: float) -> None:
        assert self._shared is not None
        try:
            self._shared.get().ping()
        except (RedisError, OSError):
            self._retry_at = now + RETRY_SECONDS
            return
        self._down = False
        log.info("cost_middleware: budgets: Redis is back; recounting from the ledger")
        self.reconcile()
        self._settle_at = time.monotonic() + SETTLE_SECONDS

    def reconcile(self) -> None:
        """Restart every current window from the ledger, and tell every process."""
        with self._lock:
            try:
                for budget in self._budgets.values():
                    self._totals[current_window(budget, utcnow())] = self._recount(
                        budget, force=True)
            except (RedisError, OSError) as exc:
                self._went_down(exc)
                return
            self._metrics.incr("budget.reconciled")
            self._rebuild()
            self._notify(CHANGED)

    def _notify(self, kind: str) -> None:
        if self._redis is None or self._down:
            return
        try:
            self._redis.notify(kind)
        except (RedisError, OSError) as exc:
            self._went_down(exc)

    # -- the gate ----------------------------------------------------------------------

    def _rebuild(self) -> None:
        """Swap in the set of spent block budgets (one assignment: readers never lock)."""
        now = utcnow()
        closed = self._down and self._settings.budgets_fail_closed
        exact: dict[tuple[str, str], Blocked] = {}
        every: dict[str, Blocked] = {}
        for budget in self._budgets.values():
            if budget.mode != "block":
                continue
            _, end = window_bounds(budget.window, now)
            resets_at = None if end is None else end.timestamp()
            limit = pico(budget.limit_usd)
            totals = self._totals.get(current_window(budget, now), {})

            def blocked(subject: str, spent: int | None, b: Budget = budget,
                        r: float | None = resets_at) -> Blocked:
                return Blocked(b.scope, subject, b.window, b.limit_usd,
                               None if spent is None else usd(spent), r)

            if closed:
                if budget.each or budget.scope == "all":
                    _keep(every, budget.scope, blocked(EACH, None))
                else:
                    _keep(exact, (budget.scope, budget.subject), blocked(budget.subject, None))
            elif budget.scope == "all":
                if totals.get(EACH, 0) >= limit:
                    _keep(every, "all", blocked(EACH, totals.get(EACH, 0)))
            elif budget.each:
                if limit == 0:
                    _keep(every, budget.scope, blocked(EACH, 0))
                for value, spent in totals.items():
                    if value != OTHER and spent >= limit:
                        _keep(exact, (budget.scope, value), blocked(value, spent))
            elif totals.get(budget.subject, 0) >= limit:
                _keep(exact, (budget.scope, budget.subject),
                      blocked(budget.subject, totals.get(budget.subject, 0)))
        self.gate.blocks = Blocks(exact, every) if exact or every else NOTHING

    def _gauges(self) -> None:
        metrics = self._metrics
        now = utcnow()
        for budget in self._budgets.values():
            totals = self._totals.get(current_window(budget, now), {})
            values = sorted(totals.items(), key=lambda item: -item[1])
            limit = pico(budget.limit_usd)
            for value, spent in values[:GAUGED_VALUES] if budget.each else values:
                if value == OTHER:
                    continue
                scope, subject, window = (budget.scope, metrics.label("budget", value),
                                          budget.window)
                metrics.gauge(f"budget.spent.{scope}.{subject}.{window}", float(usd(spent)))
                metrics.gauge(f"budget.remaining.{scope}.{subject}.{window}",
                              float(usd(max(0, limit - spent))))

    def close(self) -> None:
        if self._sync is not None:
            self._sync.stop()
            self._sync = None
        if self._shared is not None:
            self._shared.close()


def _keep(into: dict[str, Blocked] | dict[tuple[str, str], Blocked], key: object,
          blocked: Blocked) -> None:
    """Of several spent budgets on one key, the one that resets last (``total``: never)."""
    held = into.get(key)  # type: ignore[call-overload]
    if held is None or (held.resets_at is not None and (
            blocked.resets_at is None or blocked.resets_at > held.resets_at)):
        into[key] = blocked  # type: ignore[index]


class _Notices:
    """The price-sync listener's view of budgets: a notice key changed, or maybe anything
    did (a (re)subscription, a price version change): re-read."""

    def __init__(self, runtime: BudgetRuntime) -> None:
        self._runtime = runtime

    def invalidate(self, provider: str, model: str) -> None:
        if provider == NOTICE_PROVIDER:
            self._runtime.notice(model)

    def invalidate_all(self) -> None:
        self._runtime.notice(CHANGED)
