"""The ``budgets`` table: set (insert or update), list, delete."""

from __future__ import annotations

from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy import Engine

from cost_middleware.budgets.model import Budget
from cost_middleware.schema import budgets as table
from cost_middleware.utc import as_utc, utcnow


def set_budget(engine: Engine, budget: Budget) -> Budget:
    """Create or replace the budget of (scope, subject, window); returns it as stored."""
    now = utcnow()
    c = table.c
    key = ((c.scope == budget.scope) & (c.subject == budget.subject)
           & (c.window == budget.window))
    values = {"limit_usd": budget.limit_usd, "limit_usd_pico": budget.limit_usd,
              "mode": budget.mode, "alert_at": budget.alert_at, "updated_at": now}
    with engine.begin() as conn:
        updated = conn.execute(sa.update(table).where(key).values(**values)).rowcount
        if not updated:
            conn.execute(sa.insert(table).values(scope=budget.scope, subject=budget.subject,
                                                 window=budget.window, created_at=now, **values))
    return Budget(budget.scope, budget.subject, budget.window, budget.limit_usd, budget.mode,
                  budget.alert_at, now)


def list_budgets(engine: Engine, scope: str | None = None) -> list[Budget]:
    """Every budget (of ``scope``), in (scope, subject, window) order."""
    c = table.c
    query = sa.select(c.scope, c.subject, c.window, c.limit_usd, c.mode, c.alert_at,
                      c.updated_at).order_by(c.scope, c.subject, c.window)
    if scope is not None:
        query = query.where(c.scope == scope)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [Budget(r.scope, r.subject, r.window, Decimal(r.limit_usd), r.mode, r.alert_at,
                   as_utc(r.updated_at)) for r in rows]


def delete_budget(engine: Engine, scope: str, subject: str, window: str | None = None) -> int:
    """Remove the budgets of (scope, subject), of one window or all; returns how many."""
    c = table.c
    where = (c.scope == scope) & (c.subject == subject)
    if window is not None:
        where &= c.window == window
    with engine.begin() as conn:
        return int(conn.execute(sa.delete(table).where(where)).rowcount)
