"""Price: exact cost arithmetic, tiers, fallbacks, catalog entries and their errors."""

from __future__ import annotations

import dataclasses
import decimal
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cost_middleware.pricing.price import EPOCH, RATE_DECIMALS, Price, PriceError, Tier
from cost_middleware.schema import RATE_SCALE
from cost_middleware.usage.model import Usage
from tests.conftest import CORPUS_FIXTURES

D = Decimal
_USAGE_FIELDS = {f.name for f in dataclasses.fields(Usage)}


def usage(**counts: Any) -> Usage:
    counts.setdefault("output_tokens", 0)
    return Usage(**counts)


def expected_cost_checks() -> list[dict[str, Any]]:
    entries = json.loads((CORPUS_FIXTURES / "EXPECTED.json").read_text(), parse_float=Decimal)
    return [e for e in entries if e.get("cost_check")]


@pytest.mark.parametrize("entry", expected_cost_checks(), ids=lambda e: e["file"])
def test_expected_cost_checks_are_reproduced_exactly(entry: dict[str, Any]) -> None:
    check = entry["cost_check"]
    rates = check["prices_per_mtok"]
    price = Price(
        provider=entry["provider"], model=entry["model"],
        input=rates["input"], output=rates["output"],
        cached_input=rates.get("cached_input"),
        cache_write=rates.get("cache_write_5m", rates.get("cache_write")),
        cache_write_1h=rates.get("cache_write_1h"),
        web_search_per_1k=rates.get("per_1k_web_search"),
    )
    used = Usage(**{k: v for k, v in entry["usage"].items() if k in _USAGE_FIELDS})
    cost = price.cost(used)
    assert cost == check["cost_usd"]
    assert isinstance(cost, Decimal)


def test_rate_scale_matches_the_table() -> None:
    assert RATE_DECIMALS == RATE_SCALE


SONNET = Price(
    provider="anthropic", model="claude-sonnet-4-5", input=D("3"), output=D("15"),
    cached_input=D("0.30"), cache_write=D("3.75"), cache_write_1h=D("6"),
    web_search_per_1k=D("10"),
    tiers=(Tier(200_000, input=D("6"), output=D("22.50"), cached_input=D("0.60"),
                cache_write=D("7.50"), cache_write_1h=D("12")),),
)


def test_tier_threshold_compares_all_input_tokens() -> None:
    # 200,000 in total (cache included) is not above the threshold; 200,001 is.
    at = usage(input_tokens=200_000, cached_input_tokens=150_000, cache_write_input_tokens=10_000,
               cache_write_5m_input_tokens=10_000, output_tokens=1_000)
    above = dataclasses.replace(at, input_tokens=200_001)
    base = D(40_000) * 3 + D(150_000) * D("0.30") + D(10_000) * D("3.75") + D(1_000) * 15
    tiered = D(40_001) * 6 + D(150_000) * D("0.60") + D(10_000) * D("7.50") + D(1_000) * D("22.50")
    assert SONNET.cost(at) == base / 1_000_000
    assert SONNET.cost(above) == tiered / 1_000_000


def test_highest_crossed_tier_wins_whatever_the_order() -> None:
    price = Price(provider="p", model="m", input=D(1), output=D(1), tiers=(
        Tier(1000, input=D(3)), Tier(100, input=D(2))))
    assert price.cost(usage(input_tokens=100)) == D(100) / 1_000_000
    assert price.cost(usage(input_tokens=101)) == D(202) / 1_000_000
    assert price.cost(usage(input_tokens=1001)) == D(3003) / 1_000_000


def test_tier_missing_fields_fall_back_to_base_rates_or_tier_input() -> None:
    price = Price(provider="p", model="m", input=D(1), output=D(10), cached_input=D("0.1"),
                  tiers=(Tier(0, input=D(2)),))
    used = usage(input_tokens=1000, cached_input_tokens=100, cache_write_input_tokens=100,
                 cache_write_5m_input_tokens=0, cache_write_1h_input_tokens=100, output_tokens=10)
    # output keeps the base 10, cached keeps the base 0.1, writes (no base rate) follow tier input
    expected = D(800) * 2 + D(100) * D("0.1") + D(100) * 2 + D(10) * 10
    assert price.cost(used) == expected / 1_000_000


def test_cache_rates_fall_back_to_input_and_5m_rate() -> None:
    bare = Price(provider="p", model="m", input=D(2), output=D(0))
    used = usage(input_tokens=1000, cached_input_tokens=300, cache_write_input_tokens=200,
                 cache_write_5m_input_tokens=50, cache_write_1h_input_tokens=150)
    assert bare.cost(used) == D(2000) / 1_000_000
    five_only = dataclasses.replace(bare, cache_write=D("2.5"))
    assert five_only.cost(used) == (D(500) * 2 + D(300) * 2 + D(200) * D("2.5")) / 1_000_000
    both = dataclasses.replace(five_only, cache_write_1h=D(4), cached_input=D("0.2"))
    assert both.cost(used) == (
        D(500) * 2 + D(300) * D("0.2") + D(50) * D("2.5") + D(150) * 4) / 1_000_000


def test_writes_without_ttl_split_are_billed_at_the_5m_rate() -> None:
    price = Price(provider="openai", model="gpt-5.6", input=D("1.25"), output=D(10),
                  cached_input=D("0.125"), cache_write=D("1.5625"), cache_write_1h=D("2.5"))
    used = usage(input_tokens=48_210, cached_input_tokens=40_960, cache_write_input_tokens=6_144,
                 cache_write_5m_input_tokens=None, cache_write_1h_input_tokens=None,
                 output_tokens=2_210)
    expected = (D(1_106) * D("1.25") + D(40_960) * D("0.125") + D(6_144) * D("1.5625")
                + D(2_210) * 10) / 1_000_000
    assert price.cost(used) == expected


def test_web_search_fee_is_per_thousand_and_untiered() -> None:
    used = usage(input_tokens=300_000, output_tokens=0, web_search_requests=3)
    assert SONNET.cost(used) == D(300_000) * 6 / 1_000_000 + D(3) * 10 / 1000
    assert SONNET.cost(usage(input_tokens=0, web_search_requests=None)) == 0


def test_inconsistent_counts_never_bill_negative_input() -> None:
    used = usage(input_tokens=10, cached_input_tokens=50, output_tokens=0)
    assert SONNET.cost(used) == D(50) * D("0.30") / 1_000_000


def test_cost_ignores_a_hostile_decimal_context() -> None:
    used = usage(input_tokens=123_456_789, output_tokens=987_654_321)
    with decimal.localcontext(decimal.Context(prec=3)):
        cost = SONNET.cost(used)
    assert cost == (D(123_456_789) * 6 + D(987_654_321) * D("22.50")) / 1_000_000


# -- property: the integer arithmetic equals a plain Decimal formula ---------------------------

_rates = st.integers(0, 200 * 10**9).map(lambda n: Decimal(n).scaleb(-RATE_DECIMALS))
_opt_rates = st.none() | _rates


@st.composite
def prices(draw: st.DrawFn) -> Price:
    thresholds = draw(st.lists(st.integers(0, 2_000_000), max_size=3, unique=True))
    tiers = tuple(
        Tier(t, input=draw(_rates), output=draw(_opt_rates), cached_input=draw(_opt_rates),
             cache_write=draw(_opt_rates), cache_write_1h=draw(_opt_rates))
        for t in thresholds)
    return Price(provider="p", model="m", input=draw(_rates), output=draw(_rates),
                 cached_input=draw(_opt_rates), cache_write=draw(_opt_rates),
                 cache_write_1h=draw(_opt_rates), web_search_per_1k=draw(_opt_rates),
                 tiers=tiers)


@st.composite
def usages(draw: st.DrawFn) -> Usage:
    total = draw(st.integers(0, 3_000_000))
    cached = draw(st.integers(0, total))
    writes = draw(st.integers(0, total - cached))
    one_hour = draw(st.none() | st.integers(0, writes))
    return Usage(
        input_tokens=total, output_tokens=draw(st.integers(0, 1_000_000)),
        cached_input_tokens=cached, cache_write_input_tokens=writes,
        cache_write_5m_input_tokens=None if one_hour is None else writes - one_hour,
        cache_write_1h_input_tokens=one_hour,
        web_search_requests=draw(st.none() | st.integers(0, 500)),
    )


def reference_cost(price: Price, u: Usage) -> Decimal:
    """DESIGN's pricing rules, written out plainly."""
    crossed = [t for t in price.tiers if u.input_tokens > t.above_input_tokens]
    tier = max(crossed, key=lambda t: t.above_input_tokens) if crossed else None
    if tier is None:
        inp, out = price.input, price.output
        cached = price.cached_input if price.cached_input is not None else inp
        five = price.cache_write if price.cache_write is not None else inp
        hour = price.cache_write_1h if price.cache_write_1h is not None else five
    else:
        inp = tier.input
        out = tier.output if tier.output is not None else price.output
        cached = next(r for r in (tier.cached_input, price.cached_input, inp) if r is not None)
        five = next(r for r in (tier.cache_write, price.cache_write, inp) if r is not None)
        hour = next(r for r in (tier.cache_write_1h, price.cache_write_1h, five) if r is not None)
    hour_tokens = u.cache_write_1h_input_tokens or 0
    base = u.input_tokens - u.cached_input_tokens - u.cache_write_input_tokens
    with decimal.localcontext(decimal.Context(prec=80)):
        total = (base * inp + u.cached_input_tokens * cached
                 + (u.cache_write_input_tokens - hour_tokens) * five + hour_tokens * hour
                 + u.output_tokens * out) / 1_000_000
        if u.web_search_requests and price.web_search_per_1k is not None:
            total += u.web_search_requests * price.web_search_per_1k / 1000
        return +total


@settings(max_examples=150, deadline=None)
@given(prices(), usages())
def test_cost_equals_the_reference_formula(price: Price, u: Usage) -> None:
    assert price.cost(u) == reference_cost(price, u)


# -- catalog entries ----------------------------------------------------------------------------

ENTRY: dict[str, Any] = {
    "provider": "openai", "model": "gpt-4o", "aliases": ["chatgpt-4o-alias"],
    "input": "2.50", "cached_input": Decimal("1.25"), "output": 10,
    "cache_write": None, "cache_write_1h": None, "web_search_per_1k": None,
    "tiers": [{"above_input_tokens": 200000, "input": "5", "output": "15"}],
    "effective_from": "2024-05-13T00:00:00Z", "source": "test",
}


def test_from_catalog_is_exact_and_round_trips() -> None:
    price = Price.from_catalog(ENTRY)
    assert price.input == Decimal("2.50") and price.output == Decimal(10)
    assert price.effective_from == datetime(2024, 5, 13, tzinfo=UTC)
    assert price.tiers == (Tier(200_000, input=D(5), output=D(15)),)
    again = Price.from_catalog(json.loads(json.dumps(price.to_catalog()), parse_float=Decimal))
    assert again == price
    assert price.to_catalog()["effective_from"] == "2024-05-13T00:00:00Z"


def test_from_catalog_reads_json_numbers_exactly() -> None:
    entry = json.loads('{"provider": "p", "model": "m", "input": 0.1, "output": 1e-9}',
                       parse_float=Decimal)
    price = Price.from_catalog(entry)
    assert price.input == Decimal("0.1") and price.output == Decimal("1e-9")
    assert price.effective_from == EPOCH
    # A float written by Python code is taken as the literal it prints as.
    assert Price.from_catalog({**entry, "input": 0.1}).input == Decimal("0.1")


@pytest.mark.parametrize(("change", "field", "reason"), [
    ({"input": "-1"}, "input", "negative"),
    ({"output": "ten"}, "output", "must be a number"),
    ({"cached_input": "NaN"}, "cached_input", "finite"),
    ({"cache_write": True}, "cache_write", "must be a number"),
    ({"cache_write_1h": [1]}, "cache_write_1h", "numeric string"),
    ({"web_search_per_1k": "0.0000000001"}, "web_search_per_1k", "decimal places"),
    ({"input": None}, "input", "required"),
    ({"output": None}, "output", "required"),
    ({"model": ""}, "model", "required"),
    ({"effective_from": "yesterday"}, "effective_from", "ISO 8601"),
    ({"aliases": "gpt"}, "aliases", "list"),
    ({"tiers": [{"input": "1"}]}, "above_input_tokens", "required"),
    ({"tiers": [{"above_input_tokens": -5, "input": "1"}]}, "above_input_tokens", "integer"),
    ({"tiers": [{"above_input_tokens": 5, "input": "-1"}]}, "input", "negative"),
    ({"tiers": [{"above_input_tokens": 5, "input": "1"}, {"above_input_tokens": 5, "input": "2"}]},
     "tiers", "same above_input_tokens"),
    ({"version": "3"}, "version", "integer"),
    ({"cache_write_1hr": "6"}, "cache_write_1hr", "not a known field"),
])
def test_bad_entries_raise_price_error_naming_entry_and_field(
    change: dict[str, Any], field: str, reason: str,
) -> None:
    with pytest.raises(PriceError) as info:
        Price.from_catalog({**ENTRY, **change}, index=7)
    assert info.value.field == field
    assert reason in str(info.value)
    assert field in str(info.value)
    assert isinstance(info.value, ValueError)
    expected = "entry #7" if change.get("model") == "" else "openai/gpt-4o (entry #7)"
    assert info.value.entry == expected


def test_non_mapping_entry_is_rejected() -> None:
    with pytest.raises(PriceError, match="entry #2"):
        Price.from_catalog(["not", "a", "dict"], index=2)  # type: ignore[arg-type]


def test_direct_construction_validates() -> None:
    with pytest.raises(PriceError, match="must be a Decimal"):
        Price(provider="p", model="m", input=1.5, output=D(1))  # type: ignore[arg-type]
    with pytest.raises(PriceError, match="timezone-aware"):
        Price(provider="p", model="m", input=D(1), output=D(1),
              effective_from=datetime(2025, 1, 1))
    with pytest.raises(PriceError, match=r"tiers\.input"):
        Price(provider="p", model="m", input=D(1), output=D(1), tiers=(Tier(1, input=D(-1)),))


def test_same_rates_ignores_only_the_version() -> None:
    price = Price.from_catalog(ENTRY)
    assert price.same_rates(dataclasses.replace(price, version=9))
    assert not price.same_rates(dataclasses.replace(price, output=D(11)))
