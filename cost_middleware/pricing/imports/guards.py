"""What makes an import suspicious enough to refuse unless it is forced (``--force``).

As LiteLLM refuses a price map that shrank too much, an import is refused when:

* a source entry is corrupt (a negative, non-numeric or non-finite figure, a malformed entry);
* a rate to be written is absurd: above :data:`MAX_RATE` (USD per 1M tokens, or per 1,000
  web searches), or a cache-read rate above the input rate it discounts;
* it would change, or no longer contain, more than ``max_change`` of the models that have
  prices (a model "no longer contained" is one whose newest row an earlier import of the same
  source wrote and that the source now lacks: a truncated map).

Each refusal names its rows and why. Forcing imports what can be imported: corrupt entries are
still left out, since they have no rates to write.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from cost_middleware.pricing.imports.conversion import Skip
from cost_middleware.pricing.price import RATE_FIELDS, TIER_RATES, Price, format_rate

#: Default share of the priced models one import may change or drop.
DEFAULT_MAX_CHANGE = 0.2
#: No provider charges this much per 1M tokens: a figure above it is a unit or typing error.
MAX_RATE = Decimal(10_000)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an import is refused, and the rows concerned (each with its figures)."""

    reason: str
    rows: tuple[str, ...]


def refusals(
    invalid: Sequence[Skip], writes: Sequence[Price], changed: Iterable[tuple[str, str]],
    dropped: Sequence[Price], existing_models: int, max_change: float,
) -> list[Refusal]:
    """Every guard's refusal of an import (none: it may go ahead)."""
    found: list[Refusal] = []
    if invalid:
        found.append(Refusal("the source has corrupt entries",
                             tuple(f"{s.name}: {s.detail}" for s in invalid)))
    too_high: list[str] = []
    cached_above: list[str] = []
    for price in writes:
        for where, rate in _rates(price):
            if rate > MAX_RATE:
                too_high.append(f"{price.label}: {where} {format_rate(rate)}")
        levels = [("", price.input, price.cached_input)] + [
            (f"tier >{t.above_input_tokens} ", t.input, t.cached_input) for t in price.tiers]
        for where, inp, cached in levels:
            if cached is not None and cached > inp:
                cached_above.append(f"{price.label}: {where}cached_input {format_rate(cached)} "
                                    f"> input {format_rate(inp)}")
    if too_high:
        found.append(Refusal(f"rates above {MAX_RATE:,} USD per 1M tokens", tuple(too_high)))
    if cached_above:
        found.append(Refusal("cache-read rates above the input rate", tuple(cached_above)))
    changed_models = sorted({f"{p}/{m}" for p, m in changed})
    moved = len(changed_models) + len(dropped)
    if existing_models and moved / existing_models > max_change:
        found.append(Refusal(
            f"it would change {len(changed_models)} and drop {len(dropped)} of the "
            f"{existing_models} priced models ({moved / existing_models:.0%}, more than "
            f"{max_change:.0%})",
            tuple([f"{m}: changed" for m in changed_models]
                  + [f"{p.label}: no longer in the source" for p in dropped])))
    return found


def _rates(price: Price) -> Iterable[tuple[str, Decimal]]:
    for name in RATE_FIELDS:
        rate = getattr(price, name)
        if rate is not None:
            yield name, rate
    for tier in price.tiers:
        for name in TIER_RATES:
            rate = getattr(tier, name)
            if rate is not None:
                yield f"tier >{tier.above_input_tokens} {name}", rate
