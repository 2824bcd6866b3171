"""Pricing: cached cost of one usage, batch pricing, uncached lookups, and the same usages priced
by LiteLLM and tokencost.

Baselines, all measured in this run: a locked ``TTLCache`` hit on the resolved key plus
``Price.cost`` (the least a cached exact lookup can cost: no matching, no effective date);
LiteLLM's ``cost_per_token`` and tokencost's ``calculate_cost_by_tokens`` on the same usages and
model names (when the ``bench`` extra is installed); for uncached lookups, one primary-key
``SELECT`` of ``model_prices`` on a kept connection of the same engine. PostgreSQL runs in a
database created and dropped here (admin URL from ``COST_MIDDLEWARE_TEST_PG``).

    python benchmarks/bench_pricing.py [--quick]
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any

import sqlalchemy as sa
from cachetools import TTLCache
from common import (
    NO_POSTGRES,
    Result,
    best_per_call,
    fresh_python,
    interleave,
    percentile,
    postgres_database,
    standalone,
    timed,
)

from cost_middleware.config import Settings
from cost_middleware.metrics import Metrics
from cost_middleware.pricing.admin import ensure_seeded
from cost_middleware.pricing.book import PriceBook
from cost_middleware.pricing.catalog import bundled_prices
from cost_middleware.pricing.price import Price
from cost_middleware.pricing.sources import MemoryPriceSource
from cost_middleware.pricing.sql_source import SQLPriceSource
from cost_middleware.records import CostRecord
from cost_middleware.schema import metadata, model_prices
from cost_middleware.storage.engine import make_engine
from cost_middleware.usage.model import Usage

#: LiteLLM otherwise fetches its price map from GitHub at import.
LITELLM_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}
INSTALL_HINT = "not installed: pip install -e '.[bench]'"
CACHED_LIMIT_US = 2.0
LITELLM_FACTOR = 50
BATCH_LIMIT = 500_000
UNCACHED_LIMIT_MS = 2.0

#: Usages and model names (as providers report them) that all three libraries know: the set
#: the timings run over. (No Claude model is in both LiteLLM's and tokencost's bundled maps.)
COMPARED: list[tuple[str, str, Usage]] = [
    ("openai", "gpt-4o-2024-08-06", Usage(2006, 300, cached_input_tokens=1920)),
    ("openai", "gpt-4o-mini-2024-07-18", Usage(1355, 87)),
    ("openai", "gpt-4.1-2025-04-14", Usage(5000, 1200, cached_input_tokens=1000)),
    ("openai", "gpt-5-2025-08-07",
     Usage(3000, 2500, cached_input_tokens=1024, reasoning_tokens=1800)),
    ("google_gemini", "gemini-2.5-flash", Usage(12_000, 800, cached_input_tokens=8_000)),
    ("google_gemini", "gemini-2.5-pro", Usage(9_000, 1_500)),
]
#: Costs printed side by side: where the three agree, and the cases that tell them apart.
EXAMPLES: list[tuple[str, str, Usage, str]] = [
    (*COMPARED[0], "cache reads"),
    (*COMPARED[2], "cache reads"),
    (*COMPARED[4], "cache reads"),
    ("anthropic", "claude-sonnet-4-5-20250929",
     Usage(18_648, 512, cached_input_tokens=12_400, cache_write_input_tokens=6_200,
           cache_write_5m_input_tokens=6_200, cache_write_1h_input_tokens=0),
     "reads + 5-minute cache writes"),
    ("anthropic", "claude-sonnet-4-5-20250929",
     Usage(3_200, 900, cache_write_input_tokens=3_000, cache_write_5m_input_tokens=0,
           cache_write_1h_input_tokens=3_000), "1-hour cache writes"),
    ("anthropic", "claude-sonnet-4-20250514",
     Usage(18_648, 512, cached_input_tokens=12_400, cache_write_input_tokens=6_200,
           cache_write_5m_input_tokens=6_200, cache_write_1h_input_tokens=0),
     "reads + 5-minute cache writes"),
    ("google_gemini", "gemini-2.5-pro", Usage(250_000, 2_000), "above the 200k-token tier"),
]
#: What extractors report (dated snapshots, prefixes), each needing matching.
NAMES = [
    ("openai", "gpt-4o-2024-08-06"), ("openai", "gpt-4o-mini-2024-07-18"),
    ("openai", "o3-2025-04-16"), ("anthropic", "claude-sonnet-4-5-20250929"),
    ("vertex_anthropic", "claude-haiku-4-5@20251001"), ("google_gemini", "gemini-2.5-flash"),
    ("aws_bedrock", "us.anthropic.claude-sonnet-4-20250514-v1:0"),
    ("aws_bedrock", "global.anthropic.claude-sonnet-4-5-20250929-v1:0"),
    ("openrouter", "anthropic/claude-sonnet-4.5"), ("deepseek", "deepseek-chat"),
    ("openai_compatible", "acme-llm-9000-preview"),  # unknown: negative cache
]


def memory_book(metrics: bool = False) -> PriceBook:
    return PriceBook(MemoryPriceSource(bundled_prices()),
                     metrics=Metrics(Settings()) if metrics else None)


class Anchor:
    """The least a cached exact lookup can cost: a locked ``TTLCache`` hit on the resolved key
    (no matching, no effective date, no metrics), then the exact arithmetic."""

    def __init__(self, prices: Iterable[Price | None]) -> None:
        self._lock = threading.Lock()
        self._cache: TTLCache[tuple[str, str], Price] = TTLCache(4096, 300)
        for price in prices:
            if price is not None:
                self._cache[(price.provider, price.model)] = price

    def cost(self, usage: Usage, price: Price) -> Decimal:
        with self._lock:
            hit = self._cache[(price.provider, price.model)]
        return hit.cost(usage)


def cost_all(book: PriceBook) -> None:
    for provider, model, usage in COMPARED:
        book.cost(usage, model, provider)


def resolve(book: PriceBook, provider: str, model: str) -> Price:
    price = book.lookup(provider, model)
    if price is None:
        raise RuntimeError(f"the catalog has no price for {provider}/{model}")
    return price


# -- batch -----------------------------------------------------------------------------------


def bench_batch(quick: bool) -> Result:
    book = memory_book(metrics=True)
    now = datetime.now(UTC)
    records = [CostRecord(provider=p, api="chat", model=m, usage=EXAMPLES[i % len(EXAMPLES)][2],
                          created_at=now)
               for i in range(500) for p, m in [NAMES[i % len(NAMES)]]]
    book.price_many(records)  # fill the cache
    priced = [(usage, price) for r in records
              if (usage := r.usage) is not None
              and (price := book.lookup(r.provider, r.model or "")) is not None]
    floor = Anchor(price for _, price in priced)

    def anchor() -> None:
        for usage, price in priced:
            floor.cost(usage, price)

    best = best_per_call({"ours": partial(book.price_many, records), "anchor": anchor},
                         100 if quick else 400)
    rate, floor_rate = len(records) / best["ours"], len(records) / best["anchor"]
    return Result("PriceBook.price_many (batches of 500)", rate, "records/s",
                  "locked TTLCache hit + Price.cost per record", floor_rate,
                  f"≥ {BATCH_LIMIT:,}/s", rate >= BATCH_LIMIT,
                  f"{len(NAMES)} names, one unknown; metrics on")


# -- uncached --------------------------------------------------------------------------------


def bench_uncached(backend: str, url: str, quick: bool) -> list[Result]:
    """Two kinds of miss: a cold cache (everything, provider aliases included, re-read) and a
    new name in a warm process (e.g. a new dated snapshot: one query). Each lookup alternates
    with the baseline: one primary-key SELECT on a kept connection."""
    engine = make_engine(url)
    metadata.create_all(engine)
    ensure_seeded(engine)
    book = PriceBook(SQLPriceSource(engine))
    conn = engine.connect()
    if engine.dialect.name != "sqlite":
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
    by_key = sa.select(model_prices).where(model_prices.c.provider == sa.bindparam("p"),
                                           model_prices.c.model == sa.bindparam("m"))

    def select(provider: str, model: str) -> None:
        conn.execute(by_key, {"p": provider, "m": model}).all()
        if engine.dialect.name == "sqlite":
            conn.rollback()  # as the price source does: hold no read snapshot

    try:
        book.lookup(*NAMES[0])  # open the kept connections
        select(*NAMES[0])
        rounds = 20 if quick else 150
        cold, fresh, bare = [], [], []
        for i in range(rounds):
            for provider, model in NAMES:
                book.invalidate_all()
                cold.append(timed(partial(book.lookup, provider, model)))
                bare.append(timed(partial(select, provider, model)))
            for model in (f"gpt-4o-2099-{i // 28 % 12 + 1:02d}-{i % 28 + 1:02d}",
                          f"claude-sonnet-4-5-2099{i:04d}", f"o4-mini-2099-01-{i % 28 + 1:02d}",
                          f"acme-{i}"):
                fresh.append(timed(partial(book.lookup, "openai", model)))
    finally:
        book.close()
        conn.close()
        engine.dispose()
    results = []
    for label, samples in (("cold cache", cold), ("new name, warm cache", fresh)):
        for q in (50, 99):
            wall = percentile((w for w, _ in samples), q) * 1e3
            cpu = percentile((c for _, c in samples), q) * 1e3
            results.append(Result(
                f"uncached lookup, {backend}, {label}: p{q}", wall, "ms",
                f"primary-key SELECT: p{q}", percentile((w for w, _ in bare), q) * 1e3,
                f"p99 ≤ {UNCACHED_LIMIT_MS:g} ms" if q == 99 else "",
                wall <= UNCACHED_LIMIT_MS if q == 99 else None,
                f"CPU p{q} {cpu:.3f} ms (this process only); {len(samples)} lookups"))
    return results


# -- LiteLLM and tokencost -------------------------------------------------------------------


def optional_module(name: str) -> Any:
    """The module, or None when the ``bench`` extra is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def litellm_cost(litellm: Any, model: str, usage: Usage) -> float:
    prompt, completion = litellm.cost_per_token(
        model=model, prompt_tokens=usage.input_tokens, completion_tokens=usage.output_tokens,
        cache_read_input_tokens=usage.cached_input_tokens,
        cache_creation_input_tokens=usage.cache_write_input_tokens)
    return float(prompt + completion)


def tokencost_cost(tokencost: Any, model: str, usage: Usage) -> Decimal:
    """What a tokencost user writes: it has input, cached and output rates, no cache writes
    (so they are billed as input)."""
    price = tokencost.calculate_cost_by_tokens
    return Decimal(price(usage.input_tokens - usage.cached_input_tokens, model, "input")
                   + price(usage.cached_input_tokens, model, "cached")
                   + price(usage.output_tokens, model, "output"))


def agreement(ours: Decimal, theirs: float | Decimal) -> str:
    exact = theirs if isinstance(theirs, Decimal) else Decimal(theirs)
    if exact == ours:
        return "same"
    if not exact:
        return "zero, no error"
    error = (exact - ours) / ours
    if isinstance(theirs, float) and abs(error) < 1e-12:
        return f"float rounding ({exact - ours:+.1e} USD)"
    return f"differs by {error:+.1%}"


def bench_imports(quick: bool) -> list[Result]:
    """Each competitor imported by a fresh interpreter, against one importing ours."""
    codes = {f"import {m}": importlib.util.find_spec(m) is not None
             for m in ("litellm", "tokencost")}
    ours = "from cost_middleware import *"
    measured = [code for code, installed in codes.items() if installed and not quick]
    samples = interleave({code: partial(fresh_python, code, LITELLM_ENV)
                          for code in (ours, *measured)}, 2) if measured else {}
    wall = {code: min(w for w, _ in values) for code, values in samples.items()}
    cpu = {code: min(c for _, c in values) for code, values in samples.items()}
    results = []
    for code, installed in codes.items():
        name = f"python -c '{code}', CPU"
        if not installed:
            results.append(Result.skipped(name, "s", INSTALL_HINT))
        elif quick:  # a fresh interpreter importing each costs about 25 s here
            results.append(Result.skipped(name, "s", "full mode only"))
        else:
            results.append(Result(
                name, cpu[code], "s", f"python -c '{ours}'", cpu[ours],
                notes=f"wall {wall[code]:.1f} s vs {wall[ours]:.2f} s (fresh interpreter, best "
                f"of 2){'; bundled price map' if 'litellm' in code else ''}"))
    return results


def bench_cached(quick: bool) -> list[Result]:
    """``PriceBook.cost`` from the cache against the anchor, LiteLLM and tokencost, all in one
    interleaved measurement over the same usages and names; then costs side by side."""
    os.environ.update(LITELLM_ENV)
    litellm, tokencost = optional_module("litellm"), optional_module("tokencost")
    book, counted = memory_book(), memory_book(metrics=True)
    resolved = [(usage, resolve(book, provider, model)) for provider, model, usage in COMPARED]
    floor = Anchor(price for _, price in resolved)

    def anchor() -> None:
        for usage, price in resolved:
            floor.cost(usage, price)

    fns: dict[str, Callable[[], object]] = {
        "ours": partial(cost_all, book), "metrics": partial(cost_all, counted), "anchor": anchor}
    if litellm is not None:
        fns["litellm"] = lambda: [litellm_cost(litellm, m, u) for _, m, u in COMPARED]
    if tokencost is not None:
        fns["tokencost"] = lambda: [tokencost_cost(tokencost, m, u) for _, m, u in COMPARED]
    best = best_per_call(fns, 100 if quick else 400)
    us = {k: v / len(COMPARED) * 1e6 for k, v in best.items()}
    ours = us["ours"]
    name = "PriceBook.cost, cached (matching included, exact)"
    results = [Result(name, ours, "µs", "locked TTLCache hit + Price.cost", us["anchor"],
                      f"≤ {CACHED_LIMIT_US:g} µs", ours <= CACHED_LIMIT_US,
                      f"per usage, mean over the {len(COMPARED)} usages below; with metrics on "
                      f"{us['metrics']:.2f} µs")]
    if litellm is None:
        results.append(Result.skipped(f"{name}, vs LiteLLM", "µs", INSTALL_HINT))
    else:
        results.append(Result(
            f"{name}, vs LiteLLM", ours, "µs", "litellm.cost_per_token (floats)", us["litellm"],
            f"≥ {LITELLM_FACTOR}x faster", ours * LITELLM_FACTOR <= us["litellm"],
            "same usages and names: " + ", ".join(m for _, m, _ in COMPARED)))
    if tokencost is None:
        results.append(Result.skipped(f"{name}, vs tokencost", "µs", INSTALL_HINT))
    else:
        results.append(Result(
            f"{name}, vs tokencost", ours, "µs", "tokencost.calculate_cost_by_tokens x3",
            us["tokencost"], "faster", ours < us["tokencost"],
            "three calls per usage: input, cached, output"))
    return results + examples(book, litellm, tokencost)


def examples(book: PriceBook, litellm: Any, tokencost: Any) -> list[Result]:
    results = []
    for provider, model, usage, case in EXAMPLES:
        ours = book.cost(usage, model, provider)
        if ours is None:
            raise RuntimeError(f"the catalog has no price for {provider}/{model}")
        notes = [f"ours {ours} (Decimal)"]
        theirs: float | None = None
        if litellm is not None:
            theirs = litellm_cost(litellm, model, usage)
            notes.append(f"LiteLLM {theirs!r}: {agreement(ours, theirs)}")
        if tokencost is not None:
            try:
                other = tokencost_cost(tokencost, model, usage)
                notes.append(f"tokencost {other}: {agreement(ours, other)}")
            except KeyError:
                notes.append("tokencost: unknown model (KeyError)")
        results.append(Result(f"cost of one usage: {model}, {case}", float(ours), "USD",
                              "LiteLLM" if theirs is not None else "", theirs,
                              notes="; ".join(notes)))
    return results


def run(quick: bool) -> list[Result]:
    results = [bench_batch(quick)]
    with tempfile.TemporaryDirectory() as tmp:
        results += bench_uncached("SQLite", f"sqlite:///{tmp}/bench.db", quick)
    with postgres_database() as url:
        if url is None:
            results += [Result.skipped(f"uncached lookup, PostgreSQL, {label}: p{q}", "ms",
                                       NO_POSTGRES)
                        for label in ("cold cache", "new name, warm cache") for q in (50, 99)]
        else:
            results += bench_uncached("PostgreSQL", url, quick)
    results += bench_imports(quick)
    # Last: importing LiteLLM loads thousands of modules and would weigh on what follows.
    return bench_cached(quick) + results


if __name__ == "__main__":
    standalone(run, "pricing: cached, batch and uncached, vs an anchor, LiteLLM and tokencost")
