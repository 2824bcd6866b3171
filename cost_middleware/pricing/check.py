"""``prices check``: what the ledger shows is not billed, or billed from old rates.

Over the records of a period: the models left unpriced (:mod:`~cost_middleware.pricing.
unpriced`, records without usage left out: no price bills them); the models priced from a row
older than a given age that is still the one in effect; and records priced by a row since
replaced or deleted (a later row now covers them, or nothing does). Each finding carries the
command that fixes it. Costs are summed from the exact ``cost_usd_pico`` companion.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from cost_middleware.pricing.book import PriceBook
from cost_middleware.pricing.commands import import_command, iso, reprice_command
from cost_middleware.pricing.price import EPOCH
from cost_middleware.pricing.unpriced import NO_USAGE, explain_unpriced
from cost_middleware.schema import cost_records, model_prices
from cost_middleware.utc import as_utc, utcnow

#: Kinds of finding besides the reasons of :mod:`~cost_middleware.pricing.unpriced`.
STALE = "stale"
SUPERSEDED = "superseded"

_r = cost_records.c
_p = model_prices.c


@dataclass(frozen=True, slots=True)
class Finding:
    """Records of one ``(provider, model)`` not billed, or billed from an old row."""

    #: ``unpriced: <reason>``, :data:`STALE` or :data:`SUPERSEDED`.
    kind: str
    provider: str
    model: str | None
    records: int
    first_at: datetime
    last_at: datetime
    #: What they were billed (None: unpriced).
    cost_usd: Decimal | None
    #: What is wrong, in a sentence.
    detail: str
    #: The command that fixes it (None: no command does).
    fix: str | None


def check_prices(engine: Engine, book: PriceBook, since: datetime, stale_after: timedelta,
                 now: datetime | None = None) -> list[Finding]:
    """The findings over records created at or after ``since``: unpriced ones first, then
    those billed from stale or replaced rows, the largest first."""
    moment = utcnow() if now is None else as_utc(now)
    findings = [
        Finding(f"unpriced: {g.reason}", g.provider, g.model, g.records, g.first_at, g.last_at,
                None, f"{g.records:,} records without a cost", g.fix)
        for g in explain_unpriced(engine, book, since) if g.reason != NO_USAGE]
    billed = (select(_r.provider, _r.model, _r.price_version, func.count(),
                     func.min(_r.created_at), func.max(_r.created_at), func.sum(_r.cost_usd_pico))
              .where(_r.cost_usd.is_not(None), _r.created_at >= as_utc(since))
              .group_by(_r.provider, _r.model, _r.price_version))
    with engine.connect() as conn:
        groups = conn.execute(billed).all()
        rows = conn.execute(select(_p.provider, _p.model, _p.effective_from, _p.updated_at,
                                   _p.source, _p.version)).all()
    by_version = {row.version: row for row in rows}
    # The row each model has in effect now.
    current: dict[tuple[str, str], tuple[datetime, int]] = {}
    for row in rows:
        start = as_utc(row.effective_from)
        key = (row.provider, row.model)
        if start <= moment and (key not in current or start > current[key][0]):
            current[key] = (start, row.version)
    cutoff = moment - stale_after
    late: list[Finding] = []
    for provider, model, version, count, first, last, cost in groups:
        first, last = as_utc(first), as_utc(last)
        used = by_version.get(version)
        if used is None:  # corrected (rewritten with a new version) or deleted since
            late.append(Finding(SUPERSEDED, provider, model, count, first, last, cost,
                                f"priced by version {version}, a row since corrected or "
                                "deleted", reprice_command(first)))
            continue
        start, in_effect = current.get((used.provider, used.model), (EPOCH, version))
        if in_effect != version:
            if start <= last:  # a row written since covers some of them
                late.append(Finding(
                    SUPERSEDED, provider, model, count, first, last, cost,
                    f"priced by {used.provider}/{used.model} version {version}; version "
                    f"{in_effect} applies from {iso(start)}", reprice_command(max(first, start))))
            continue
        # A row dated at the epoch (a first price, or an undated catalog entry) is as old as
        # its writing.
        dated = as_utc(used.updated_at) if as_utc(used.effective_from) == EPOCH \
            else as_utc(used.effective_from)
        if dated < cutoff:
            late.append(Finding(
                STALE, provider, model, count, first, last, cost,
                f"priced by {used.provider}/{used.model} version {version}, rates from "
                f"{iso(dated)} ({(moment - dated).days} days old)", import_command(used.source)))
    late.sort(key=lambda f: (-(f.cost_usd or 0), -f.records, f.provider, f.model or ""))
    return findings + late
