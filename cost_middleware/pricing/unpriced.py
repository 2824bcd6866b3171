"""Why records are unpriced, grouped, each group with the command that prices it (``reprice``
explains what it leaves unpriced; ``prices check`` reports what is not billed).

Records without a cost are grouped in SQL by ``(provider, model)`` and whether they carry usage;
the book then says for each group whether a row prices the name (:func:`~cost_middleware.
pricing.resolve.resolve`), so nothing is read record by record.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from cost_middleware.pricing.book import PriceBook
from cost_middleware.pricing.commands import set_command
from cost_middleware.pricing.resolve import resolve
from cost_middleware.schema import cost_records
from cost_middleware.utc import as_utc

#: Why a record has no cost.
NO_ROW = "no row yet"
STARTS_AFTER = "row starts after the record"
NO_USAGE = "no usage"
BAD_USAGE = "bad usage"

#: What each reason means, for a reader who has not met it.
MEANING = {
    NO_ROW: "no price row matches the model",
    STARTS_AFTER: "the model's first row starts after these records",
    NO_USAGE: "the response carried no usage (nothing to price; no price fixes it)",
    BAD_USAGE: "a row is in effect but the usage is impossible (negative counts, or cached and "
               "cache-write tokens above the input): handed to CostTracker.record or "
               "record_usage by code that needs fixing (counted as price.bad_usage)",
}

_r = cost_records.c
_HAS_USAGE = _r.input_tokens.is_not(None)


@dataclass(frozen=True, slots=True)
class UnpricedGroup:
    """Records of one ``(provider, model)`` left unpriced for one reason."""

    reason: str
    provider: str
    model: str | None
    records: int
    first_at: datetime
    last_at: datetime
    #: The command that prices them (None: no price does).
    fix: str | None


def explain_unpriced(engine: Engine, book: PriceBook, since: datetime) -> list[UnpricedGroup]:
    """Every record created at or after ``since`` without a cost, grouped by reason, the
    largest groups first."""
    start = as_utc(since)
    unpriced = (_r.cost_usd.is_(None), _r.created_at >= start)
    query = select(_r.provider, _r.model, _HAS_USAGE, func.count(), func.min(_r.created_at),
                   func.max(_r.created_at)).where(*unpriced).group_by(
                       _r.provider, _r.model, _HAS_USAGE)
    groups: list[UnpricedGroup] = []
    with engine.connect() as conn:
        for provider, model, has_usage, count, first, last in conn.execute(query).all():
            first, last = as_utc(first), as_utc(last)
            if not has_usage:
                groups.append(UnpricedGroup(NO_USAGE, provider, model, count, first, last, None))
                continue
            rows = resolve(book, provider, model, last).history if model else ()
            if not rows:
                fix = set_command(provider, model) if model else None
                groups.append(UnpricedGroup(NO_ROW, provider, model, count, first, last, fix))
                continue
            begins, early = rows[0].effective_from, 0
            if first < begins:
                early, early_last = conn.execute(
                    select(func.count(), func.max(_r.created_at)).where(
                        *unpriced, _HAS_USAGE, _r.provider == provider, _r.model == model,
                        _r.created_at < begins)).one()
                groups.append(UnpricedGroup(
                    STARTS_AFTER, provider, model, early, first, as_utc(early_last),
                    set_command(rows[0].provider, rows[0].model, first)))
            if count > early:  # a row was in effect for these and still priced nothing
                groups.append(UnpricedGroup(BAD_USAGE, provider, model, count - early,
                                            max(first, begins) if early else first, last, None))
    groups.sort(key=lambda g: (-g.records, g.provider, g.model or ""))
    return groups
