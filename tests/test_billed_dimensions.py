"""Billed dimensions: service tiers, audio tokens, cache writes and tiers above 272k, from the
response to the stored, priced row, and the rates the importers carry for them."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import LOCAL_FIXTURES, fixture_bytes, load_expected
from hypothesis import given
from hypothesis import strategies as st
from test_usage_fixtures import run

from cost_middleware.config import Settings
from cost_middleware.context import record_usage
from cost_middleware.engine.tracker import CostTracker
from cost_middleware.pricing.admin import reprice, show_price, write_prices
from cost_middleware.pricing.imports import genai_prices
from cost_middleware.pricing.imports.sources import litellm_file, load
from cost_middleware.pricing.price import Price, PriceError, ServiceTier
from cost_middleware.records import CostRecord
from cost_middleware.schema import cost_records
from cost_middleware.storage.engine import ensure_schema, make_engine
from cost_middleware.storage.rows import record_from_row, record_row
from cost_middleware.usage import service_tier
from cost_middleware.usage.model import Usage

NOW = datetime(2026, 12, 1, tzinfo=UTC)

#: Made-up rates (USD per 1M tokens) in the shapes the catalogs give.
GPT = {"provider": "openai", "model": "gpt-5.4", "input": "2.5", "cached_input": "0.25",
       "cache_write": "3.125", "output": "15",
       "tiers": [{"above_input_tokens": 272000, "input": "5", "output": "22.5",
                  "cached_input": "0.5"}],
       "service_tiers": {
           "flex": {"input": "1.25", "output": "7.5", "cached_input": "0.125",
                    "tiers": [{"above_input_tokens": 272000, "input": "2.5",
                               "output": "11.25", "cached_input": "0.25"}]},
           "priority": {"input": "5", "output": "30", "cached_input": "0.5"}}}
AUDIO = {"provider": "openai", "model": "gpt-4o-audio-preview", "input": "2.5",
         "cached_input": "1.25", "output": "10", "audio_input": "40", "audio_output": "80",
         "service_tiers": {"priority": {"input": "4.25", "output": "17", "cached_input": "2.125",
                                        "audio_input": "68", "audio_output": "136"}}}
GEMINI = {"provider": "vertex_gemini", "model": "gemini-2.5-pro", "input": "1.25",
          "cached_input": "0.125", "output": "10",
          "service_tiers": {"flex": {"input": "0.625", "output": "5", "cached_input": "0.0625"},
                            "priority": {"input": "2.25", "output": "18",
                                         "cached_input": "0.225"}}}
PRICES = {(e["provider"], e["model"]): Price.from_catalog(e) for e in (GPT, AUDIO, GEMINI)}

#: Local fixtures and their exact cost at the rates above (worked out by hand in the notes).
FIXTURE_COSTS = {
    # flex above 272k: 60,000 base x 2.5 + 200,000 cached x 0.25 + 40,000 writes x 3.125 (the
    # standard write rate: flex states none) + 2,400 output x 11.25.
    "openai_chat_flex_cache_write.json": ("gpt-5.4", "flex", Decimal("0.352")),
    # priority: 172 text x 4.25 + 700 audio x 68 + 128 cached x 2.125; 100 text out x 17 +
    # 400 audio out x 136.
    "openai_chat_priority_audio.json": ("gpt-4o-audio-preview", "priority",
                                        Decimal("0.104703")),
    # flex: 4,352 x 0.625 + 2,048 x 0.0625 + 1,014 x 5.
    "vertex_gemini_flex.json": ("gemini-2.5-pro", "flex", Decimal("0.007918")),
}


def entry(name: str) -> dict[str, Any]:
    return next(e for e in load_expected() if e["file"] == name and e["_dir"] == str(
        LOCAL_FIXTURES))


# -- service tier names ----------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "ours"), [
    ("default", "standard"), ("standard", "standard"), ("ON_DEMAND", "standard"),
    ("auto", "standard"), ("flex", "flex"), ("ON_DEMAND_FLEX", "flex"),
    ("priority", "priority"), ("ON_DEMAND_PRIORITY", "priority"), ("batch", "batch"),
    ("PROVISIONED_THROUGHPUT", "provisioned"), ("scale", "scale"), ("Flex", "flex"),
    ("on demand", "standard"), (None, None), ("", None),
])
def test_each_providers_spelling_becomes_ours(raw: str | None, ours: str | None) -> None:
    assert service_tier.normalize(raw) == ours


@given(st.text(max_size=300))
def test_any_tier_text_becomes_a_bounded_safe_name(raw: str) -> None:
    name = service_tier.normalize(raw)
    if name is not None:
        assert re.fullmatch(r"[a-z0-9_.-]{1,32}", name), name
        assert service_tier.normalize(name) == name


def test_a_local_fixtures_tier_is_read_and_normalized() -> None:
    seen = {}
    for item in load_expected():
        if item["_dir"] == str(LOCAL_FIXTURES) and "service_tier" in item:
            result = run(item, [fixture_bytes(item)])
            assert result is not None
            seen[item["file"]] = service_tier.normalize(result.service_tier)
    assert seen["vertex_gemini_flex.json"] == "flex"
    assert seen["openai_chat_priority_audio.json"] == "priority"
    assert "provisioned" in seen.values()


# -- the cost ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FIXTURE_COSTS))
def test_fixture_costs_are_exact(name: str) -> None:
    item = entry(name)
    model, tier, cost = FIXTURE_COSTS[name]
    result = run(item, [fixture_bytes(item)])
    assert result is not None and result.usage is not None
    assert service_tier.normalize(result.service_tier) == tier
    assert PRICES[(item["provider"], model)].cost(result.usage, tier) == cost


def test_unpriced_and_unknown_tiers_cost_the_standard_rates() -> None:
    price = PRICES[("openai", "gpt-5.4")]
    usage = Usage(input_tokens=1000, output_tokens=100, cached_input_tokens=200)
    standard = Decimal("0.00355")  # 800 x 2.5 + 200 x 0.25 + 100 x 15
    for tier in (None, "standard", "batch", "scale", "mystery_tier"):
        assert price.cost(usage, tier) == standard
    assert price.cost(usage, "priority") == Decimal("0.0071")  # 800 x 5 + 200 x 0.5 + 100 x 30


def test_standard_tier_above_272k_and_cache_writes_without_a_split() -> None:
    usage = Usage(input_tokens=300_000, output_tokens=2400, cached_input_tokens=200_000,
                  cache_write_input_tokens=40_000, cache_write_5m_input_tokens=None,
                  cache_write_1h_input_tokens=None)
    # 60,000 x 5 + 200,000 x 0.5 + 40,000 x 3.125 + 2,400 x 22.5
    assert PRICES[("openai", "gpt-5.4")].cost(usage) == Decimal("0.579")
    at_threshold = Usage(input_tokens=272_000, output_tokens=0)
    assert PRICES[("openai", "gpt-5.4")].cost(at_threshold) == Decimal("0.68")


def test_audio_rates_apply_to_the_uncached_audio_share_only() -> None:
    price = PRICES[("openai", "gpt-4o-audio-preview")]
    # 1,000 input of which 900 cached: at most 100 audio tokens are billed at the audio rate.
    usage = Usage(input_tokens=1000, output_tokens=50, cached_input_tokens=900,
                  input_audio_tokens=700, output_audio_tokens=80)
    # 100 x 40 + 900 x 1.25 + 50 (all of the output, not 80) x 80
    assert price.cost(usage) == Decimal("0.009125")
    # Without audio rates audio tokens cost the text rates.
    text_only = PRICES[("openai", "gpt-5.4")]
    assert text_only.cost(usage) == text_only.cost(Usage(
        input_tokens=1000, output_tokens=50, cached_input_tokens=900))


def test_catalog_round_trip_and_refusals() -> None:
    for price in PRICES.values():
        assert Price.from_catalog(price.to_catalog()) == price
    plain = Price.from_catalog({"provider": "openai", "model": "m", "input": 1, "output": 2})
    assert "service_tiers" not in plain.to_catalog() and "audio_input" not in plain.to_catalog()
    with pytest.raises(PriceError, match="known tiers"):
        Price.from_catalog({**GEMINI, "service_tiers": {"ultra": {"input": "1"}}})
    with pytest.raises(PriceError, match="input"):
        Price.from_catalog({**GEMINI, "service_tiers": {"flex": {"output": "1"}}})
    with pytest.raises(PriceError, match="negative"):
        Price.from_catalog({**GEMINI, "audio_input": "-1"})
    with pytest.raises(PriceError, match="twice"):
        Price(provider="a", model="b", input=Decimal(1), output=Decimal(1), service_tiers=(
            ServiceTier("flex", Decimal(1)), ServiceTier("flex", Decimal(2))))


# -- stored and priced -------------------------------------------------------------------------


def test_records_keep_tier_and_audio_and_are_priced_by_them(
        db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    engine = make_engine(db_url)
    try:
        check_records_keep_tier_and_audio(engine, db_url, tmp_path, monkeypatch, caplog)
    finally:
        engine.dispose()


def check_records_keep_tier_and_audio(
        engine: sa.Engine, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    ensure_schema(engine)
    write_prices(engine, list(PRICES.values()))
    [stored] = show_price(engine, "openai", "gpt-4o-audio-preview")
    assert stored.same_rates(PRICES[("openai", "gpt-4o-audio-preview")])
    monkeypatch.setenv("COST_MIDDLEWARE_DATABASE_URL", db_url)
    monkeypatch.setenv("COST_MIDDLEWARE_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("COST_MIDDLEWARE_STATSD", "off")
    usage = Usage(input_tokens=1000, output_tokens=500, cached_input_tokens=128,
                  input_audio_tokens=700, output_audio_tokens=400)
    tracker = CostTracker(Settings.from_env())
    try:
        with caplog.at_level(logging.WARNING, "cost_middleware"):
            # Each run its own unknown name: a process logs each one once.
            odd_raw = f"Odd {engine.dialect.name} Tier!\x00" + "x" * 300
            for tier in ("priority", None, odd_raw):
                assert record_usage(usage, provider="openai", model="gpt-4o-audio-preview",
                                    api="chat_completions", service_tier=tier, tracker=tracker)
            assert tracker.flush(20)
        # Repricing reads the tier and audio back from the rows: no cost changes.
        assert reprice(engine, tracker.price_book, NOW - timedelta(days=3650)) == 0
    finally:
        tracker.close()
    with engine.connect() as conn:
        rows = conn.execute(sa.select(
            cost_records.c.service_tier, cost_records.c.audio_input_tokens,
            cost_records.c.audio_output_tokens, cost_records.c.cost_usd)).all()
    by_tier = {row.service_tier: row for row in rows}
    assert by_tier["priority"].cost_usd == Decimal("0.104703")
    # 172 x 2.5 + 700 x 40 + 128 x 1.25 + 100 x 10 + 400 x 80
    assert by_tier[None].cost_usd == Decimal("0.06159")
    odd = next(t for t in by_tier if t not in ("priority", None))
    assert re.fullmatch(rf"odd_{engine.dialect.name}_tier_x+", odd) and len(odd) == 32
    assert by_tier[odd].cost_usd == by_tier[None].cost_usd
    assert {(r.audio_input_tokens, r.audio_output_tokens) for r in rows} == {(700, 400)}
    logged = [r.getMessage() for r in caplog.records if "unknown service tier" in r.message]
    assert len(logged) == 1 and odd in logged[0]


def test_a_record_rebuilt_from_its_row_keeps_tier_and_audio() -> None:
    record = CostRecord(provider="openai", api="chat_completions", model="gpt-5.4",
                        usage=Usage(input_tokens=10, output_tokens=5, input_audio_tokens=3,
                                    output_audio_tokens=2), service_tier="flex")
    row = record_row(record)
    assert (row["service_tier"], row["audio_input_tokens"], row["audio_output_tokens"]) == (
        "flex", 3, 2)
    back = record_from_row(_AsRow(row))  # type: ignore[arg-type]
    assert back.service_tier == "flex"
    assert back.usage is not None and back.usage.input_audio_tokens == 3


class _AsRow:
    """A stored row as ``record_from_row`` reads it (attributes)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


# -- imported rates ------------------------------------------------------------------------------


def _litellm_map() -> dict[str, Any]:
    path = litellm_file()
    if path is None:
        pytest.skip("litellm is not installed")
    return json.loads(path.read_bytes(), parse_float=Decimal)


_LITELLM_SUFFIX = {"flex": "_flex", "priority": "_priority", "batch": "_batches"}
_LITELLM_NAMES = {"input": "input_cost_per_token", "output": "output_cost_per_token",
                  "cached_input": "cache_read_input_token_cost",
                  "cache_write": "cache_creation_input_token_cost",
                  "cache_write_1h": "cache_creation_input_token_cost_above_1hr",
                  "audio_input": "input_cost_per_audio_token",
                  "audio_output": "output_cost_per_audio_token"}


def test_every_imported_audio_and_tier_rate_is_litellms_figure() -> None:
    data = _litellm_map()
    converted = load("litellm", at=NOW).conversion
    checked = {"audio": 0, "service": 0, "service_lc": 0}
    for name, price in converted.entries:
        spec = data[name]
        for field in ("audio_input", "audio_output"):
            rate = getattr(price, field)
            if rate is not None:
                assert rate == Decimal(spec[_LITELLM_NAMES[field]]).scaleb(6), (name, field)
                checked["audio"] += 1
        for tier in price.service_tiers:
            suffix = _LITELLM_SUFFIX[tier.name]
            for field, key in _LITELLM_NAMES.items():
                rate, figure = getattr(tier, field), spec.get(key + suffix)
                expected = None if figure is None else Decimal(figure).scaleb(6)
                if field == "input" and figure is None:
                    expected = price.input  # LiteLLM falls back to the standard figure
                assert rate == expected, (name, tier.name, field)
                checked["service"] += rate is not None
            for lc in tier.tiers:
                key = f"input_cost_per_token_above_{lc.above_input_tokens // 1000}k_tokens{suffix}"
                if key in spec:
                    assert lc.input == Decimal(spec[key]).scaleb(6), (name, key)
                    checked["service_lc"] += 1
    assert min(checked.values()) > 10, checked
    [gpt] = [p for n, p in converted.entries if n == "gpt-5.4"] or [None]
    if gpt is not None:
        assert {t.name for t in gpt.service_tiers} >= {"flex", "priority", "batch"}
        assert gpt.tiers and gpt.tiers[0].above_input_tokens == 272_000


def test_every_imported_audio_and_tier_rate_is_genai_prices_figure() -> None:
    data = pytest.importorskip("genai_prices.data")
    converted = {name: price for name, price in load("genai-prices", at=NOW).conversion.entries
                 if price.effective_from <= NOW}
    variant_of = {("processing", "batch"): "batch", ("service_tier", "flex"): "flex",
                  ("service_tier", "priority"): "priority"}
    checked = {"audio": 0, "service": 0}
    for provider in data.providers:
        for model in provider.models:
            name = f"{provider.id}/{model.id}"
            if name not in converted:
                continue
            price = converted[name]
            plain = model.prices if not isinstance(model.prices, list) else None
            if plain is not None:
                for ours, theirs in (("audio_input", "input_audio_mtok"),
                                     ("audio_output", "output_audio_mtok")):
                    figure = getattr(plain, theirs, None)
                    if isinstance(figure, Decimal):
                        assert getattr(price, ours) == figure, (name, ours)
                        checked["audio"] += 1
            tiers = {t.name: t for t in price.service_tiers}
            for variant in model.price_variants or ():
                (key, value), = variant.when.items()
                tier = variant_of.get((key, value))
                if tier is None or variant.constraint is not None:
                    continue
                for ours, theirs in (("input", "input_mtok"), ("output", "output_mtok"),
                                     ("cached_input", "cache_read_mtok"),
                                     ("cache_write", "cache_write_mtok")):
                    figure = getattr(variant.prices, theirs, None)
                    if isinstance(figure, Decimal):
                        assert getattr(tiers[tier], ours) == figure, (name, tier, ours)
                        checked["service"] += 1
    assert min(checked.values()) > 10, checked


def test_genai_prices_variants_become_service_tiers() -> None:
    data = [{"id": "openai", "models": [{
        "id": "gpt-x", "prices": {"input_mtok": 2, "output_mtok": 8,
                                  "input_audio_mtok": 32},
        "price_variants": [
            {"when": {"service_tier": "flex"}, "prices": {"input_mtok": 1, "output_mtok": 4}},
            {"when": {"service_tier": "flex"}, "prices": {"input_mtok": 9}},
            {"when": {"processing": "batch"},
             "prices": {"input_mtok": {"base": 1, "tiers": [{"start": 272000, "price": 2}]}}},
            {"when": {"service_tier": "fast"}, "prices": {"input_mtok": 20}}]}]}]
    [(_, price)] = genai_prices.convert(
        json.loads(json.dumps(data), parse_float=Decimal), "test", NOW).entries
    tiers = {t.name: t for t in price.service_tiers}
    assert set(tiers) == {"flex", "batch"}
    assert (tiers["flex"].input, tiers["flex"].output) == (Decimal(1), Decimal(4))
    assert tiers["batch"].tiers[0].above_input_tokens == 272000
    assert tiers["batch"].tiers[0].input == Decimal(2)
    assert price.audio_input == Decimal(32)
