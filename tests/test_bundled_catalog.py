"""The bundled catalog: every row sourced and dated, sane, traceable to the catalogs it names,
and the current lineup priced through the book as records name it."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib import resources
from typing import Any

import pytest

from cost_middleware.pricing.book import PriceBook
from cost_middleware.pricing.catalog import BUNDLED_CATALOG, bundled_prices
from cost_middleware.pricing.imports import sources
from cost_middleware.pricing.matching import PROVIDERS
from cost_middleware.pricing.price import RATE_FIELDS, TIER_RATES, Price, parse_datetime
from cost_middleware.pricing.sources import MemoryPriceSource
from cost_middleware.usage.model import Usage

D = Decimal
#: No model of the catalog costs more than this per 1M tokens (o1-pro's output: 600).
SANE = D(1000)
#: "rates as in A and B": the catalogs (and their entries) a row's rates were copied from.
COPIED = re.compile(r"; rates as in (.+)$")
ENTRY = re.compile(r"^(litellm|genai-prices) (\S+) .*?\(([^\s,;)]+?):?[\s,;)]")


def raw() -> dict[str, Any]:
    text = resources.files("cost_middleware").joinpath(BUNDLED_CATALOG).read_bytes()
    data: dict[str, Any] = json.loads(text)
    return data


CATALOG = raw()
AS_OF = parse_datetime(CATALOG["as_of"], "as_of")
PRICES = bundled_prices()


def test_every_row_names_its_source_and_its_start() -> None:
    for entry in CATALOG["prices"]:
        label = f"{entry['provider']}/{entry['model']}"
        assert isinstance(entry.get("source"), str) and len(entry["source"]) > 10, label
        assert "effective_from" in entry, label
        start = parse_datetime(entry["effective_from"], label)
        # A future start is a scheduled change, announced: never more than a year ahead.
        assert start <= AS_OF + timedelta(days=366), label
        # A row written by hand never claims an import's family (it would count as one's own).
        assert not entry["source"].startswith(("litellm ", "genai-prices ")), label


def test_rows_are_unique_and_providers_ours() -> None:
    keys = Counter((p.provider, p.model, p.effective_from) for p in PRICES)
    assert [k for k, n in keys.items() if n > 1] == []
    assert {p.provider for p in PRICES} <= PROVIDERS


def test_each_alias_names_one_model() -> None:
    models = {(p.provider, p.model) for p in PRICES}
    owner: dict[tuple[str, str], str] = {}
    for price in PRICES:
        for alias in price.aliases:
            key = (price.provider, alias)
            assert key not in models, f"{alias} is an alias and a row of {price.provider}"
            assert owner.setdefault(key, price.model) == price.model, alias


def test_rates_are_positive_and_sane() -> None:
    for price in PRICES:
        assert D(0) < price.input <= SANE, price.label
        assert D(0) <= price.output <= SANE, price.label  # embeddings: no output
        for name in RATE_FIELDS:
            rate = getattr(price, name)
            assert rate is None or D(0) <= rate <= SANE, (price.label, name)
        # Cache reads are discounted, cache writes surcharged, a long prompt never cheaper.
        assert price.cached_input is None or price.cached_input <= price.input, price.label
        assert price.cache_write is None or price.cache_write >= price.input, price.label
        for tier in price.tiers:
            assert tier.input >= price.input, price.label
            assert tier.output is None or tier.output >= price.output, price.label
            assert tier.cached_input is None or tier.cached_input <= tier.input, price.label


def current_rows() -> dict[tuple[str, str], Price]:
    rows: dict[tuple[str, str], Price] = {}
    for price in sorted(PRICES, key=lambda p: p.effective_from):
        if price.effective_from <= AS_OF:
            rows[(price.provider, price.model)] = price
    return rows


def test_bedrock_regional_profiles_cost_ten_percent_more_than_global() -> None:
    rows = current_rows()
    pairs = [(price, rows[("aws_bedrock", model.removeprefix("global."))])
             for (provider, model), price in rows.items()
             if provider == "aws_bedrock" and model.startswith("global.")]
    assert len(pairs) >= 20
    for glob, regional in pairs:
        for name in RATE_FIELDS:
            if getattr(glob, name) is not None:
                assert getattr(regional, name) == getattr(glob, name) * D("1.1"), (
                    regional.label, name)
        assert [t.above_input_tokens for t in regional.tiers] == [
            t.above_input_tokens for t in glob.tiers], regional.label
        for g_tier, r_tier in zip(glob.tiers, regional.tiers, strict=True):
            for name in TIER_RATES:
                if getattr(g_tier, name) is not None:
                    assert getattr(r_tier, name) == getattr(g_tier, name) * D("1.1")


def _versions(label: str) -> dict[tuple[str, str], list[Price]]:
    loaded = sources.load(label, at=AS_OF)
    found: dict[tuple[str, str], list[Price]] = defaultdict(list)
    for name, price in loaded.conversion.entries:
        found[(price.provider, name)].append(price)
    return found


def _same_rates(ours: Price, theirs: Price) -> bool:
    return all(getattr(ours, n) == getattr(theirs, n) for n in RATE_FIELDS) and (
        ours.tiers == theirs.tiers)


def test_copied_rates_equal_the_named_catalog_entries_exactly() -> None:
    """Each row saying "rates as in litellm X (entry)" or "genai-prices Y (entry)" has exactly
    that entry's rates (one of its dated versions), read from the installed packages."""
    catalogs = {family: (sources.load(family, at=AS_OF).label.split()[1], _versions(family))
                for family in ("litellm", "genai-prices")}
    checked = 0
    for price in PRICES:
        copied = COPIED.search(price.source or "")
        if copied is None:
            continue
        for part in copied[1].split(" and "):
            match = ENTRY.match(part)
            assert match is not None, (price.label, part)
            family, version, name = match.groups()
            installed, entries = catalogs[family]
            if version != installed:  # another release of the catalog: nothing to compare
                continue
            candidates = entries.get((price.provider, name), [])
            assert any(_same_rates(price, theirs) for theirs in candidates), (
                price.label, price.effective_from, family, name)
            checked += 1
    assert checked > 120


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook(MemoryPriceSource(PRICES))


USAGE = Usage(input_tokens=10_000, output_tokens=2_000, cached_input_tokens=4_000)
LONG = Usage(input_tokens=300_000, output_tokens=1_000)

#: The newest models the sources list, as records name them → the row → (input, cached, output).
LINEUP = [
    ("openai", "gpt-6.1-sol", "openai/gpt-6.1-sol", ("2", "0.1", "10")),
    ("openai", "gpt-6-astra", "openai/gpt-6-astra", ("10", "1", "50")),
    ("openai", "gpt-5.5-2026-04-23", "openai/gpt-5.5", ("5", "0.5", "30")),
    ("azure_openai", "gpt-5.4-mini", "openai/gpt-5.4-mini", ("0.75", "0.075", "4.5")),
    ("anthropic", "claude-fable-5-2", "anthropic/claude-fable-5-2", ("8", "0.2", "40")),
    ("anthropic", "claude-opus-5-5", "anthropic/claude-opus-5-5", ("4", "0.2", "20")),
    ("anthropic", "claude-sonnet-5", "anthropic/claude-sonnet-5", ("2", "0.2", "10")),
    ("vertex_anthropic", "claude-sonnet-5-5@default", "anthropic/claude-sonnet-5-5",
     ("2", "0.1", "10")),
    ("aws_bedrock", "global.anthropic.claude-opus-5-5",
     "aws_bedrock/global.anthropic.claude-opus-5-5", ("4", "0.2", "20")),
    ("aws_bedrock", "eu.anthropic.claude-opus-5-5", "aws_bedrock/anthropic.claude-opus-5-5",
     ("4.4", "0.22", "22")),
    ("aws_bedrock", "us.openai.gpt-6.1-sol", "aws_bedrock/openai.gpt-6.1-sol",
     ("2.2", "0.11", "11")),
    ("google_gemini", "gemini-3.8-flash", "google/gemini-3.8-flash", ("0.75", "0.075", "3.75")),
    ("vertex_gemini", "gemini-3.1-pro-preview", "google/gemini-3.1-pro-preview",
     ("2", "0.2", "12")),
    ("mistral", "mistral-large-4-0", "mistral/mistral-large-4", ("0.7", "0.07", "2.1")),
    ("mistral", "mistral-medium-latest", "mistral/mistral-medium", ("1.5", "0.15", "7.5")),
    ("cohere", "command-a", "cohere/command-a-03-2025", ("2.5", "2.5", "10")),
    ("deepseek", "deepseek-chat", "deepseek/deepseek-chat", ("0.28", "0.028", "0.42")),
]


@pytest.mark.parametrize(("provider", "model", "row", "rates"), LINEUP)
def test_the_current_lineup_is_priced_through_the_book(
    book: PriceBook, provider: str, model: str, row: str, rates: tuple[str, str, str],
) -> None:
    price = book.lookup(provider, model, AS_OF)
    assert price is not None and price.label == row, f"{provider} {model}"
    inp, cached, out = map(D, rates)
    expected = (6_000 * inp + 4_000 * cached + 2_000 * out) / 1_000_000
    assert book.cost(USAGE, model, provider, AS_OF) == expected


def test_tiers_above_200k_and_272k_reprice_the_whole_request(book: PriceBook) -> None:
    # Gemini 3.1 Pro above 200k input tokens: $4 / $18; GPT-6.1 Sol above 272k: $4 / $15.
    assert book.cost(LONG, "gemini-3.1-pro-preview", "google_gemini", AS_OF) == (
        D(300_000) * 4 + D(1_000) * 18) / 1_000_000
    assert book.cost(LONG, "gpt-6.1-sol", "openai", AS_OF) == (
        D(300_000) * 4 + D(1_000) * 15) / 1_000_000


def test_dated_changes_apply_from_their_dates(book: PriceBook) -> None:
    def output(model: str, provider: str, at: datetime) -> Decimal | None:
        price = book.lookup(provider, model, at)
        return None if price is None else price.output

    # GPT-5.6 Sol launched at $30 output and was cut to $20 on 2026-08-21.
    assert output("gpt-5.6-sol", "openai", datetime(2026, 7, 1, tzinfo=UTC)) == D(30)
    assert output("gpt-5.6-sol", "openai", AS_OF) == D(20)
    assert output("gpt-5.6-sol", "openai", datetime(2026, 6, 1, tzinfo=UTC)) is None
    # Claude Sonnet 5's increase scheduled for 2026-09-01 was cancelled: still $10.
    assert output("claude-sonnet-5", "anthropic", AS_OF) == D(10)
    # Gemini 3.8 Flash: introductory rates until 2026-12-31, standard ones from 2027.
    assert output("gemini-3.8-flash", "google_gemini", AS_OF) == D("3.75")
    assert output("gemini-3.8-flash", "google_gemini",
                  datetime(2027, 1, 1, tzinfo=UTC)) == D("7.5")
