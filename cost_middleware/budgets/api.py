"""Budgets from Python: what the ``budgets`` commands call.

Every change is written to the ``budgets`` table, then (with Redis) announced to every
process, which applies it within milliseconds; without Redis a process re-reads the table
every few seconds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from redis.exceptions import RedisError
from sqlalchemy import Engine

from cost_middleware.budgets import store
from cost_middleware.budgets.counting import CHANGED, RedisCounters
from cost_middleware.budgets.model import Budget, window_bounds
from cost_middleware.budgets.runtime import current_window, recount, usd
from cost_middleware.budgets.spend import OTHER, window_spend
from cost_middleware.config import Settings
from cost_middleware.utc import utcnow

log = logging.getLogger("cost_middleware")


@dataclass(frozen=True, slots=True)
class Status:
    """One budget's standing in its current window (one row per value of a ``*`` budget)."""

    scope: str
    #: The budget's subject, a value of a ``*`` budget, or ``(other)`` for values past the cap.
    subject: str
    window: str
    mode: str
    limit_usd: Decimal
    spent_usd: Decimal
    remaining_usd: Decimal
    #: When the window resets (None: ``total``, never).
    resets_at: datetime | None
    #: Whether a ``block`` budget blocks now.
    blocking: bool


@dataclass(frozen=True, slots=True)
class Recount:
    """A window restarted from the ledger: what Redis held before (None: nothing) and now."""

    budget: Budget
    before_usd: Decimal | None
    after_usd: Decimal


def set_budget(engine: Engine, settings: Settings, budget: Budget) -> Budget:
    """Create or replace a budget, and tell every process."""
    stored = store.set_budget(engine, budget)
    _announce(settings)
    return stored


def delete_budget(engine: Engine, settings: Settings, scope: str, subject: str,
                  window: str | None = None) -> int:
    """Remove budgets of (scope, subject), of one window or all; returns how many."""
    removed = store.delete_budget(engine, scope, subject, window)
    if removed:
        _announce(settings)
    return removed


def list_budgets(engine: Engine, scope: str | None = None) -> list[Budget]:
    return store.list_budgets(engine, scope)


def status(engine: Engine, scope: str | None = None,
           at: datetime | None = None) -> list[Status]:
    """Spend against every budget in the window holding ``at`` (now), from the ledger: the
    figures ``report`` gives for that window, to the pico-dollar."""
    at = utcnow() if at is None else at
    rows = []
    for budget in store.list_budgets(engine, scope):
        start, end = window_bounds(budget.window, at)
        spend = window_spend(engine, budget, start, end) or {budget.subject: 0}
        for value, pico in spend.items():
            spent = usd(pico)
            rows.append(Status(
                budget.scope, "(other)" if value == OTHER else value, budget.window,
                budget.mode, budget.limit_usd, spent, max(Decimal(0), budget.limit_usd - spent),
                end, budget.mode == "block" and value != OTHER and spent >= budget.limit_usd))
    return rows


def reconcile(engine: Engine, settings: Settings) -> list[Recount]:
    """Restart every budget's current window in Redis from the ledger, and tell every
    process. Without Redis there is nothing shared to correct: each process counts from the
    ledger itself; the ledger's figures are returned."""
    now = utcnow()
    budgets = store.list_budgets(engine)
    if settings.redis_url is None:
        return [Recount(b, None, usd(sum(window_spend(
            engine, b, *window_bounds(b.window, now)).values()))) for b in budgets]
    from cost_middleware.pricing.redis_keys import SharedClient

    shared = SharedClient(settings.redis_url)
    try:
        counters = RedisCounters(shared)
        out = []
        for budget in budgets:
            before = counters.read(current_window(budget, now))
            after = recount(engine, counters, budget, now, force=True)
            out.append(Recount(budget, None if before is None else usd(sum(before.values())),
                               usd(sum(after.values()))))
        counters.notify(CHANGED)
        return out
    finally:
        shared.close()


def _announce(settings: Settings) -> None:
    """Tell every process budgets changed; without Redis (or with it down) they re-read the
    table at their next poll."""
    if settings.redis_url is None:
        return
    from cost_middleware.pricing.redis_keys import SharedClient

    shared = SharedClient(settings.redis_url)
    try:
        RedisCounters(shared).notify(CHANGED)
    except (RedisError, OSError) as exc:
        log.warning("cost_middleware: budgets changed, but Redis could not say so (%s); "
                    "processes apply it at their next poll", type(exc).__name__)
    finally:
        shared.close()

