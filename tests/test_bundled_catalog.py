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
#: "service tiers and audio as in A and B": the entries a row's billed dimensions came from.
DIMENSIONS = re.compile(r"; (?:service tiers|audio|service tiers and audio) as in (.+?)(?=; |$)")
#: The rates of a row a service tier or audio rate is quoted beside (web search aside: some
#: rows take it from elsewhere).
STANDARD = ("input", "cached_input", "cache_write", "cache_write_1h", "output")


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


def _audio(price: Price) -> tuple[Decimal, Decimal]:
    """The audio rates as billed: a missing one is the text rate."""
    return (price.input if price.audio_input is None else price.audio_input,
            price.output if price.audio_output is None else price.audio_output)


def _same_rates(ours: Price, theirs: Price) -> bool:
    # LiteLLM states some audio rates equal to the text rate where genai-prices states none:
    # the same bill.
    plain = [n for n in RATE_FIELDS if n not in ("audio_input", "audio_output")]
    return all(getattr(ours, n) == getattr(theirs, n) for n in plain) and (
        _audio(ours) == _audio(theirs)) and ours.tiers == theirs.tiers


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


def test_service_tiers_and_audio_equal_the_named_catalog_entries_exactly() -> None:
    """Each row's audio rates and each of its service tiers are stated, exactly, by an entry
    its "service tiers … as in" names that has the row's standard rates (one of its dated
    versions; genai-prices' from the row's own date), and no named entry says otherwise."""
    catalogs = {family: (sources.load(family, at=AS_OF).label.split()[1], _versions(family))
                for family in ("litellm", "genai-prices")}
    checked = 0
    for price in PRICES:
        named = DIMENSIONS.search(price.source or "")
        if named is None:
            assert not price.service_tiers and price.audio_input is None, price.label
            assert price.audio_output is None, price.label
            continue
        quoted: list[Price] = []
        for part in re.split(r" and (?=litellm |genai-prices )", named[1]):
            match = ENTRY.match(part)
            assert match is not None, (price.label, part)
            family, version, name = match.groups()
            installed, entries = catalogs[family]
            assert version == installed, (price.label, part)
            same = [theirs for theirs in entries.get((price.provider, name), [])
                    if all(getattr(theirs, n) == getattr(price, n) for n in STANDARD)
                    and theirs.tiers == price.tiers
                    and (family == "litellm" or theirs.effective_from == price.effective_from)]
            assert len(same) == 1, (price.label, part)
            quoted.append(same[0])
        for rate, text in (("audio_input", price.input), ("audio_output", price.output)):
            stated = {getattr(theirs, rate) for theirs in quoted} - {None}
            ours_rate = getattr(price, rate)
            if ours_rate is None:  # left out: only where a source's figure is the text rate
                assert stated <= {text}, (price.label, rate)
            else:
                assert stated == {ours_rate}, (price.label, rate)
        ours = {tier.name: tier for tier in price.service_tiers}
        for name in ("flex", "priority", "batch"):
            stated_tiers = [t for theirs in quoted for t in theirs.service_tiers if t.name == name]
            assert all(t == ours.get(name) for t in stated_tiers), (price.label, name)
            assert (name in ours) == bool(stated_tiers), (price.label, name)
            checked += name in ours
    assert checked > 120


def test_service_tier_and_audio_rates_are_sane() -> None:
    for price in PRICES:
        for tier in price.service_tiers:
            # Flex and batch are discounts, priority a surcharge, each on the standard input.
            if tier.name == "priority":
                assert tier.input > price.input, price.label
            else:
                assert tier.input < price.input, price.label
            assert tier.cached_input is None or tier.cached_input <= tier.input, price.label
        assert price.audio_input is None or price.audio_input >= price.input, price.label


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


def test_flex_and_audio_usages_are_priced_at_their_own_rates(book: PriceBook) -> None:
    # GPT-5.5 flex: $2.5 input, $0.25 cached, $15 output (standard: $5 / $0.5 / $30).
    assert book.cost(USAGE, "gpt-5.5-2026-04-23", "openai", AS_OF, service_tier="flex") == (
        D(6_000) * D("2.5") + D(4_000) * D("0.25") + D(2_000) * 15) / 1_000_000
    # Above 272k input the flex call takes flex's own long-context tier: $5 / $22.5.
    assert book.cost(LONG, "gpt-5.5", "openai", AS_OF, service_tier="flex") == (
        D(300_000) * 5 + D(1_000) * D("22.5")) / 1_000_000
    # Gemini 2.5 Flash: audio input $1 (text $0.3); audio output has no rate: text's $2.5.
    audio = Usage(input_tokens=10_000, output_tokens=2_000, cached_input_tokens=4_000,
                  input_audio_tokens=5_000, output_audio_tokens=1_000)
    assert book.cost(audio, "gemini-2.5-flash", "google_gemini", AS_OF) == (
        D(1_000) * D("0.3") + D(5_000) * 1 + D(4_000) * D("0.03") + D(2_000) * D("2.5")
    ) / 1_000_000
    # The same audio at batch: $0.5 audio, $0.15 text, $0.03 cached, $1.25 output.
    assert book.cost(audio, "gemini-2.5-flash", "google_gemini", AS_OF,
                     service_tier="batch") == (
        D(1_000) * D("0.15") + D(5_000) * D("0.5") + D(4_000) * D("0.03")
        + D(2_000) * D("1.25")) / 1_000_000
