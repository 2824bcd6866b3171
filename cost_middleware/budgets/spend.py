"""A window's spend from the ledger: the one query budgets count from.

Exact: it sums the integer companion (``cost_usd_pico``). Counters start from it, and
``budgets status`` and ``reconcile`` read it, so they agree with ``report`` to the pico-dollar.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import Engine

from cost_middleware.budgets.model import EACH, MAX_SUBJECT, MAX_SUBJECTS, Budget
from cost_middleware.schema import cost_records
from cost_middleware.utc import as_utc

#: The counter of the values past :data:`MAX_SUBJECTS` (no value is empty, so none is this).
OTHER = ""


def window_spend(engine: Engine, budget: Budget, start: datetime | None,
                 end: datetime | None) -> dict[str, int]:
    """Pico-dollars spent from ``start`` to ``end`` (None: unbounded) under ``budget``, by
    counter: the subject (``*`` for ``all``), or each value for a ``*`` budget, the most
    expensive :data:`MAX_SUBJECTS` apart and the rest summed under :data:`OTHER`."""
    c = cost_records.c
    # Summed as a plain integer: the companion's own type would turn the sum into dollars.
    total = sa.func.sum(sa.type_coerce(c.cost_usd_pico, sa.BigInteger))
    where: list[sa.ColumnElement[bool]] = [c.cost_usd_pico.is_not(None)]
    if start is not None:
        # As UTC: SQLite compares the stored UTC text.
        where.append(c.created_at >= as_utc(start))
    if end is not None:
        where.append(c.created_at < as_utc(end))
    if budget.scope == "all":
        query = sa.select(sa.literal(EACH), total).where(*where)
    else:
        column = c[budget.scope]
        if budget.each:
            where += [column.is_not(None), column != ""]
        else:
            where.append(column == budget.subject)
        query = sa.select(column, total).where(*where).group_by(column)
    with engine.connect() as conn:
        rows = [(str(value)[:MAX_SUBJECT], int(pico)) for value, pico in conn.execute(query)
                if pico is not None]
    rows.sort(key=lambda row: -row[1])
    spend: dict[str, int] = {}
    for value, pico in rows:
        if len(spend) < MAX_SUBJECTS:
            spend[value] = spend.get(value, 0) + pico
        else:
            spend[OTHER] = spend.get(OTHER, 0) + pico
    return spend
