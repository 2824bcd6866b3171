"""An import planned against ``model_prices`` (the diff a dry run prints), then applied.

:func:`plan_import` reads and converts a source (``sources``) and sorts each row against its
model's rows in the table:

* **added**: a model without rows (every row the source has for it);
* **changed**: rates differing from the row they follow (a new row), or from the model's newest
  row with the same ``effective_from`` (a correction, rewritten with a new version);
* **unchanged**: the same rates (aliases and ``source`` aside): nothing is written;
* **skipped**, with the reason: the converter's skips, a second entry for the same row, and a
  row older than its model's newest row: a row is never replaced by an older one.

Written rows keep the aliases of the row they follow when the source gives none (LiteLLM and
genai-prices never do), so names matched through an alias stay matched. The guards' refusals
are part of the plan; :func:`apply_plan` writes nothing while there are any, unless forced.
Writing goes through the admin's write path (one transaction, new versions, the change
notice per model after the commit, which reaches every process through Redis).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import BinaryIO

from sqlalchemy.engine import Engine

from cost_middleware.pricing.admin import OnChange, price_history, write_prices
from cost_middleware.pricing.imports.conversion import Skip
from cost_middleware.pricing.imports.guards import DEFAULT_MAX_CHANGE, Refusal, refusals
from cost_middleware.pricing.imports.sources import Loaded, in_family, load
from cost_middleware.pricing.price import RATE_FIELDS, Price, Tier

_Key = tuple[str, str]
_Rates = tuple[Decimal | tuple[Tier, ...] | None, ...]


@dataclass(frozen=True, slots=True)
class Change:
    """A model's row (``old``) and the row that replaces or follows it (``new``)."""

    old: Price
    new: Price


@dataclass(slots=True)
class ImportPlan:
    """What importing a source would do; see the module doc."""

    source: str
    format: str
    detected: bool
    existing_models: int
    added: list[Price] = field(default_factory=list)
    changed: list[Change] = field(default_factory=list)
    unchanged: list[Price] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    #: Corrupt source entries (also a refusal).
    invalid: list[Skip] = field(default_factory=list)
    #: Models an earlier import of this source priced that the source no longer has (kept).
    dropped: list[Price] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)

    @property
    def rows(self) -> list[Price]:
        """The rows applying the plan writes."""
        return [*self.added, *(change.new for change in self.changed)]


class ImportRefused(Exception):
    """:func:`apply_plan` of a plan with refusals, not forced."""

    def __init__(self, plan: ImportPlan) -> None:
        super().__init__("import refused: " + "; ".join(r.reason for r in plan.refusals))
        self.plan = plan


def plan_import(
    engine: Engine, source: str | os.PathLike[str], *, source_format: str | None = None,
    max_change: float = DEFAULT_MAX_CHANGE, at: datetime | None = None,
    stdin: BinaryIO | None = None,
) -> ImportPlan:
    """Plan importing ``source`` (a path, ``-`` for stdin, ``litellm`` or ``genai-prices``).

    Undated rows (LiteLLM's) take effect at ``at`` (default now). Writes nothing; raises
    :class:`~cost_middleware.pricing.imports.sources.SourceError` for a source that cannot be
    read or understood.
    """
    if not 0 <= max_change <= 1:
        raise ValueError(f"max_change must be a fraction between 0 and 1, not {max_change}")
    loaded = load(source, source_format=source_format, at=at or datetime.now(UTC), stdin=stdin)
    history: dict[_Key, list[Price]] = {}
    for row in price_history(engine):
        history.setdefault((row.provider, row.model), []).append(row)
    return _compare(loaded, history, max_change)


def apply_plan(
    engine: Engine, plan: ImportPlan, *, force: bool = False, on_change: OnChange | None = None,
) -> int:
    """Write the plan's rows; returns the rows written. Raises :class:`ImportRefused` when the
    plan has refusals and ``force`` is false."""
    if plan.refusals and not force:
        raise ImportRefused(plan)
    rows = plan.rows
    if not rows:  # nothing to write: no transaction, no write lock
        return 0
    return write_prices(engine, rows, newer_only=True, on_change=on_change)


def _compare(loaded: Loaded, history: dict[_Key, list[Price]], max_change: float) -> ImportPlan:
    conversion = loaded.conversion
    plan = ImportPlan(loaded.label, loaded.format, loaded.detected, len(history),
                      skipped=list(conversion.skipped), invalid=list(conversion.invalid))
    incoming: dict[_Key, list[Price]] = {}
    first_name: dict[tuple[str, str, datetime], str] = {}
    for name, price in conversion.entries:
        key = (price.provider, price.model)
        row_key = (*key, price.effective_from)
        if row_key in first_name:
            plan.skipped.append(Skip(name, "same row as another entry", first_name[row_key], key))
            continue
        first_name[row_key] = name
        incoming.setdefault(key, []).append(price)
    for key, prices in incoming.items():
        prices.sort(key=lambda p: p.effective_from)
        existing = history.get(key)
        if not existing:
            plan.added.extend(prices)
            continue
        _sort_model(plan, prices, existing)
    present = incoming.keys() | {s.key for s in (*plan.skipped, *plan.invalid) if s.key}
    plan.dropped = [rows[-1] for key, rows in history.items()
                    if key not in present and in_family(rows[-1].source, loaded.family)]
    plan.refusals = refusals(plan.invalid, plan.rows, (
        (c.new.provider, c.new.model) for c in plan.changed), plan.dropped,
        plan.existing_models, max_change)
    return plan


def _sort_model(plan: ImportPlan, prices: list[Price], existing: list[Price]) -> None:
    """Sort one model's incoming rows (by date) against its existing rows (by date)."""
    newest = existing[-1]
    by_date = {p.effective_from: p for p in existing}
    previous = newest
    for price in prices:
        same_date = by_date.get(price.effective_from)
        if price.effective_from < newest.effective_from:
            if same_date is not None and _rates(same_date) == _rates(price):
                plan.unchanged.append(same_date)
            else:
                plan.skipped.append(Skip(
                    price.label, "older than the newest row",
                    f"{price.effective_from:%Y-%m-%d} < {newest.effective_from:%Y-%m-%d} "
                    f"({newest.source or 'no source'})", (price.provider, price.model)))
            continue
        base = same_date or previous
        if _rates(base) == _rates(price):
            plan.unchanged.append(base)
            continue
        if not price.aliases and previous.aliases:
            price = replace(price, aliases=previous.aliases)
        plan.changed.append(Change(base, price))
        previous = price


def _rates(price: Price) -> _Rates:
    return (*(getattr(price, name) for name in RATE_FIELDS), price.tiers)
