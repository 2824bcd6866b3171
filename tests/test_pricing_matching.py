"""Model matching: real reported names resolve to the right bundled row, near misses do not."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from cost_middleware.pricing.book import PriceBook
from cost_middleware.pricing.catalog import bundled_prices
from cost_middleware.pricing.matching import PRICE_PROVIDERS, candidates, strip_suffix
from cost_middleware.pricing.price import Price
from cost_middleware.pricing.sources import MemoryPriceSource

NOW = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook(MemoryPriceSource(bundled_prices()))


MATCHES = [
    # OpenAI snapshots, aliases, Azure
    ("openai", "gpt-4o", "openai/gpt-4o"),
    ("openai", "gpt-4o-2024-08-06", "openai/gpt-4o"),
    ("openai", "gpt-4o-2024-11-20", "openai/gpt-4o"),
    ("openai", "gpt-4o-2024-05-13", "openai/gpt-4o-2024-05-13"),
    ("openai", "chatgpt-4o-latest", "openai/chatgpt-4o-latest"),
    ("openai", "gpt-4o-mini", "openai/gpt-4o-mini"),
    ("openai", "gpt-4o-mini-2024-07-18", "openai/gpt-4o-mini"),
    ("openai", "gpt-4.1-2025-04-14", "openai/gpt-4.1"),
    ("openai", "gpt-4.1-mini-2025-04-14", "openai/gpt-4.1-mini"),
    ("openai", "gpt-4.1-nano", "openai/gpt-4.1-nano"),
    ("openai", "o1-2024-12-17", "openai/o1"),
    ("openai", "o3-2025-04-16", "openai/o3"),
    ("openai", "o3-mini-2025-01-31", "openai/o3-mini"),
    ("openai", "o4-mini-2025-04-16", "openai/o4-mini"),
    ("openai", "gpt-5-2025-08-07", "openai/gpt-5"),
    ("openai", "gpt-5-chat-latest", "openai/gpt-5"),
    ("openai", "gpt-5-mini-2025-08-07", "openai/gpt-5-mini"),
    ("openai", "gpt-5-nano-2025-08-07", "openai/gpt-5-nano"),
    ("openai", "gpt-5.1-2025-11-13", "openai/gpt-5.1"),
    ("openai", "gpt-5.1-chat-latest", "openai/gpt-5.1"),
    ("openai", "text-embedding-3-small", "openai/text-embedding-3-small"),
    ("openai", "text-embedding-3-large", "openai/text-embedding-3-large"),
    ("openai", "gpt-3.5-turbo-instruct", "openai/gpt-3.5-turbo-instruct"),
    ("openai", "gpt-3.5-turbo-0125", "openai/gpt-3.5-turbo"),
    ("openai", "GPT-4o", "openai/gpt-4o"),
    ("azure_openai", "gpt-4o-2024-11-20", "openai/gpt-4o"),
    ("azure_openai", "gpt-35-turbo", "openai/gpt-3.5-turbo"),
    # Anthropic and Claude elsewhere
    ("anthropic", "claude-sonnet-4-5-20250929", "anthropic/claude-sonnet-4-5"),
    ("anthropic", "claude-sonnet-4-5", "anthropic/claude-sonnet-4-5"),
    ("anthropic", "claude-sonnet-4-20250514", "anthropic/claude-sonnet-4"),
    ("anthropic", "claude-sonnet-4-0", "anthropic/claude-sonnet-4"),
    ("anthropic", "claude-opus-4-1-20250805", "anthropic/claude-opus-4-1"),
    ("anthropic", "claude-opus-4-20250514", "anthropic/claude-opus-4"),
    ("anthropic", "claude-opus-4-5-20251101", "anthropic/claude-opus-4-5"),
    ("anthropic", "claude-opus-4-6", "anthropic/claude-opus-4-6"),
    ("anthropic", "claude-sonnet-4-6", "anthropic/claude-sonnet-4-6"),
    ("anthropic", "claude-haiku-4-5-20251001", "anthropic/claude-haiku-4-5"),
    ("anthropic", "claude-3-5-haiku-20241022", "anthropic/claude-3-5-haiku"),
    ("anthropic", "claude-3-5-haiku-latest", "anthropic/claude-3-5-haiku"),
    ("anthropic", "claude-3-7-sonnet-20250219", "anthropic/claude-3-7-sonnet"),
    ("vertex_anthropic", "claude-sonnet-4-5@20250929", "anthropic/claude-sonnet-4-5"),
    ("vertex_anthropic", "claude-opus-4-1@20250805", "anthropic/claude-opus-4-1"),
    ("vertex_anthropic", "claude-haiku-4-5@20251001", "anthropic/claude-haiku-4-5"),
    ("openrouter", "anthropic/claude-sonnet-4.5", "anthropic/claude-sonnet-4-5"),
    ("openrouter", "anthropic/claude-3.5-haiku", "anthropic/claude-3-5-haiku"),
    ("openrouter", "openai/gpt-4o-mini", "openai/gpt-4o-mini"),
    ("openrouter", "google/gemini-2.5-pro", "google/gemini-2.5-pro"),
    ("openai_compatible", "anthropic/claude-haiku-4.5", "anthropic/claude-haiku-4-5"),
    # Bedrock: global vs regional rows, prefixes, suffixes, ARNs, fallback to Anthropic
    ("aws_bedrock", "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
     "aws_bedrock/global.anthropic.claude-sonnet-4-5"),
    ("aws_bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
     "aws_bedrock/anthropic.claude-sonnet-4-5"),
    ("aws_bedrock", "eu.anthropic.claude-sonnet-4-5-20250929-v1:0",
     "aws_bedrock/anthropic.claude-sonnet-4-5"),
    ("aws_bedrock", "apac.anthropic.claude-sonnet-4-20250514-v1:0",
     "aws_bedrock/anthropic.claude-sonnet-4"),
    ("aws_bedrock", "anthropic.claude-sonnet-4-5-20250929-v1:0",
     "aws_bedrock/anthropic.claude-sonnet-4-5"),
    ("aws_bedrock", "us.anthropic.claude-sonnet-4-20250514-v1:0",
     "aws_bedrock/anthropic.claude-sonnet-4"),
    ("aws_bedrock", "global.anthropic.claude-sonnet-4-20250514-v1:0",
     "aws_bedrock/anthropic.claude-sonnet-4"),
    ("aws_bedrock", "us.anthropic.claude-haiku-4-5-20251001-v1:0",
     "aws_bedrock/anthropic.claude-haiku-4-5"),
    ("aws_bedrock", "anthropic.claude-3-5-haiku-20241022-v1:0",
     "aws_bedrock/anthropic.claude-3-5-haiku"),
    ("aws_bedrock",
     "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-5-haiku-20241022-v1:0",
     "aws_bedrock/anthropic.claude-3-5-haiku"),
    ("aws_bedrock",
     "arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
     "global.anthropic.claude-haiku-4-5-20251001-v1:0",
     "aws_bedrock/global.anthropic.claude-haiku-4-5"),
    ("aws_bedrock", "us.anthropic.claude-sonnet-4-20250514-v1:0:200k",
     "aws_bedrock/anthropic.claude-sonnet-4"),
    # Google
    ("google_gemini", "gemini-2.5-flash", "google/gemini-2.5-flash"),
    ("google_gemini", "models/gemini-2.5-pro", "google/gemini-2.5-pro"),
    ("google_gemini", "gemini-2.5-flash-lite", "google/gemini-2.5-flash-lite"),
    ("google_gemini", "gemini-2.0-flash-001", "google/gemini-2.0-flash"),
    ("vertex_gemini", "gemini-2.5-pro", "google/gemini-2.5-pro"),
    ("vertex_gemini", "gemini-2.0-flash-lite-001", "google/gemini-2.0-flash-lite"),
    # Others
    ("deepseek", "deepseek-chat", "deepseek/deepseek-chat"),
    ("deepseek", "deepseek-reasoner", "deepseek/deepseek-reasoner"),
    ("mistral", "mistral-large-latest", "mistral/mistral-large"),
    ("mistral", "mistral-large-2411", "mistral/mistral-large-2411"),
    ("mistral", "mistral-small-latest", "mistral/mistral-small"),
    ("mistral", "mistral-small-2506", "mistral/mistral-small"),
    ("cohere", "command-a-03-2025", "cohere/command-a-03-2025"),
    ("cohere", "command-a", "cohere/command-a-03-2025"),
    # The 2026 lineup
    ("openai", "o3-pro-2025-06-10", "openai/o3-pro"),
    ("openai", "gpt-5.4-2026-03-05", "openai/gpt-5.4"),
    ("anthropic", "claude-opus-4-7-20260416", "anthropic/claude-opus-4-7"),
    ("vertex_anthropic", "claude-opus-4-7@20260416", "anthropic/claude-opus-4-7"),
    ("aws_bedrock", "us.anthropic.claude-opus-4-7-v1:0", "aws_bedrock/anthropic.claude-opus-4-7"),
    ("mistral", "mistral-medium-latest", "mistral/mistral-medium"),
]


@pytest.mark.parametrize(("provider", "model", "row"), MATCHES)
def test_reported_names_resolve_to_the_right_row(
    book: PriceBook, provider: str, model: str, row: str,
) -> None:
    price = book.lookup(provider, model, NOW)
    assert price is not None, f"{provider} {model} found no price"
    assert price.label == row


NO_MATCH = [
    ("openai", "gpt-4o-mini-audio-preview-2024-12-17"),  # must not become gpt-4o-mini
    ("openai", "gpt-4o-realtime-preview"),
    ("openai", "gpt-4o-audio-preview-2025-06-03"),  # audio rates are not modelled
    ("openai", "o1-mini"),
    ("openai", "o3-mini-high"),
    ("openai", "ft:gpt-4o-mini-2024-07-18:acme::abc123"),
    ("openai", "gpt-5.6-sol"),
    ("openai", "gpt-4"),
    ("anthropic", "claude-opus-4-9"),
    ("anthropic", "claude-sonnet-4-5-extended"),
    ("aws_bedrock", "meta.llama3-1-70b-instruct-v1:0"),
    ("aws_bedrock", "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc123"),
    ("google_gemini", "gemini-2.5-flash-preview-05-20"),
    ("google_gemini", "gemini-2.5-flash-image"),
    ("openrouter", "anthropic/claude-sonnet-4.5:free"),
    ("openrouter", "meta-llama/llama-3.3-70b-instruct"),
    ("openai_compatible", "acme-llm-9000-preview"),
    ("openai_compatible", "gpt-4o"),  # an unknown gateway is never priced as OpenAI
    ("ollama", "llama3.2:3b"),
    ("groq", "llama-3.3-70b-versatile"),
    ("azure_openai", "support-gpt4o-prod"),
    ("mistral", "magistral-medium-latest"),
    ("deepseek", "deepseek-coder"),
]


@pytest.mark.parametrize(("provider", "model"), NO_MATCH)
def test_near_misses_do_not_match(book: PriceBook, provider: str, model: str) -> None:
    assert book.lookup(provider, model, NOW) is None


def test_gpt_4o_mini_never_prices_as_gpt_4o() -> None:
    assert all(name.startswith("gpt-4o-mini") for _, name in
               candidates("openai", "gpt-4o-mini-2024-07-18"))
    only_4o = Price(provider="openai", model="gpt-4o", input=Decimal(1), output=Decimal(1))
    book = PriceBook(MemoryPriceSource([only_4o]))
    for name in ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "gpt-4o-mini-search-preview"):
        assert book.lookup("openai", name) is None


@pytest.mark.parametrize(("name", "stripped"), [
    ("gpt-4o-2024-08-06", "gpt-4o"),
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
    ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
    ("anthropic.claude-sonnet-4-20250514-v1:0", "anthropic.claude-sonnet-4-20250514"),
    ("mistral-large-latest", "mistral-large"),
    ("llama3.2:latest", "llama3.2"),
    ("gpt-4-0613", "gpt-4"),
    ("gemini-2.0-flash-001", "gemini-2.0-flash"),
    ("command-a-03-2025", "command-a"),
    ("gemini-2.5-flash-preview-05-20", "gemini-2.5-flash-preview"),
    ("gpt-4o-mini", None),
    ("claude-opus-4-1", None),
    ("text-embedding-3-small", None),
    ("o3", None),
])
def test_strip_suffix(name: str, stripped: str | None) -> None:
    assert strip_suffix(name) == stripped


def test_candidates_are_ordered_exact_first_and_unique() -> None:
    pairs = candidates("vertex_anthropic", "claude-sonnet-4-5@20250929")
    assert pairs[0] == ("vertex_anthropic", "claude-sonnet-4-5@20250929")
    assert pairs.index(("vertex_anthropic", "claude-sonnet-4-5")) < pairs.index(
        ("anthropic", "claude-sonnet-4-5"))
    assert len(pairs) == len(set(pairs))
    assert candidates("openai", "   ") == ()
    assert candidates("aws_bedrock", "-v1:1:" * 5000 + "@") == ()  # too long to be a row


def test_exact_row_beats_stripped_and_alias_rows() -> None:
    base = Price(provider="openai", model="gpt-4o", input=Decimal(1), output=Decimal(1),
                 aliases=("gpt-4o-2024-08-06",))
    dated = Price(provider="openai", model="gpt-4o-2024-05-13", input=Decimal(5),
                  output=Decimal(15))
    book = PriceBook(MemoryPriceSource([base, dated]))
    assert book.lookup("openai", "gpt-4o-2024-05-13") == dated
    assert book.lookup("openai", "gpt-4o-2024-08-06") == base  # alias
    assert book.lookup("openai", "gpt-4o-2024-11-20") == base  # suffix stripped


def test_provider_specific_rows_override_the_fallback() -> None:
    list_price = Price(provider="openai", model="gpt-4o", input=Decimal("2.5"), output=Decimal(10))
    azure = Price(provider="azure_openai", model="gpt-4o", input=Decimal("2.75"),
                  output=Decimal(11))
    book = PriceBook(MemoryPriceSource([list_price, azure]))
    assert book.lookup("azure_openai", "gpt-4o-2024-11-20") == azure
    assert book.lookup("openai", "gpt-4o-2024-11-20") == list_price


def test_expected_cost_checks_through_matching_and_the_bundled_catalog(book: PriceBook) -> None:
    import dataclasses
    import json

    from cost_middleware.usage.model import Usage
    from tests.conftest import CORPUS_FIXTURES

    fields = {f.name for f in dataclasses.fields(Usage)}
    entries = json.loads((CORPUS_FIXTURES / "EXPECTED.json").read_text(), parse_float=Decimal)
    checked = 0
    for entry in entries:
        if entry.get("cost_check"):
            usage = Usage(**{k: v for k, v in entry["usage"].items() if k in fields})
            cost = book.cost(usage, entry["model"], entry["provider"], NOW)
            assert cost == entry["cost_check"]["cost_usd"], entry["file"]
            checked += 1
    assert checked >= 5


def test_each_record_provider_tries_its_own_rows_then_its_fallbacks() -> None:
    for provider, price_providers in PRICE_PROVIDERS.items():
        # Bedrock falls back to Anthropic's rows for Claude ids only.
        model = "anthropic.claude-x-v1:0" if provider == "aws_bedrock" else "claude-x"
        pairs = candidates(provider, model)
        assert pairs[0] == (provider, model)
        assert list(dict.fromkeys(p for p, _ in pairs)) == list(price_providers), provider


def test_the_vertex_spelling_is_tried_as_the_dated_anthropic_id_first() -> None:
    pairs = candidates("vertex_anthropic", "claude-sonnet-4-5@20250929")
    assert pairs.index(("anthropic", "claude-sonnet-4-5-20250929")) < pairs.index(
        ("anthropic", "claude-sonnet-4-5"))
    bedrock = candidates("aws_bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0")
    assert bedrock.index(("anthropic", "claude-sonnet-4-5-20250929")) < bedrock.index(
        ("anthropic", "claude-sonnet-4-5"))
    assert ("anthropic", "claude-sonnet-4-5-20250929") in candidates(
        "vertex_anthropic", "Claude-Sonnet-4-5@20250929")


@pytest.mark.parametrize("model", [
    "ft:gpt-4o-mini-2024-07-18:acme::abc123", "ft:gpt-4o-mini:acme:bot:abc123",
    "FT:gpt-4o-mini-2024-07-18:acme::abc123", "ft:gpt-4o-mini-latest:acme::x", "ft:",
])
def test_fine_tunes_are_only_ever_looked_up_as_fine_tunes(model: str) -> None:
    for provider in ("openai", "azure_openai", "mistral", "openai_compatible"):
        pairs = candidates(provider, model)
        assert pairs and all(name.lower().startswith("ft:") for _, name in pairs), pairs
