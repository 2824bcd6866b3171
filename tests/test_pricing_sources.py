"""Price sources: the SQL table (SQLite and PostgreSQL), catalog files, bundled catalog."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cost_middleware.pricing.admin import load_catalog
from cost_middleware.pricing.book import PriceBook
from cost_middleware.pricing.catalog import bundled_prices, parse_catalog, read_catalog
from cost_middleware.pricing.price import Price, PriceError
from cost_middleware.pricing.redis_tier import RedisPriceTier
from cost_middleware.pricing.sources import CatalogFilePriceSource, MemoryPriceSource
from cost_middleware.pricing.sql_source import SQLPriceSource
from cost_middleware.schema import metadata, model_prices
from cost_middleware.usage.model import Usage

D = Decimal
USAGE = Usage(input_tokens=100_000, output_tokens=100_000)  # below every long-context tier


def statements(engine: sa.Engine) -> list[str]:
    seen: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    return seen


def test_sql_source_serves_the_bundled_catalog(engine: sa.Engine) -> None:
    assert load_catalog(engine, {"prices": [p.to_catalog() for p in bundled_prices()]}) > 50
    source = SQLPriceSource(engine)
    try:
        rows = source.load_models([("openai", "o3"), ("openai", "gpt-4o"), ("google", "o3")])
        assert sorted((p.model, p.input) for p in rows) == [
            ("gpt-4o", D("2.5")), ("o3", D(2)), ("o3", D(10))]
        assert all(p.effective_from.tzinfo is not None for p in rows)
        assert source.aliases("openai")["gpt-5-chat-latest"] == "gpt-5"
        everything = source.load_models([(p.provider, p.model) for p in bundled_prices()])
        assert len(everything) == len(bundled_prices())
        assert max(p.version for p in everything) == len(everything)
        sonnet = next(p for p in everything if p.label == "anthropic/claude-sonnet-4-5")
        bundled = next(p for p in bundled_prices() if p.label == sonnet.label)
        assert sonnet.same_rates(bundled)  # tiers and decimals survive the table exactly
        assert source.load_models([]) == []
    finally:
        source.close()


def test_every_source_names_the_models_of_a_provider(engine: sa.Engine, tmp_path: Path) -> None:
    prices = bundled_prices()
    load_catalog(engine, {"prices": [p.to_catalog() for p in prices]})
    catalog = tmp_path / "prices.json"
    catalog.write_text(json.dumps({"prices": [p.to_catalog() for p in prices]}))
    expected = {p.model for p in prices if p.provider == "anthropic"}
    sql, memory = SQLPriceSource(engine), MemoryPriceSource(prices)
    # Model names are not shared through Redis: the tier asks its inner source.
    tier = RedisPriceTier(memory, "redis://127.0.0.1:9/0", ttl=300)
    try:
        for source in (sql, memory, CatalogFilePriceSource(catalog), tier):
            assert source.models("anthropic") == expected, source
            assert source.models("nobody") == set()
    finally:
        sql.close()
        tier.close()


def test_sql_book_prices_from_one_kept_connection(engine: sa.Engine) -> None:
    load_catalog(engine, {"prices": [p.to_catalog() for p in bundled_prices()]})
    checkouts: list[object] = []
    sa.event.listen(engine, "checkout", lambda *args: checkouts.append(args))
    seen = statements(engine)
    book = PriceBook(SQLPriceSource(engine))
    try:
        assert book.cost(USAGE, "claude-sonnet-4-5@20250929", "vertex_anthropic") == D("1.8")
        assert book.cost(USAGE, "acme-llm-9000-preview", "openai_compatible") is None
        queries = len(seen)
        for _ in range(3):
            assert book.cost(USAGE, "acme-llm-9000-preview", "openai_compatible") is None
            assert book.cost(USAGE, "claude-sonnet-4-5@20250929", "vertex_anthropic") == D("1.8")
        assert len(seen) == queries  # cached, negative cache included
        assert book.cost(USAGE, "o4-mini-2025-04-16", "openai") == D("0.55")
        assert len(checkouts) == 1
        assert not any(s.lstrip().upper().startswith("BEGIN") for s in seen)
    finally:
        book.close()


def test_sql_source_reconnects_after_the_server_dropped_it(pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    metadata.create_all(engine)
    load_catalog(engine, {"prices": [Price(provider="p", model="m", input=D(1),
                                           output=D(1)).to_catalog()]})
    source = SQLPriceSource(engine)
    try:
        assert [p.version for p in source.load_models([("p", "m")])] == [1]
        with engine.connect() as admin:
            pid = source._execute(sa.select(sa.func.pg_backend_pid()))[0][0]
            admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        assert [p.model for p in source.load_models([("p", "m")])] == ["m"]
    finally:
        source.close()
        engine.dispose()


# -- catalog files ---------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def write_catalog(path: Path, entries: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps({"as_of": "2025-01-01", "prices": entries}))


def entry(inp: str = "2.50", **extra: Any) -> dict[str, Any]:
    return {"provider": "openai", "model": "gpt-4o", "input": inp, "output": "10", **extra}


def test_catalog_file_reloads_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    write_catalog(path, [entry()])
    clock = Clock()
    reloads: list[int] = []
    source = CatalogFilePriceSource(path, timer=clock)
    book = PriceBook(source)

    def on_reload() -> None:
        reloads.append(1)
        book.invalidate_all()

    source.on_reload = on_reload
    assert book.lookup("openai", "gpt-4o").input == D("2.50")  # type: ignore[union-attr]
    write_catalog(path, [entry("3.00", aliases=["gpt-4o-renamed"])])
    os.utime(path, ns=(1, 1))  # a distinct modification time even on coarse clocks
    clock.now += 0.5  # checked at most once a second
    assert source.load_models([("openai", "gpt-4o")])[0].input == D("2.50")
    clock.now += 0.6
    assert source.load_models([("openai", "gpt-4o")])[0].input == D("3.00")
    assert reloads == [1]
    assert book.lookup("openai", "gpt-4o-renamed").input == D("3.00")  # type: ignore[union-attr]
    clock.now += 5
    source.load_models([("openai", "gpt-4o")])
    assert reloads == [1]  # unchanged file: no reload


def test_catalog_file_keeps_the_last_good_prices(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "prices.json"
    write_catalog(path, [entry()])
    clock = Clock()
    source = CatalogFilePriceSource(path, timer=clock)
    path.write_text('{"prices": [{"provider": "openai", "model": "gpt-4o", "input": "-1"')
    clock.now += 2
    assert source.load_models([("openai", "gpt-4o")])[0].input == D("2.50")
    assert "keeping the last good prices" in caplog.text
    write_catalog(path, [entry(input="x")])
    with pytest.raises(PriceError, match="input"):
        CatalogFilePriceSource(path)


def test_catalog_file_versions(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    write_catalog(path, [entry(version=5), entry(effective_from="2026-01-01"),
                         entry(model="o3", effective_from="2025-01-01")])
    source = CatalogFilePriceSource(path)
    rows = source.load_models([("openai", "gpt-4o"), ("openai", "o3")])
    assert sorted(p.version for p in rows) == [5, 6, 7]


def test_read_catalog_rejects_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("[1, 2]")
    with pytest.raises(PriceError, match="JSON object"):
        read_catalog(path)
    path.write_text("{nope")
    with pytest.raises(PriceError, match="not valid JSON"):
        read_catalog(path)
    with pytest.raises(PriceError, match="prices"):
        parse_catalog({"as_of": "2025-01-01"})
    with pytest.raises(PriceError, match="appears twice"):
        parse_catalog({"prices": [entry(), entry("3")]})
    with pytest.raises(PriceError, match=r"entry #1.*'output'"):
        parse_catalog({"prices": [entry(), {**entry(), "output": "-2"}]})


def test_bundled_catalog_is_dated_and_complete() -> None:
    raw = json.loads((Path(__file__).parent.parent / "cost_middleware" / "catalog.json")
                     .read_text(), parse_float=Decimal)
    assert datetime.fromisoformat(raw["as_of"])
    assert all(e.get("source") and e.get("effective_from") for e in raw["prices"])
    prices = bundled_prices()
    labels = {p.label for p in prices}
    for needed in (
        "openai/gpt-4o", "openai/gpt-4o-mini", "openai/gpt-4.1", "openai/gpt-4.1-mini",
        "openai/gpt-4.1-nano", "openai/o1", "openai/o3", "openai/o3-mini", "openai/o4-mini",
        "openai/gpt-5", "openai/gpt-5-mini", "openai/gpt-5-nano", "openai/gpt-5.1",
        "openai/text-embedding-3-small", "openai/text-embedding-3-large",
        "openai/gpt-3.5-turbo-instruct", "anthropic/claude-opus-4", "anthropic/claude-opus-4-1",
        "anthropic/claude-opus-4-5", "anthropic/claude-opus-4-6", "anthropic/claude-sonnet-4",
        "anthropic/claude-sonnet-4-5", "anthropic/claude-sonnet-4-6",
        "anthropic/claude-haiku-4-5", "anthropic/claude-3-5-haiku", "google/gemini-2.5-pro",
        "google/gemini-2.5-flash", "google/gemini-2.5-flash-lite", "google/gemini-2.0-flash",
        "aws_bedrock/global.anthropic.claude-sonnet-4-5", "aws_bedrock/anthropic.claude-sonnet-4-5",
        "deepseek/deepseek-chat", "deepseek/deepseek-reasoner", "mistral/mistral-large",
        "mistral/mistral-small", "cohere/command-a-03-2025",
    ):
        assert needed in labels, needed
    by_label: dict[str, list[Price]] = {}
    for p in prices:
        by_label.setdefault(p.label, []).append(p)
    o3 = sorted(by_label["openai/o3"], key=lambda p: p.effective_from)
    assert [(p.input, p.output, p.effective_from) for p in o3] == [
        (D(10), D(40), datetime(2025, 4, 16, tzinfo=UTC)),
        (D(2), D(8), datetime(2025, 6, 10, tzinfo=UTC))]
    for name in ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-5"):
        regional = by_label[f"aws_bedrock/anthropic.{name}"][0]
        global_ = by_label[f"aws_bedrock/global.anthropic.{name}"][0]
        listed = by_label[f"anthropic/{name}"][0]
        assert global_.input == listed.input
        assert regional.input == listed.input * D("1.1")
        assert regional.output == listed.output * D("1.1")
    sonnet = by_label["anthropic/claude-sonnet-4-5"][0]
    assert sonnet.web_search_per_1k == 10 and sonnet.tiers[0].above_input_tokens == 200_000
    pro = by_label["google/gemini-2.5-pro"][0]
    assert (pro.tiers[0].input, pro.tiers[0].output) == (D("2.5"), D(15))
    assert replace(sonnet, version=3).version == 3


def test_sql_source_leaves_a_shared_in_memory_connection_transactional() -> None:
    from sqlalchemy.pool import StaticPool

    engine = sa.create_engine("sqlite://", poolclass=StaticPool,
                              connect_args={"check_same_thread": False})
    metadata.create_all(engine)
    load_catalog(engine, {"prices": [entry()]})
    source = SQLPriceSource(engine)
    try:
        assert [p.model for p in source.load_models([("openai", "gpt-4o")])] == ["gpt-4o"]
        with engine.connect() as conn:  # the same DBAPI connection (StaticPool)
            conn.execute(sa.delete(model_prices))
            conn.rollback()
        # The delete was rolled back: not in autocommit mode.
        assert [p.model for p in source.load_models([("openai", "gpt-4o")])] == ["gpt-4o"]
    finally:
        source.close()
        engine.dispose()
