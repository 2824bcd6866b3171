"""genai-prices' data (its ``data.json``: a list of providers with their models) → our rows.

Prices are already USD per 1M tokens (``*_mtok``; ``web_searches_kcount`` is USD per 1,000
searches) and exact decimals. Fields carried: ``input_mtok`` → ``input``, ``output_mtok`` →
``output``, ``cache_read_mtok`` → ``cached_input``, ``cache_write_mtok`` → ``cache_write``,
``cache_write_1h_mtok`` → ``cache_write_1h``, ``web_searches_kcount`` → ``web_search_per_1k``,
``input_audio_mtok`` → ``audio_input``, ``output_audio_mtok`` → ``audio_output``.
A tiered price (``{"base": …, "tiers": [{"start": N, "price": …}]}``, the whole request repriced
once input exceeds ``start``, as ours) becomes our tiers, one per distinct start. A model's
``prices`` is one price, or a list of conditional prices: each with a ``start_date`` becomes a
row effective from that date (future dates are scheduled changes), one without a constraint is
effective from always. Time-of-day prices have no equivalent here: such models are skipped.
Request variants ``{"processing": "batch"}`` and ``{"service_tier": "flex" | "priority"}``
become our service tiers ``batch``, ``flex``, ``priority`` (the first variant stating a figure
gives it, as in genai-prices; one with a start date applies to rows from that date); other
variants (``fast``, routes, search types) and units (images, requests, cached audio) have no
field of ours and are left out.

The installed package ships its data as Python objects (``genai_prices.data``), which
:func:`from_objects` turns into that same JSON shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal
from functools import partial
from typing import Any

from cost_middleware.pricing.imports.conversion import (
    GENAI_PRICES,
    BadRate,
    Conversion,
    Skip,
    scaled_rate,
)
from cost_middleware.pricing.imports.providers import ours
from cost_middleware.pricing.price import (
    EPOCH,
    TIER_RATES,
    Price,
    PriceError,
    ServiceTier,
    Tier,
    parse_datetime,
)
from cost_middleware.usage.service_tier import PRICED

_FIELDS = {
    "input_mtok": "input",
    "output_mtok": "output",
    "cache_read_mtok": "cached_input",
    "cache_write_mtok": "cache_write",
    "cache_write_1h_mtok": "cache_write_1h",
    "web_searches_kcount": "web_search_per_1k",
    "input_audio_mtok": "audio_input",
    "output_audio_mtok": "audio_output",
}
#: A request variant's ``when`` → our service tier.
_VARIANTS = {("processing", "batch"): "batch", ("service_tier", "flex"): "flex",
             ("service_tier", "priority"): "priority"}
#: One field's price: a rate, or (base rate, ((start, rate), …) ascending).
_Value = Decimal | tuple[Decimal, tuple[tuple[int, Decimal], ...]]


def convert(data: Any, source: str, at: datetime) -> Conversion:
    """Our rows from decoded genai-prices data, each with ``source`` (``at`` is unused: the
    data dates its own changes)."""
    result = Conversion()
    if not isinstance(data, list):
        result.invalid.append(Skip(source, "not genai-prices data", "the top level is not a list"))
        return result
    for provider in data:
        if not isinstance(provider, Mapping) or not isinstance(provider.get("models"), list):
            result.invalid.append(Skip(str(provider)[:60], "corrupt entry", "not a provider"))
            continue
        theirs = provider.get("id")
        for model in provider["models"]:
            _convert_model(result, theirs, model, source)
    return result


def _convert_model(result: Conversion, theirs: object, model: Any, source: str) -> None:
    model_id = model.get("id") if isinstance(model, Mapping) else None
    if not isinstance(model_id, str) or not model_id:
        result.invalid.append(Skip(f"{theirs}/{model!r:.40}", "corrupt entry", "a model has no id"))
        return
    name = f"{theirs}/{model_id}"
    target = ours(GENAI_PRICES, theirs, model_id)
    if target is None:
        result.skip(name, "provider not priced by us", str(theirs))
        return
    pair = (target.provider, model_id)
    prices = model.get("prices")
    versions = [{"prices": prices}] if isinstance(prices, Mapping) else prices
    if not isinstance(versions, list) or not versions:
        result.invalid.append(Skip(name, "corrupt entry", "prices is neither a price nor a list",
                                   pair))
        return
    variants = model.get("price_variants") or []
    if not isinstance(variants, list):
        result.invalid.append(Skip(name, "corrupt entry", "price_variants is not a list", pair))
        return
    result.add(name, pair, partial(_rows, versions, pair, name, source, variants))


def _rows(versions: list[Any], pair: tuple[str, str], name: str,
          source: str, variants: list[Any]) -> list[Price] | str:
    """A model's rows, one per dated price, or the reason it has none."""
    # A later price with the same start takes precedence, as in genai-prices.
    rows: dict[datetime, Price] = {}
    for version in versions:
        constraint = version.get("constraint") if isinstance(version, Mapping) else None
        if isinstance(constraint, Mapping) and "start_date" not in constraint:
            return "time-of-day prices"
        rates = version.get("prices") if isinstance(version, Mapping) else None
        if not isinstance(rates, Mapping):
            raise BadRate("a conditional price has no prices")
        effective = EPOCH if constraint is None else parse_datetime(
            constraint["start_date"], name, "start_date")
        row = _price(rates, pair, effective, source, _variants_at(variants, effective, name))
        if isinstance(row, str):
            return row
        rows[row.effective_from] = row
    return list(rows.values())


def _variants_at(variants: list[Any], effective: datetime,
                 name: str) -> dict[str, dict[str, Any]]:
    """Our service tier → the figures its variants give a row effective at ``effective``."""
    found: dict[str, dict[str, Any]] = {}
    for variant in variants:
        if not isinstance(variant, Mapping) or not isinstance(variant.get("when"), Mapping):
            raise BadRate("a price variant has no 'when'")
        when = variant["when"]
        tier = _VARIANTS.get(next(iter(when.items()))) if len(when) == 1 else None
        if tier is None:
            continue
        constraint = variant.get("constraint")
        if constraint is not None:
            if not isinstance(constraint, Mapping) or "start_date" not in constraint:
                continue  # time of day: no equivalent here
            if parse_datetime(constraint["start_date"], name, "start_date") > effective:
                continue
        prices = variant.get("prices")
        if not isinstance(prices, Mapping):
            raise BadRate("a price variant has no prices")
        figures = found.setdefault(tier, {})
        for key, raw in prices.items():
            if raw is not None:
                figures.setdefault(key, raw)
    return found


def _price(rates: Mapping[str, Any], pair: tuple[str, str], effective: datetime,
           source: str, variants: Mapping[str, Mapping[str, Any]]) -> Price | str:
    """One dated row, or the reason the model has none."""
    base, tiers = _schedule(rates, None)
    if "input" not in base:
        return "no per-token input rate"
    if "output" not in base:
        return "no per-token output rate"
    services = []
    for tier in sorted(variants, key=PRICED.index):
        rates_of, tiers_of = _schedule(variants[tier], base["input"])
        if rates_of or tiers_of:
            services.append(ServiceTier(name=tier, **{"input": base["input"], **rates_of},
                                        tiers=tiers_of))
    return Price(
        provider=pair[0], model=pair[1], input=base["input"], output=base["output"],
        cached_input=base.get("cached_input"), cache_write=base.get("cache_write"),
        cache_write_1h=base.get("cache_write_1h"), web_search_per_1k=base.get("web_search_per_1k"),
        audio_input=base.get("audio_input"), audio_output=base.get("audio_output"),
        tiers=tiers, service_tiers=tuple(services), effective_from=effective, source=source,
    )


def _schedule(rates: Mapping[str, Any], below: Decimal | None,
              ) -> tuple[dict[str, Decimal], tuple[Tier, ...]]:
    """The base rates and tiers of a price (``below`` None) or of a variant (``below``: the
    standard input rate, which a variant's tier without an input rate keeps)."""
    values: dict[str, _Value] = {}
    for key, raw in rates.items():
        field_name = _FIELDS.get(key)
        if field_name is not None and raw is not None:
            if below is not None and field_name not in TIER_RATES:
                continue  # per-request fees have no service-tier rate of ours
            values[field_name] = _value(raw, key, field_name in TIER_RATES)
    base = {name: value if isinstance(value, Decimal) else value[0]
            for name, value in values.items()}
    tiered = {name: value[1] for name, value in values.items() if not isinstance(value, Decimal)}
    starts = sorted({start for steps in tiered.values() for start, _ in steps})
    keep = base.get("input", below)
    if keep is None:  # a price without an input rate: refused by the caller
        return base, ()
    tiers = []
    for start in starts:
        # A field's rate above ``start``: its highest tier starting at or below it.
        at_start = {name: next((rate for s, rate in reversed(steps) if s <= start), base[name])
                    for name, steps in tiered.items()}
        tiers.append(Tier(above_input_tokens=start, **{"input": keep, **at_start}))
    return base, tuple(tiers)


def _value(raw: Any, key: str, may_tier: bool) -> _Value:
    if not isinstance(raw, Mapping):
        return scaled_rate(raw, 0, key)
    if not may_tier:
        raise PriceError(key, None, "is tiered, which our rows cannot hold for it")
    steps = raw.get("tiers")
    if not isinstance(steps, list):
        raise BadRate(f"{key} is tiered without a list of tiers")
    parsed = []
    for step in steps:
        start = step.get("start") if isinstance(step, Mapping) else None
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise BadRate(f"{key} has a tier without a non-negative integer start: {step!r}")
        parsed.append((start, scaled_rate(step.get("price"), 0, f"{key} tier {start}")))
    return scaled_rate(raw.get("base"), 0, f"{key} base"), tuple(sorted(parsed))


def from_objects(providers: Iterable[Any]) -> list[dict[str, Any]]:
    """genai-prices' own objects (``genai_prices.data.providers``) as its JSON shape, keeping
    only what :func:`convert` reads."""
    return [{"id": p.id, "models": [
        {"id": m.id, "prices": _plain(m.prices), "price_variants": _plain(m.price_variants)}
        for m in p.models]} for p in providers]


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal | str | int | None):
        return value
    if isinstance(value, time):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat() if isinstance(value, datetime) else datetime(
            value.year, value.month, value.day, tzinfo=UTC).isoformat()
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):  # a variant's ``when``
        return {str(key): _plain(item) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    # ModelPrice: a plain object whose attributes are the price keys it states.
    return {key: _plain(item) for key, item in vars(value).items()
            if not key.startswith("_") and item is not None}
