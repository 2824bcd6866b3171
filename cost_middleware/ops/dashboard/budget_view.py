"""Budgets against what their current window has spent: the budgets' own table and window
rules (:mod:`cost_middleware.budgets`), the spend counted from the ledger as they count it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import Engine

from cost_middleware.budgets.model import window_bounds
from cost_middleware.budgets.spend import OTHER, window_spend
from cost_middleware.budgets.store import list_budgets
from cost_middleware.ops.dashboard.queries import OTHER_KEY, dollars


@dataclass(frozen=True, slots=True)
class BudgetLine:
    scope: str
    #: The budget's subject; for a ``*`` budget, the one value this line is about.
    subject: str
    window: str
    limit_usd: Decimal
    spent_usd: Decimal
    mode: str
    alert_at: float | None
    #: Start of the current window (UTC); None for ``total``.
    window_start: datetime | None

    @property
    def used(self) -> Decimal:
        """Spent as a fraction of the limit (a zero limit is used up by any spend)."""
        if self.limit_usd == 0:
            return Decimal(1) if self.spent_usd > 0 else Decimal(0)
        return self.spent_usd / self.limit_usd

    @property
    def state(self) -> str:
        if self.spent_usd >= self.limit_usd and (self.limit_usd > 0 or self.spent_usd > 0):
            return "spent"
        if self.alert_at is not None and self.used >= Decimal(repr(self.alert_at)):
            return "alert"
        return "ok"


def budget_lines(engine: Engine, now: datetime | None = None) -> list[BudgetLine]:
    """Every budget with its current window's spend; a ``*`` budget gives one line per value
    that spent in the window (the most spent first; past the budgets' own cap, one line of
    the rest). A budget nothing has spent against shows $0."""
    moment = now or datetime.now(UTC)
    lines: list[BudgetLine] = []
    for budget in list_budgets(engine):
        start, end = window_bounds(budget.window, moment)
        spend = window_spend(engine, budget, start, end) or {budget.subject: 0}
        lines.extend(BudgetLine(budget.scope, OTHER_KEY if value == OTHER else value,
                                budget.window, budget.limit_usd, dollars(pico), budget.mode,
                                budget.alert_at, start)
                     for value, pico in spend.items())
    return lines
