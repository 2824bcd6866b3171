"""``prices import``: the real LiteLLM map and genai-prices data into SQLite and PostgreSQL,
exact rates, the guards, dated rows, propagation to a running tracker and to another process
through Redis, and the command's messages and exit codes."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from conftest import RedisServer

from cost_middleware import CostRecord, Settings
from cost_middleware.engine.ledger import open_ledger
from cost_middleware.engine.tracker import CostTracker
from cost_middleware.ops.cli import main
from cost_middleware.pricing import matching
from cost_middleware.pricing.admin import load_catalog, price_history, set_price, show_price
from cost_middleware.pricing.imports import genai_prices, litellm
from cost_middleware.pricing.imports.conversion import GENAI_PRICES, LITELLM
from cost_middleware.pricing.imports.plan import ImportRefused, apply_plan, plan_import
from cost_middleware.pricing.imports.providers import MAPPING, SLASHED_MODELS, ours
from cost_middleware.pricing.imports.sources import detect, in_family, litellm_file
from cost_middleware.pricing.price import EPOCH, Price
from cost_middleware.pricing.redis_keys import notify_change
from cost_middleware.schema import model_prices
from cost_middleware.usage.model import Usage

D = Decimal
NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
#: Models the bundled catalog does not know and both LiteLLM's map and genai-prices do (it has
#: the current lineup; these are a retired Claude on Vertex and a restricted-access GPT).
NEW_CLAUDE = ("vertex_anthropic", "claude-3-5-sonnet")
NEW_GPT = ("openai", "gpt-6-rosalind")
#: LiteLLM figures (USD per token) → our fields (USD per 1M tokens).
LITELLM_FIELDS = {"input_cost_per_token": "input", "output_cost_per_token": "output",
                  "cache_read_input_token_cost": "cached_input",
                  "cache_creation_input_token_cost": "cache_write",
                  "cache_creation_input_token_cost_above_1hr": "cache_write_1h"}
GENAI_FIELDS = {"input_mtok": "input", "output_mtok": "output", "cache_read_mtok": "cached_input",
                "cache_write_mtok": "cache_write", "cache_write_1h_mtok": "cache_write_1h",
                "web_searches_kcount": "web_search_per_1k"}
USAGE = Usage(input_tokens=12_000, output_tokens=800, cached_input_tokens=4_000)


def litellm_map() -> dict[str, Any]:
    """The map inside the installed litellm package, every number exact."""
    path = litellm_file()
    assert path is not None
    data: dict[str, Any] = json.loads(path.read_bytes(), parse_float=Decimal)
    return data


def write_map(path: Path, data: Any) -> Path:
    # Decimals go back out as the floats they were read from (the map's own shortest reprs).
    path.write_text(json.dumps(data, default=float))
    return path


def versions(engine: sa.Engine) -> list[tuple[str, str, int]]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.select(
            model_prices.c.provider, model_prices.c.model, model_prices.c.version)).all())


def imported(engine: sa.Engine, family: str) -> list[Price]:
    return [p for p in price_history(engine) if in_family(p.source, family)]


# --- the real sources, exactly ----------------------------------------------------------------

def test_the_whole_litellm_map_imports_with_every_rate_exact(engine: sa.Engine) -> None:
    plan = plan_import(engine, "litellm", at=NOW)
    assert plan.refusals == [] and plan.format == LITELLM
    assert plan.source.startswith("litellm ") and not plan.detected
    written = apply_plan(engine, plan)
    assert written == len(plan.added) > 700
    expected: dict[tuple[str, str], dict[str, Any]] = {}
    for key, spec in litellm_map().items():  # the first entry read for a row is the one kept
        target = ours(LITELLM, spec.get("litellm_provider"), key)
        if target is not None and (spec.get("mode") or "chat") in litellm.READ_MODES:
            expected.setdefault((target.provider, key.removeprefix(target.route)), spec)
    rows = imported(engine, LITELLM)
    assert len(rows) == written
    checked = 0
    for row in rows:
        spec = expected[(row.provider, row.model)]
        assert row.effective_from == NOW
        for theirs, field in LITELLM_FIELDS.items():
            if theirs in spec:
                assert getattr(row, field) == D(spec[theirs]).scaleb(6), (row.label, field)
                checked += 1
        tiers = {t.above_input_tokens: t for t in row.tiers}
        for theirs, value in spec.items():
            match = re.fullmatch(r"(.+)_above_(\d+)k_tokens", theirs)
            if match and match[1] in LITELLM_FIELDS:
                tier = tiers[int(match[2]) * 1000]
                assert getattr(tier, LITELLM_FIELDS[match[1]]) == D(value).scaleb(6), row.label
                checked += 1
        search = spec.get("search_context_cost_per_query") or {}
        if "search_context_size_medium" in search:
            assert row.web_search_per_1k == D(search["search_context_size_medium"]).scaleb(3)
            checked += 1
    assert checked > 3000
    gpt4o = next(r for r in rows if (r.provider, r.model) == ("openai", "gpt-4o"))
    assert str(gpt4o.input.normalize()) == "2.5"  # 2.5e-06 per token, never 2.4999999999999996


def test_genai_prices_data_imports_with_every_rate_and_date_exact(engine: sa.Engine) -> None:
    import genai_prices.data as source

    plan = plan_import(engine, "genai-prices")
    # The only suspicious figures in the real data are cache reads above input (a router's
    # alias); the guard names them, and forcing imports them as published.
    assert all(r.reason == "cache-read rates above the input rate" for r in plan.refusals)
    written = apply_plan(engine, plan, force=True)
    assert written == len(plan.added) > 1000
    expected: dict[tuple[str, str, datetime], Any] = {}
    for provider in source.providers:
        for model in provider.models:
            target = ours(GENAI_PRICES, provider.id, model.id)
            if target is None:
                continue
            versions_ = [(None, model.prices)] if not isinstance(model.prices, list) else [
                (c.constraint, c.prices) for c in model.prices]
            for constraint, prices in versions_:
                start = getattr(constraint, "start_date", None)
                at = EPOCH if start is None else datetime(start.year, start.month, start.day,
                                                          tzinfo=UTC)
                expected[(target.provider, model.id, at)] = prices
    rows = imported(engine, GENAI_PRICES)
    assert len(rows) == written
    assert any(r.effective_from > datetime.now(UTC) for r in rows)  # a scheduled change
    checked = 0
    for row in rows:
        prices = expected[(row.provider, row.model, row.effective_from)]
        tiers = {t.above_input_tokens: t for t in row.tiers}
        for theirs, field in GENAI_FIELDS.items():
            value = getattr(prices, theirs, None)
            if value is None:
                continue
            if isinstance(value, Decimal):
                assert getattr(row, field) == value, (row.label, field)
            else:
                assert getattr(row, field) == value.base, (row.label, field)
                for step in value.tiers:
                    assert getattr(tiers[step.start], field) == step.price, (row.label, field)
            checked += 1
    assert checked > 3000


def test_a_model_only_the_sources_know_is_priced_in_the_next_record(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'ledger.db'}", statsd_enabled=False,
                        spool_dir=str(tmp_path / "spool"))
    tracker = CostTracker(settings)
    try:
        before = [CostRecord(p, "chat", m, USAGE) for p, m in (NEW_CLAUDE, NEW_GPT)]
        for record in before:
            tracker.record(record)
        assert tracker.flush(10)
        engine = tracker.engine
        plan = plan_import(engine, "litellm", max_change=1)
        # The running tracker hears of each change as another process would through Redis.
        apply_plan(engine, plan, on_change=tracker.price_book.invalidate)
        after = [CostRecord(p, "chat", m, USAGE) for p, m in (NEW_CLAUDE, NEW_GPT)]
        for record in after:
            tracker.record(record)
        assert tracker.flush(10)
        for old, new in zip(before, after, strict=True):
            # The worker prices each record in place, then stores it.
            row = show_price(engine, new.provider, new.model or "")[-1]
            assert old.cost_usd is None
            assert (new.cost_usd, new.price_version) == (row.cost(USAGE), row.version)
            assert row.cost(USAGE) > 0
    finally:
        tracker.close()


CHILD = textwrap.dedent("""
    import sys, time
    from cost_middleware import CostRecord, Settings
    from cost_middleware.engine.tracker import CostTracker
    from cost_middleware.usage.model import Usage

    url, redis_url, spool, provider, model = sys.argv[1:6]
    tracker = CostTracker(Settings(database_url=url, redis_url=redis_url, spool_dir=spool,
                                   statsd_enabled=False))
    usage = Usage(input_tokens=12_000, output_tokens=800, cached_input_tokens=4_000)
    before = CostRecord(provider, "chat", model, usage)
    tracker.record(before)
    tracker.flush(10)
    print("unpriced", before.cost_usd is None, flush=True)
    sys.stdin.readline()
    start = time.monotonic()
    while tracker.price_book.lookup(provider, model) is None and time.monotonic() - start < 10:
        time.sleep(0.001)
    seen = time.monotonic() - start
    after = CostRecord(provider, "chat", model, usage)
    tracker.record(after)
    tracker.close()
    print(seen, after.cost_usd, after.price_version, flush=True)
""")


def test_an_import_reaches_another_process_through_redis(tmp_path: Path,
                                                         redis_server: RedisServer) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    engine = open_ledger(Settings(database_url=url))
    provider, model = NEW_CLAUDE
    client = redis.Redis.from_url(redis_server.url)
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, url, redis_server.url, str(tmp_path / "spool"), provider,
         model], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None and child.stdin is not None
            assert child.stdout.readline().split() == ["unpriced", "True"]
            plan = plan_import(engine, "litellm", max_change=1)
            apply_plan(engine, plan, on_change=partial(notify_change, client))
            child.stdin.write("go\n")
            child.stdin.flush()
            seen, cost, version = child.stdout.readline().split()
            assert child.wait(30) == 0
        finally:
            client.close()
            if child.poll() is None:
                child.kill()
    print(f"\nthe other process priced the model {float(seen) * 1000:.1f} ms after the import")
    assert float(seen) < 1.0  # notifications, not the cache TTL
    row = show_price(engine, *NEW_CLAUDE)[-1]
    assert (Decimal(cost), int(version)) == (row.cost(USAGE), row.version)
    engine.dispose()


# --- guards -----------------------------------------------------------------------------------

def test_a_truncated_map_is_refused(engine: sa.Engine, tmp_path: Path) -> None:
    apply_plan(engine, plan_import(engine, "litellm", at=NOW))
    before = versions(engine)
    data = litellm_map()
    path = write_map(tmp_path / "truncated.json",
                     {k: v for i, (k, v) in enumerate(data.items()) if i % 10 == 0})
    plan = plan_import(engine, path)
    assert plan.detected and plan.source == "litellm truncated.json"
    assert len(plan.dropped) > 0.8 * len(before)
    [refusal] = plan.refusals
    assert f"drop {len(plan.dropped)} of the {len(before)} priced models" in refusal.reason
    assert f"{plan.dropped[0].label}: no longer in the source" in refusal.rows
    with pytest.raises(ImportRefused, match="would change 0 and drop"):
        apply_plan(engine, plan)
    assert versions(engine) == before
    assert apply_plan(engine, plan, force=True) == 0  # nothing new; the dropped rows are kept
    assert versions(engine) == before


def test_a_corrupted_map_is_refused_with_each_row_and_why(engine: sa.Engine,
                                                           tmp_path: Path) -> None:
    data = litellm_map()
    data["gpt-4o"]["input_cost_per_token"] = D("-0.0000025")
    data["gpt-4o-mini"]["output_cost_per_token"] = "lots"
    data["gpt-4.1"]["input_cost_per_token"] = D("0.02")  # $20,000 per 1M tokens
    data["o3"]["cache_read_input_token_cost"] = D("0.00005")  # above its input rate
    plan = plan_import(engine, write_map(tmp_path / "corrupt.json", data))
    reasons = {r.reason: r.rows for r in plan.refusals}
    assert sorted(reasons) == ["cache-read rates above the input rate",
                               "rates above 10,000 USD per 1M tokens",
                               "the source has corrupt entries"]
    corrupt = reasons["the source has corrupt entries"]
    assert "gpt-4o: input_cost_per_token must be a non-negative number, not -0.0000025" in corrupt
    assert "gpt-4o-mini: output_cost_per_token is not a number: 'lots'" in corrupt
    assert reasons["rates above 10,000 USD per 1M tokens"] == ("openai/gpt-4.1: input 20000",)
    assert reasons["cache-read rates above the input rate"] == (
        "openai/o3: cached_input 50 > input 2",)
    with pytest.raises(ImportRefused):
        apply_plan(engine, plan)
    assert versions(engine) == []
    assert apply_plan(engine, plan, force=True) == len(plan.added)
    assert show_price(engine, "openai", "gpt-4o") == []  # a corrupt entry is never written
    assert show_price(engine, "openai", "gpt-4.1")[0].input == D(20000)


def test_guard_threshold_counts_changed_models(engine: sa.Engine, tmp_path: Path) -> None:
    entries = [{"provider": "openai", "model": f"m{i}", "input": "1", "output": "2"}
               for i in range(10)]
    load_catalog(engine, {"prices": entries})
    changed = [dict(e, input="1.5", effective_from="2026-01-01") for e in entries[:3]]
    path = tmp_path / "ours.json"
    path.write_text(json.dumps({"prices": changed}))
    assert plan_import(engine, path, max_change=0.3).refusals == []
    [refusal] = plan_import(engine, path, max_change=0.2).refusals
    assert "change 3 and drop 0 of the 10 priced models (30%, more than 20%)" in refusal.reason
    assert refusal.rows == ("openai/m0: changed", "openai/m1: changed", "openai/m2: changed")


# --- dated rows: never older over newer --------------------------------------------------------

def test_an_older_row_never_wins(engine: sa.Engine, tmp_path: Path) -> None:
    june = datetime(2026, 6, 1, tzinfo=UTC)
    set_price(engine, "openai", "acme-1", input="1", output="2", effective_from=june)
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"prices": [
        {"provider": "openai", "model": "acme-1", "input": "0.5", "output": "1",
         "effective_from": "2026-01-01"},
        {"provider": "openai", "model": "acme-1", "input": "1", "output": "2",
         "effective_from": "2026-06-01"},
        {"provider": "openai", "model": "acme-1", "input": "1.5", "output": "2",
         "effective_from": "2026-09-01"},
        {"provider": "openai", "model": "acme-2", "input": "3", "output": "4"},
    ]}))
    plan = plan_import(engine, path, max_change=1)
    assert plan.format == "catalog" and plan.source == "catalog.json"
    [older] = plan.skipped
    assert older.reason == "older than the newest row"
    assert older.detail == "2026-01-01 < 2026-06-01 (no source)"
    assert [p.label for p in plan.unchanged] == ["openai/acme-1"]
    assert [(c.old.input, c.new.input) for c in plan.changed] == [(D(1), D("1.5"))]
    assert [p.label for p in plan.added] == ["openai/acme-2"]
    assert apply_plan(engine, plan) == 2
    history = show_price(engine, "openai", "acme-1")
    assert [(p.effective_from.month, p.input, p.source) for p in history] == [
        (6, D(1), None), (9, D("1.5"), "catalog.json")]


def test_a_row_written_after_planning_is_not_overtaken(engine: sa.Engine, tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"prices": [{"provider": "openai", "model": "acme-3", "input": "1",
                                            "output": "2", "effective_from": "2026-03-01"}]}))
    plan = plan_import(engine, path)
    assert len(plan.added) == 1
    set_price(engine, "openai", "acme-3", input="5", output="6",
              effective_from=datetime(2026, 4, 1, tzinfo=UTC))
    assert apply_plan(engine, plan) == 0
    assert [p.input for p in show_price(engine, "openai", "acme-3")] == [D(5)]


def test_genai_prices_rows_older_than_a_litellm_import_are_skipped(engine: sa.Engine) -> None:
    apply_plan(engine, plan_import(engine, "litellm", at=NOW))
    litellm_row = show_price(engine, *NEW_CLAUDE)[-1]
    plan = plan_import(engine, "genai-prices", max_change=1)
    skips = [s for s in plan.skipped if s.key == NEW_CLAUDE]
    assert skips and all(s.reason == "older than the newest row" for s in skips)
    apply_plan(engine, plan, force=True)
    assert show_price(engine, *NEW_CLAUDE)[-1] == litellm_row


# --- the converters on small inputs -----------------------------------------------------------

def test_litellm_entries_map_to_our_fields_names_and_reasons() -> None:
    data = json.loads(json.dumps({
        "sample_spec": {"litellm_provider": "one of …", "mode": "one of …"},
        "gpt-x": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 2.5e-06,
                  "output_cost_per_token": 1e-05, "cache_read_input_token_cost": 1.25e-06,
                  "input_cost_per_token_above_272k_tokens": 5e-06,
                  "output_cost_per_token_above_272k_tokens": 1.5e-05,
                  "input_cost_per_token_priority": 5e-06,
                  "search_context_cost_per_query": {"search_context_size_low": 0.03,
                                                    "search_context_size_medium": 0.035}},
        "claude-x": {"litellm_provider": "anthropic", "mode": "chat",
                     "input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05,
                     "cache_creation_input_token_cost": 3.75e-06,
                     "cache_creation_input_token_cost_above_1hr": 6e-06},
        "azure/gpt-x": {"litellm_provider": "azure", "input_cost_per_token": 2.75e-06,
                        "output_cost_per_token": 1.1e-05},
        "azure/eu/gpt-x": {"litellm_provider": "azure", "input_cost_per_token": 2.75e-06,
                           "output_cost_per_token": 1.1e-05},
        "us.anthropic.claude-x-v1:0": {"litellm_provider": "bedrock_converse", "mode": "chat",
                                       "input_cost_per_token": 3.3e-06,
                                       "output_cost_per_token": 1.65e-05},
        "text-embedding-x": {"litellm_provider": "openai", "mode": "embedding",
                             "input_cost_per_token": 2e-08},
        "dall-e-x": {"litellm_provider": "openai", "mode": "image_generation",
                     "output_cost_per_image": 0.04},
        "tts-x": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_character": 1e-6},
        "fireworks_ai/x": {"litellm_provider": "fireworks_ai", "input_cost_per_token": 1e-07,
                           "output_cost_per_token": 1e-07},
    }), parse_float=Decimal)
    result = litellm.convert(data, "litellm test", NOW)
    rows = {name: price for name, price in result.entries}
    gpt = rows["gpt-x"]
    assert (gpt.provider, gpt.input, gpt.output, gpt.cached_input) == (
        "openai", D("2.5"), D(10), D("1.25"))
    assert [(t.above_input_tokens, t.input, t.output, t.cached_input) for t in gpt.tiers] == [
        (272_000, D(5), D(15), None)]
    assert gpt.web_search_per_1k == D(35) and gpt.source == "litellm test"
    claude = rows["claude-x"]
    assert (claude.cache_write, claude.cache_write_1h) == (D("3.75"), D(6))
    assert (rows["azure/gpt-x"].provider, rows["azure/gpt-x"].model) == ("azure_openai", "gpt-x")
    bedrock = rows["us.anthropic.claude-x-v1:0"]
    assert (bedrock.provider, bedrock.input) == ("aws_bedrock", D("3.3"))
    embedding = rows["text-embedding-x"]
    assert (embedding.input, embedding.output) == (D("0.02"), D(0))
    assert {s.name: (s.reason, s.detail) for s in result.skipped} == {
        "sample_spec": ("LiteLLM's sample entry", ""),
        "azure/eu/gpt-x": ("regional or routed name", "eu"),
        "dall-e-x": ("mode not read by us", "image_generation"),
        "tts-x": ("no per-token input rate", ""),
        "fireworks_ai/x": ("provider not priced by us", "fireworks_ai"),
    }
    # Floats given directly are read through their shortest repr too.
    [(_, direct)] = litellm.convert({"m": {"litellm_provider": "openai",
                                           "input_cost_per_token": 2.5e-06,
                                           "output_cost_per_token": 1e-05}}, "s", NOW).entries
    assert direct.input == D("2.5")


def test_genai_prices_tiers_dates_and_skips() -> None:
    data = json.loads(json.dumps([
        {"id": "google", "models": [
            {"id": "gemini-x", "prices": [
                {"prices": {"input_mtok": {"base": 1.25, "tiers": [{"start": 200000,
                                                                     "price": 2.5}]},
                            "output_mtok": {"base": 10, "tiers": [{"start": 200000,
                                                                   "price": 15}]},
                            "cache_read_mtok": 0.125, "web_searches_kcount": 35,
                            "input_audio_mtok": 1}},
                {"constraint": {"start_date": "2027-01-01"},
                 "prices": {"input_mtok": 2, "output_mtok": 12}},
            ]},
            {"id": "claude-x", "prices": {"input_mtok": 3, "output_mtok": 15}},
            {"id": "multi", "prices": {
                "input_mtok": {"base": 1, "tiers": [{"start": 128000, "price": 3},
                                                    {"start": 32000, "price": 2}]},
                "output_mtok": {"base": 4, "tiers": [{"start": 128000, "price": 8}]}}},
            {"id": "embed-x", "prices": {"input_mtok": 0.15}},
        ]},
        {"id": "deepseek", "models": [{"id": "deepseek-x", "prices": [
            {"prices": {"input_mtok": 0.135, "output_mtok": 0.55}},
            {"constraint": {"start_time": "00:30:00Z", "end_time": "16:30:00Z"},
             "prices": {"input_mtok": 0.27, "output_mtok": 1.1}}]}]},
        {"id": "novita", "models": [{"id": "n", "prices": {"input_mtok": 1, "output_mtok": 1}}]},
    ]), parse_float=Decimal)
    result = genai_prices.convert(data, "genai-prices test", NOW)
    rows = [(p.provider, p.model, p.effective_from.year) for _, p in result.entries]
    assert rows == [("google", "gemini-x", 1970), ("google", "gemini-x", 2027),
                    ("vertex_anthropic", "claude-x", 1970), ("google", "multi", 1970)]
    gemini, later, _, multi = (p for _, p in result.entries)
    assert (gemini.input, gemini.output, gemini.cached_input, gemini.web_search_per_1k) == (
        D("1.25"), D(10), D("0.125"), D(35))
    assert [(t.above_input_tokens, t.input, t.output) for t in gemini.tiers] == [
        (200_000, D("2.5"), D(15))]
    assert (later.input, later.output, later.tiers) == (D(2), D(12), ())
    assert [(t.above_input_tokens, t.input, t.output) for t in multi.tiers] == [
        (32_000, D(2), D(4)), (128_000, D(3), D(8))]
    assert {s.name: s.reason for s in result.skipped} == {
        "google/embed-x": "no per-token output rate",
        "deepseek/deepseek-x": "time-of-day prices",
        "novita/n": "provider not priced by us"}


def test_their_providers_map_to_provider_names_of_ours() -> None:
    assert {target.provider for target in MAPPING.values()} <= matching.PROVIDERS
    assert {target.provider for target in MAPPING.values()} >= SLASHED_MODELS


def test_formats_are_detected_from_the_content() -> None:
    assert detect({"prices": []}) == "catalog"
    assert detect({"gpt-4o": {"litellm_provider": "openai"}}) == LITELLM
    assert detect({"sample_spec": {}}) == LITELLM
    assert detect([{"id": "openai", "models": []}]) == GENAI_PRICES
    assert detect({"a": 1}) is None and detect([]) is None and detect("x") is None


# --- the command ------------------------------------------------------------------------------

@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[sa.Engine]:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("COST_MIDDLEWARE_DATABASE_URL", url)
    monkeypatch.setenv("COST_MIDDLEWARE_STATSD", "off")
    monkeypatch.chdir(tmp_path)
    engine = open_ledger(Settings(database_url=url))
    yield engine
    engine.dispose()


def test_cli_imports_then_finds_nothing_new(cli_env: sa.Engine,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prices", "import", "litellm", "--max-change", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"Source: litellm \S+ \(format litellm\)\n", out)
    assert re.search(r"\d+ added, \d+ changed, \d+ unchanged, [\d,]+ skipped", out)
    assert "provider not priced by us: fireworks_ai" in out
    written = re.search(r"([\d,]+) price rows written", out)
    assert written and int(written[1].replace(",", "")) > 700
    assert main(["prices", "import", "litellm"]) == 0
    assert "0 price rows written." in capsys.readouterr().out
    assert main(["prices", "show", *NEW_CLAUDE]) == 0


def test_cli_dry_run_writes_nothing_and_json_lists_every_row(
        cli_env: sa.Engine, capsys: pytest.CaptureFixture[str]) -> None:
    before = versions(cli_env)
    assert main(["prices", "import", "litellm", "--dry-run", "--max-change", "1"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("Dry run: nothing written.")
    assert main(["prices", "import", "genai-prices", "--dry-run", "--json", "--force"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dry_run"] is True and report["written"] == 0
    assert report["counts"]["added"] == len(report["added"]) > 1000
    assert {s["reason"] for s in report["skipped"]} >= {"provider not priced by us"}
    assert versions(cli_env) == before


def test_cli_refusals_exit_1_and_say_which_rows(cli_env: sa.Engine, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prices", "import", "litellm", "--max-change", "1"]) == 0
    capsys.readouterr()
    data = litellm_map()
    path = write_map(tmp_path / "short.json", {k: data[k] for k in list(data)[:300]})
    before = versions(cli_env)
    for extra in ([], ["--dry-run"]):
        assert main(["prices", "import", str(path), *extra]) == 1
        captured = capsys.readouterr()
        assert "format litellm, detected from the content" in captured.out
        assert re.search(r"Refused: it would change \d+ and drop \d+ of the", captured.out)
        assert ": no longer in the source" in captured.out
        assert "import refused by 1 guard(s)" in captured.err
    assert versions(cli_env) == before
    assert main(["prices", "import", str(path), "--force"]) == 0


def test_cli_input_errors_are_one_line_exit_2(cli_env: sa.Engine, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "odd.json").write_text('{"hello": 1}')
    (tmp_path / "bad.json").write_text("{not json")
    cases = {"missing.json": "error: cannot read missing.json: No such file or directory",
             "odd.json": "error: cannot tell the format of odd.json: it is not our catalog",
             "bad.json": "error: bad.json is not valid JSON (Expecting property name",
             "litellm --format genai-prices": f"error: litellm {version('litellm')} is not "
                                              "genai-prices data (it looks like litellm)"}
    for source, message in cases.items():
        assert main(["prices", "import", *source.split()]) == 2
        # The first line names the ledger the command reads; then one message, no traceback.
        lines = capsys.readouterr().err.splitlines()
        err = "\n".join(line for line in lines if not line.startswith("ledger: "))
        assert err.startswith(message) and len(err.splitlines()) == 1
        assert "Traceback" not in err
    for bad in (["--format", "yaml"], ["--max-change", "1.5"]):
        with pytest.raises(SystemExit) as exited:
            main(["prices", "import", "litellm", *bad])
        assert exited.value.code == 2


def test_cli_reads_stdin(cli_env: sa.Engine, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    catalog = {"prices": [{"provider": "acme", "model": "acme-llm-7b", "input": "0.2",
                           "output": "0.6"}]}
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(json.dumps(catalog).encode())))
    assert main(["prices", "import", "-"]) == 0
    assert "Source: stdin (format catalog, detected from the content)" in capsys.readouterr().out
    [row] = show_price(cli_env, "acme", "acme-llm-7b")
    assert (row.input, row.source) == (D("0.2"), "stdin")
