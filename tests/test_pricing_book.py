"""PriceBook: caching, negative caching, TTL, invalidation, effective dates, batches, failures."""

from __future__ import annotations

import json
import threading
from collections.abc import Collection
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from cost_middleware.config import Settings
from cost_middleware.metrics import Metrics
from cost_middleware.pricing.book import PriceBook
from cost_middleware.pricing.price import Price
from cost_middleware.pricing.redis_tier import RedisPriceTier
from cost_middleware.pricing.sources import CatalogFilePriceSource, Key, MemoryPriceSource
from cost_middleware.pricing.sql_source import SQLPriceSource
from cost_middleware.records import CostRecord
from cost_middleware.usage.model import Usage

D = Decimal
JAN = datetime(2025, 1, 1, tzinfo=UTC)
JUN = datetime(2025, 6, 1, tzinfo=UTC)
USAGE = Usage(input_tokens=1_000_000, output_tokens=1_000_000)


def price(model: str = "gpt-4o", inp: str = "2.5", out: str = "10", *, provider: str = "openai",
          since: datetime = JAN, version: int = 1, aliases: tuple[str, ...] = ()) -> Price:
    return Price(provider=provider, model=model, input=D(inp), output=D(out),
                 effective_from=since, version=version, aliases=aliases)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def metrics() -> Metrics:
    return Metrics(Settings(statsd_enabled=True))


def counters(m: Metrics) -> dict[str, float]:
    return dict(m.snapshot()["counters"])


def test_cached_lookup_queries_the_source_once() -> None:
    source = MemoryPriceSource([price()])
    book = PriceBook(source)
    assert book.cost(USAGE, "gpt-4o-2024-08-06", "openai") == D("12.5")
    queries = source.queries
    for _ in range(5):
        assert book.cost(USAGE, "gpt-4o-2024-08-06", "openai") == D("12.5")
    assert source.queries == queries


def test_unknown_models_are_negatively_cached() -> None:
    source = MemoryPriceSource([price()])
    m = metrics()
    book = PriceBook(source, metrics=m)
    assert book.lookup("openai_compatible", "acme-llm-9000-preview") is None
    queries = source.queries
    assert queries >= 1
    for _ in range(10):
        assert book.cost(USAGE, "acme-llm-9000-preview", "openai_compatible") is None
    assert source.queries == queries
    seen = counters(m)
    assert seen["price.unknown_model"] == 11
    assert seen["price.cache.miss"] == 1 and seen["price.cache.hit"] == 10


def test_ttl_expiry_with_a_fake_timer() -> None:
    clock = FakeClock()
    source = MemoryPriceSource([price()])
    book = PriceBook(source, ttl=60, timer=clock)
    book.lookup("openai", "gpt-4o")
    source.replace([price(inp="3", version=2)])
    clock.now += 59
    assert book.lookup("openai", "gpt-4o").input == D("2.5")  # type: ignore[union-attr]
    clock.now += 2
    assert book.lookup("openai", "gpt-4o").input == D(3)  # type: ignore[union-attr]


def test_maxsize_bounds_the_cache() -> None:
    source = MemoryPriceSource([price()])
    book = PriceBook(source, maxsize=2)
    for name in ("a", "b", "c", "gpt-4o"):
        book.lookup("openai", name)
    queries = source.queries
    book.lookup("openai", "a")  # evicted (least recently used): asks the source again
    assert source.queries > queries


def test_invalidate_evicts_alias_and_suffix_resolved_entries() -> None:
    source = MemoryPriceSource([price(aliases=("gpt-4o-alias",)), price("o3", "2", "8")])
    book = PriceBook(source)
    names = ("gpt-4o", "gpt-4o-alias", "gpt-4o-2024-08-06", "gpt-4o-2024-11-20")
    for name in (*names, "o3"):
        book.lookup("openai", name)
        book.lookup("azure_openai", name)
    source.replace([price(inp="3", version=2, aliases=("gpt-4o-alias",)), price("o3", "2", "8")])
    book.invalidate("openai", "gpt-4o")
    for name in names:
        assert book.lookup("openai", name).input == D(3), name  # type: ignore[union-attr]
        assert book.lookup("azure_openai", name).input == D(3), name  # type: ignore[union-attr]
    queries = source.queries
    book.lookup("openai", "o3")  # exact hit on another row: untouched
    assert source.queries == queries


def test_invalidate_lets_a_new_row_price_a_negatively_cached_model() -> None:
    source = MemoryPriceSource([price()])
    book = PriceBook(source)
    assert book.lookup("vertex_anthropic", "claude-new-5@20260101") is None
    source.replace([price(), price("claude-new-5", "4", "20", provider="anthropic")])
    assert book.lookup("vertex_anthropic", "claude-new-5@20260101") is None  # still cached
    book.invalidate("anthropic", "claude-new-5")
    found = book.lookup("vertex_anthropic", "claude-new-5@20260101")
    assert found is not None and found.label == "anthropic/claude-new-5"


def test_invalidate_picks_up_a_new_alias() -> None:
    source = MemoryPriceSource([price()])
    book = PriceBook(source)
    assert book.lookup("openai", "my-deployment") is None
    source.replace([price(aliases=("my-deployment",), version=2)])
    book.invalidate("openai", "gpt-4o")
    assert book.lookup("openai", "my-deployment") == price(aliases=("my-deployment",), version=2)


def test_invalidate_all_drops_everything() -> None:
    source = MemoryPriceSource([price()])
    book = PriceBook(source)
    book.lookup("openai", "gpt-4o")
    source.replace([price(inp="9", version=2)])
    book.invalidate_all()
    assert book.lookup("openai", "gpt-4o").input == D(9)  # type: ignore[union-attr]


def test_effective_dates_choose_the_row_in_force() -> None:
    old = price(inp="10", out="40", since=JAN, version=1)
    cut = price(inp="2", out="8", since=JUN, version=2)
    book = PriceBook(MemoryPriceSource([cut, old]))
    assert book.lookup("openai", "gpt-4o", JUN - timedelta(microseconds=1)) == old
    assert book.lookup("openai", "gpt-4o", JUN) == cut
    assert book.lookup("openai", "gpt-4o", JAN - timedelta(days=1)) is None
    assert book.lookup("openai", "gpt-4o", datetime(2025, 3, 1)) == old  # naive = UTC
    assert book.lookup("openai", "gpt-4o") == cut


def test_future_price_never_applies_before_its_date_even_when_priced_later() -> None:
    now = datetime.now(UTC)
    current = price(inp="1", since=now - timedelta(days=30), version=1)
    future = price(inp="100", since=now + timedelta(days=30), version=2)
    book = PriceBook(MemoryPriceSource([current, future]))
    assert book.lookup("openai", "gpt-4o") == current
    # Records created before the change but priced after it keep the old rate ...
    before = CostRecord(provider="openai", api="chat", model="gpt-4o", usage=USAGE,
                        created_at=now + timedelta(days=29))
    after = CostRecord(provider="openai", api="chat", model="gpt-4o", usage=USAGE,
                       created_at=now + timedelta(days=31))
    book.price_many([before, after])
    assert (before.cost_usd, before.price_version) == (D(11), 1)
    assert (after.cost_usd, after.price_version) == (D(110), 2)
    # ... and a model whose only row is in the future has no price yet.
    only_future = PriceBook(MemoryPriceSource([future]))
    assert only_future.lookup("openai", "gpt-4o") is None


def test_price_many_fills_records_in_place_and_counts() -> None:
    m = metrics()
    source = MemoryPriceSource([price(version=7)])
    book = PriceBook(source, metrics=m)
    records = [
        CostRecord(provider="openai", api="chat", model="gpt-4o-2024-08-06", usage=USAGE,
                   created_at=JUN),
        CostRecord(provider="openai", api="chat", model="gpt-4o", usage=USAGE,
                   created_at=datetime(2025, 6, 1)),  # naive means UTC
        CostRecord(provider="openai", api="chat", model="mystery", usage=USAGE, created_at=JUN),
        CostRecord(provider="openai", api="chat", model="gpt-4o", usage=None, created_at=JUN),
        CostRecord(provider="openai", api="chat", model=None, usage=USAGE, created_at=JUN),
        CostRecord(provider="openai", api="chat", model="gpt-4o", usage=USAGE,
                   created_at=JAN - timedelta(days=1), cost_usd=D(1), price_version=1),
        CostRecord(provider="openai", api="chat", model="gpt-4o", created_at=JUN,
                   usage=Usage(input_tokens=None, output_tokens=1)),  # type: ignore[arg-type]
    ]
    book.price_many(records)
    assert [(r.cost_usd, r.price_version) for r in records] == [
        (D("12.5"), 7), (D("12.5"), 7), (None, None), (None, None), (None, None), (None, None),
        (None, None)]
    seen = counters(m)
    assert seen["price.unknown_model"] == 3  # "mystery", no model, before the first row
    assert seen["price.cache.miss"] == 3  # gpt-4o-2024-08-06, gpt-4o, mystery
    assert seen["price.cache.hit"] == 2
    assert seen["price.bad_usage"] == 1
    assert len(m.snapshot()["timings"]["price.duration"]) == 1
    queries = source.queries
    book.price_many(records)
    assert source.queries == queries
    assert counters(m)["price.cache.hit"] == 2 + 5


class FlakySource(MemoryPriceSource):
    def __init__(self, prices: list[Price]) -> None:
        super().__init__(prices)
        self.failing = True

    def load_models(self, keys: Collection[Key]) -> list[Price]:
        if self.failing:
            raise ConnectionError("database is down")
        return super().load_models(keys)


def test_a_failing_source_is_counted_and_never_cached(caplog: pytest.LogCaptureFixture) -> None:
    m = metrics()
    source = FlakySource([price()])
    book = PriceBook(source, metrics=m)
    record = CostRecord(provider="openai", api="chat", model="gpt-4o", usage=USAGE)
    book.price_many([record])
    assert record.cost_usd is None
    assert book.lookup("openai", "gpt-4o") is None
    assert counters(m)["price.source_error"] == 2
    assert "price source failed (ConnectionError)" in caplog.text
    assert "database is down" not in caplog.text
    source.failing = False
    book.price_many([record])
    assert record.cost_usd == D("12.5")


class InvalidatingSource(MemoryPriceSource):
    """Simulates a price change landing while a miss is being resolved."""

    book: PriceBook | None = None

    def load_models(self, keys: Collection[Key]) -> list[Price]:
        result = super().load_models(keys)
        if self.book is not None:
            self.book.invalidate("openai", "gpt-4o")
        return result


def test_a_resolution_racing_an_invalidation_is_not_cached() -> None:
    source = InvalidatingSource([price()])
    book = PriceBook(source)
    source.book = book
    assert book.lookup("openai", "gpt-4o") == price()
    queries = source.queries
    source.book = None
    book.lookup("openai", "gpt-4o")
    assert source.queries > queries  # the raced result was not kept


def test_concurrent_pricing_while_invalidating() -> None:
    prices = [price(f"model-{i}", str(i + 1), "1", version=i + 1) for i in range(20)]
    source = MemoryPriceSource(prices)
    book = PriceBook(source, maxsize=16)
    errors: list[BaseException] = []
    stop = threading.Event()

    def pricer(seed: int) -> None:
        try:
            for n in range(400):
                i = (seed * 7 + n) % 21  # 20 known models and one unknown
                rec = CostRecord(provider="openai", api="chat", model=f"model-{i}-2025-01-01",
                                 usage=Usage(input_tokens=1_000_000, output_tokens=0),
                                 created_at=JUN)
                book.price_many([rec])
                assert rec.cost_usd == (D(i + 1) if i < 20 else None)
        except BaseException as exc:
            errors.append(exc)

    def invalidator() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            if n % 50 == 0:
                book.invalidate_all()
            else:
                book.invalidate("openai", f"model-{n % 20}")

    threads = [threading.Thread(target=pricer, args=(s,)) for s in range(4)]
    inv = threading.Thread(target=invalidator)
    inv.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    stop.set()
    inv.join(30)
    assert not errors


def test_from_settings_puts_the_sql_table_behind_redis(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'prices.db'}")
    try:
        plain = PriceBook.from_settings(Settings(), engine)
        assert isinstance(plain.source, SQLPriceSource)
        shared = PriceBook.from_settings(Settings(redis_url="redis://127.0.0.1:9/0"), engine)
        assert isinstance(shared.source, RedisPriceTier)
        assert isinstance(shared.source.inner, SQLPriceSource)
    finally:
        engine.dispose()


def test_from_settings_builds_the_configured_source(tmp_path: Path) -> None:
    catalog = tmp_path / "prices.json"
    catalog.write_text(json.dumps({"prices": [price().to_catalog()]}))
    book = PriceBook.from_settings(Settings(prices_file=str(catalog), cache_ttl=5, cache_size=8),
                                   None)
    assert isinstance(book.source, CatalogFilePriceSource)
    assert book.source.on_reload == book.invalidate_all
    assert book.lookup("openai", "gpt-4o") == replace(price(), version=1)
    with pytest.raises(ValueError, match="engine or a prices file"):
        PriceBook.from_settings(Settings(), None)


def test_the_reverse_index_stays_bounded_and_correct() -> None:
    source = MemoryPriceSource([price()])
    book = PriceBook(source, maxsize=8)
    for i in range(2000):
        book.lookup("vertex_anthropic", f"claude-x-{i}@20250101")  # 4 candidates each
    assert len(book._dependents) <= 8 * 16 + 8
    book.lookup("openai", "gpt-4o-2024-08-06")
    source.replace([price(inp="4", version=2)])
    book.invalidate("openai", "gpt-4o")
    assert book.lookup("openai", "gpt-4o-2024-08-06").input == D(4)  # type: ignore[union-attr]
