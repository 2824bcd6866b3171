"""An import plan as text for people (what ``prices import`` prints) and as JSON for programs.

The text counts each kind of row, lists every change with its old and new rates, groups the
skips by reason (with the most frequent details), and lists each refusal's rows; lists are cut
at :data:`SHOWN` lines unless ``verbose``. The JSON has every row in full.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from cost_middleware.pricing.imports.conversion import Skip
from cost_middleware.pricing.imports.plan import Change, ImportPlan
from cost_middleware.pricing.price import RATE_FIELDS, Price, format_rate

#: Lines of each list shown without ``verbose``.
SHOWN = 20
#: Details named beside each skip reason.
_DETAILS = 4


def describe(plan: ImportPlan, *, verbose: bool = False) -> list[str]:
    """The plan in lines of plain text (no markup)."""
    how = ", detected from the content" if plan.detected else ""
    lines = [f"Source: {plan.source} (format {plan.format}{how})",
             f"{len(plan.added):,} added, {len(plan.changed):,} changed, "
             f"{len(plan.unchanged):,} unchanged, {len(plan.skipped):,} skipped"
             + (f", {len(plan.invalid):,} corrupt" if plan.invalid else "")]
    if plan.changed:
        lines.append("Changed (USD per 1M tokens, old -> new):")
        lines += _cut([_change(c) for c in plan.changed], verbose)
    if plan.added and verbose:
        lines.append("Added:")
        lines += [f"  {p.label} from {p.effective_from:%Y-%m-%d}: {_rates(p)}" for p in plan.added]
    if plan.skipped:
        lines.append("Skipped:")
        lines += _grouped(plan.skipped)
        if verbose:
            lines += [f"  {s.name}: {s.reason}" + (f" ({s.detail})" if s.detail else "")
                      for s in plan.skipped]
    if plan.dropped:
        lines.append(f"No longer in the source (rows kept): {len(plan.dropped):,} models")
        lines += _cut([f"  {p.label}" for p in plan.dropped], verbose)
    for refusal in plan.refusals:
        lines.append(f"Refused: {refusal.reason}:")
        lines += _cut([f"  {row}" for row in refusal.rows], verbose)
    return lines


def as_json(plan: ImportPlan) -> dict[str, Any]:
    """Every row of the plan (decimals as strings)."""
    return {
        "source": plan.source, "format": plan.format, "detected": plan.detected,
        "counts": {"added": len(plan.added), "changed": len(plan.changed),
                   "unchanged": len(plan.unchanged), "skipped": len(plan.skipped),
                   "corrupt": len(plan.invalid), "dropped": len(plan.dropped)},
        "added": [p.to_catalog() for p in plan.added],
        "changed": [{"old": c.old.to_catalog(), "new": c.new.to_catalog()} for c in plan.changed],
        "unchanged": [p.label for p in plan.unchanged],
        "skipped": [_skip(s) for s in plan.skipped],
        "corrupt": [_skip(s) for s in plan.invalid],
        "dropped": [p.label for p in plan.dropped],
        "refusals": [{"reason": r.reason, "rows": list(r.rows)} for r in plan.refusals],
    }


def _skip(skip: Skip) -> dict[str, str]:
    return {"name": skip.name, "reason": skip.reason, "detail": skip.detail}


def _cut(lines: list[str], verbose: bool) -> list[str]:
    if verbose or len(lines) <= SHOWN:
        return lines
    return [*lines[:SHOWN], f"  … and {len(lines) - SHOWN:,} more (--verbose lists them all)"]


def _grouped(skips: Sequence[Skip]) -> list[str]:
    by_reason = Counter(s.reason for s in skips)
    details: dict[str, Counter[str]] = {}
    for s in skips:
        if s.detail:
            details.setdefault(s.reason, Counter())[s.detail] += 1
    lines = []
    for reason, count in by_reason.most_common():
        common = details.get(reason, Counter()).most_common(_DETAILS)
        named = ", ".join(f"{d} {n:,}" if n > 1 else d for d, n in common)
        more = len(details.get(reason, ())) - len(common)
        lines.append(f"  {count:>6,}  {reason}" + (f": {named}" if named else "")
                     + (f", … ({more:,} more)" if more > 0 else ""))
    return lines


def _change(change: Change) -> str:
    old, new = change.old, change.new
    moved = [f"{name} {_text(getattr(old, name))} -> {_text(getattr(new, name))}"
             for name in RATE_FIELDS if getattr(old, name) != getattr(new, name)]
    if old.tiers != new.tiers:
        moved.append(f"tiers {_tiers(old)} -> {_tiers(new)}")
    when = (f" (correction of {old.effective_from:%Y-%m-%d})"
            if old.effective_from == new.effective_from
            else f" from {new.effective_from:%Y-%m-%d}")
    return f"  {new.label}{when}: " + ", ".join(moved)


def _rates(price: Price) -> str:
    text = ", ".join(f"{name} {_text(getattr(price, name))}" for name in RATE_FIELDS
                     if getattr(price, name) is not None)
    return text + (f", tiers {_tiers(price)}" if price.tiers else "")


def _tiers(price: Price) -> str:
    if not price.tiers:
        return "none"
    return "; ".join(f">{t.above_input_tokens} input {_text(t.input)}" for t in price.tiers)


def _text(rate: Decimal | None) -> str:
    return "none" if rate is None else format_rate(rate)
