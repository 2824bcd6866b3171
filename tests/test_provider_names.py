"""One vocabulary of providers: the name a record shows is a name its price row can use.

Every provider the readers report is in the table; ``prices set`` (Python API and CLI) with the
provider and model a real extraction gave prices that provider's next record, on SQLite and
PostgreSQL; old rows and catalogs keep working; a misspelt name fails, listing ours.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import RedisServer, fixture_bytes, load_expected
from test_usage_fixtures import run

from cost_middleware import CostRecord, Settings
from cost_middleware.engine.ledger import open_ledger
from cost_middleware.engine.tracker import CostTracker
from cost_middleware.ops import cli
from cost_middleware.ops.cli import main
from cost_middleware.ops.report import summarize
from cost_middleware.pricing.admin import list_prices, load_catalog, set_price, show_price
from cost_middleware.pricing.book import PriceBook
from cost_middleware.pricing.catalog import bundled_prices
from cost_middleware.pricing.matching import PRICE_PROVIDERS, PROVIDERS, provider_error
from cost_middleware.pricing.price import Price
from cost_middleware.pricing.sources import MemoryPriceSource
from cost_middleware.usage import registry, sniff
from cost_middleware.usage.hosts import HOSTS
from cost_middleware.usage.model import Usage
from cost_middleware.usage.readers import Endpoint

#: A million of each: the cost at the rates set below is exactly 3 + 7 = 10 USD.
USAGE = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
NEW_RATES: dict[str, Any] = {"input": "3", "output": "7"}


def _reported() -> dict[str, tuple[str, str]]:
    """Provider → (api, model) of the first fixture the readers extract a priced call from."""
    found: dict[str, tuple[str, str]] = {}
    for entry in load_expected():
        if entry["status"] >= 400:
            continue
        result = run(entry, [fixture_bytes(entry)])
        if result is not None and result.model and result.usage is not None:
            found.setdefault(result.provider, (result.api, result.model))
    return found


REPORTED = _reported()


def test_the_table_names_every_provider_a_record_can_show() -> None:
    paths = {v.provider for v in vars(registry).values() if isinstance(v, Endpoint)}
    hosts = set(HOSTS.values())  # what the httpx transport names from the host it calls
    assert set(REPORTED) | (paths - {sniff.UNKNOWN}) | hosts == set(PRICE_PROVIDERS)
    assert set(PRICE_PROVIDERS) | {"google"} == PROVIDERS
    for provider, fallbacks in PRICE_PROVIDERS.items():
        assert fallbacks[0] == provider  # a row under the name a report shows wins


def _report(url: str) -> dict[str, tuple[int, Decimal, int]]:
    engine = sa.create_engine(url)
    try:
        return {r.key: (r.requests, r.cost_usd, r.unpriced)
                for r in summarize(engine, "provider")}
    finally:
        engine.dispose()


def _assert_each_provider_repriced(url: str, before: dict[str, Decimal | None]) -> None:
    """Each provider's first record at the rates it had (or unpriced), its second at 10 USD."""
    report = _report(url)
    for provider, (_, model) in REPORTED.items():
        first = before[provider]
        expected = (2, (first or Decimal(0)) + 10, int(first is None))
        assert report[provider] == expected, (provider, model)


@pytest.fixture
def spool(tmp_path: Path) -> str:
    return str(tmp_path / "spool")


def _reprice_each(tracker: CostTracker,
                  change: Callable[[str, str], None]) -> dict[str, Decimal | None]:
    """Per reported provider: a record, ``change(provider, model)``, the next record; returns
    what the first cost."""
    before: dict[str, Decimal | None] = {}
    try:
        for provider, (api, model) in REPORTED.items():
            tracker.record(CostRecord(provider, api, model, USAGE, record_id=f"{provider}-1"))
            assert tracker.flush(10)
            before[provider] = tracker.price_book.cost(USAGE, model, provider)
            change(provider, model)
            tracker.record(CostRecord(provider, api, model, USAGE, record_id=f"{provider}-2"))
            assert tracker.flush(10)
    finally:
        tracker.close()
    return before


def test_python_api_prices_the_next_record_of_every_reported_provider(
        db_url: str, spool: str) -> None:
    tracker = CostTracker(Settings(database_url=db_url, statsd_enabled=False, spool_dir=spool))

    def change(provider: str, model: str) -> None:
        # The running tracker hears of the change as it would through Redis.
        price = set_price(tracker.engine, provider, model, **NEW_RATES,
                          on_change=tracker.price_book.invalidate)
        assert (price.provider, price.model) == (provider, model)

    _assert_each_provider_repriced(db_url, _reprice_each(tracker, change))


@pytest.fixture
def cli_env(db_url: str, spool: str, redis_server: RedisServer,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    for name, value in (("DATABASE_URL", db_url), ("REDIS_URL", redis_server.url),
                        ("SPOOL_DIR", spool), ("STATSD", "off")):
        monkeypatch.setenv(f"COST_MIDDLEWARE_{name}", value)
    settings = Settings.from_env()
    # One engine for all the commands, disposed here (a command's process would just exit).
    engine = open_ledger(settings)
    monkeypatch.setattr(cli, "_engine", lambda _: engine)
    yield settings
    engine.dispose()


def test_cli_prices_the_next_record_of_every_reported_provider(
        cli_env: Settings, db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    tracker = CostTracker(cli_env)

    def change(provider: str, model: str) -> None:
        assert main(["prices", "set", provider, model, "--input", "3", "--output", "7"]) == 0
        assert "note:" not in capsys.readouterr().out  # every one is a name of ours
        deadline = time.monotonic() + 10  # the change arrives through Redis
        while (price := tracker.price_book.lookup(provider, model)) is None or (
                price.provider, price.input) != (provider, Decimal(3)):
            assert time.monotonic() < deadline, (provider, model)
            time.sleep(0.002)

    before = _reprice_each(tracker, change)
    assert main(["report", "--by", "provider", "--format", "json"]) == 0
    shown = {row["provider"]: Decimal(row["cost_usd"]) for row in json.loads(
        capsys.readouterr().out)["rows"]}
    for provider, first in before.items():
        assert shown[provider] == (first or 0) + 10, provider
    _assert_each_provider_repriced(db_url, before)


def _price(provider: str, model: str, rate: str) -> Price:
    return Price(provider=provider, model=model, input=Decimal(rate), output=Decimal(rate))


def test_old_shared_names_keep_pricing_and_a_record_provider_row_wins() -> None:
    google = _price("google", "gemini-2.5-pro", "1")
    source = MemoryPriceSource([google])
    book = PriceBook(source)
    assert book.lookup("google_gemini", "gemini-2.5-pro") == google
    assert book.lookup("vertex_gemini", "gemini-2.5-pro") == google
    gemini_api = _price("google_gemini", "gemini-2.5-pro", "2")
    source.replace([google, gemini_api])
    book.invalidate("google_gemini", "gemini-2.5-pro")
    assert book.lookup("google_gemini", "gemini-2.5-pro") == gemini_api
    assert book.lookup("vertex_gemini", "gemini-2.5-pro") == google  # Vertex has its own name


def test_existing_catalogs_load_unchanged(sqlite_url: str) -> None:
    engine = open_ledger(Settings(database_url=sqlite_url), seed=False)
    try:
        entries = [p.to_catalog() for p in bundled_prices()]
        entries.append(_price("acme", "acme-llm-9000", "1").to_catalog())
        assert load_catalog(engine, {"prices": entries}) == len(entries)
        assert {p.provider for p in list_prices(engine)} == {
            "openai", "anthropic", "aws_bedrock", "google", "mistral", "deepseek", "cohere",
            "acme"}
    finally:
        engine.dispose()


MISSPELT = [("opneai", "'openai'"), ("OpenAI", "'openai'"), ("google-gemini", "'google_gemini'"),
            ("gemini", "'google_gemini' or 'vertex_gemini'"), ("bedrock", "'aws_bedrock'"),
            ("anthropc", "'anthropic'"), ("mistralai", "'mistral'"), ("Azure", "'azure_openai'")]


@pytest.mark.parametrize(("name", "meant"), MISSPELT)
def test_a_misspelt_provider_fails_listing_ours(db_url: str, name: str, meant: str) -> None:
    engine = open_ledger(Settings(database_url=db_url))
    try:
        before = len(list_prices(engine))
        for call in (lambda: set_price(engine, name, "gpt-4o", input="1", output="1"),
                     lambda: show_price(engine, name, "gpt-4o"),
                     lambda: list_prices(engine, name)):
            with pytest.raises(ValueError, match="unknown provider") as error:
                call()
            message = str(error.value)
            assert f"did you mean {meant}?" in message
            assert all(provider in message for provider in PROVIDERS)
        assert len(list_prices(engine)) == before
    finally:
        engine.dispose()


def test_the_cli_refuses_a_misspelt_provider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COST_MIDDLEWARE_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("COST_MIDDLEWARE_STATSD", "off")
    for argv in (["prices", "set", "opneai", "gpt-4o", "--input", "1", "--output", "1"],
                 ["prices", "show", "opneai", "gpt-4o"],
                 ["prices", "list", "--provider", "opneai"]):
        assert main(argv) == 2
        err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
        assert "unknown provider 'opneai' (did you mean 'openai'?)" in err
        assert "google_gemini" in err and "vertex_anthropic" in err
    assert main(["prices", "show", "openai", "gpt-4o"]) == 0


def test_a_provider_of_the_apps_own_is_accepted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert provider_error("acme") is None
    monkeypatch.setenv("COST_MIDDLEWARE_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("COST_MIDDLEWARE_STATSD", "off")
    assert main(["prices", "set", "acme", "acme-llm-9000", "--input", "3", "--output", "7"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "note: acme is not a provider the middleware reports" in out
    assert "record_usage(provider='acme')" in out


def test_a_misspelt_looking_name_already_in_use_is_accepted(sqlite_url: str, spool: str) -> None:
    tracker = CostTracker(Settings(database_url=sqlite_url, statsd_enabled=False,
                                   spool_dir=spool))
    try:
        engine = tracker.engine
        # Rows loaded from a catalog of the app's own, and records named by record_usage.
        load_catalog(engine, {"prices": [_price("gemini", "gem-1", "1").to_catalog()]})
        tracker.record(CostRecord("llama", "app", "llama-4", USAGE, record_id="llama-1"))
        assert tracker.flush(10)
        assert set_price(engine, "gemini", "gem-2", **NEW_RATES).provider == "gemini"
        set_price(engine, "llama", "llama-4", **NEW_RATES, on_change=tracker.price_book.invalidate)
        tracker.record(CostRecord("llama", "app", "llama-4", USAGE, record_id="llama-2"))
        assert tracker.flush(10)
    finally:
        tracker.close()
    assert _report(sqlite_url)["llama"] == (2, Decimal(10), 1)
