"""``record_usage`` holds hand-built usage to the readers' rules: impossible usage is stored
without usage (so unpriced) and counted as ``skipped.invalid_usage``, never priced."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from cost_middleware import CostRecord, CostTracker, Settings, Usage, record_usage
from cost_middleware.schema import cost_records
from cost_middleware.usage.base import Exchange
from cost_middleware.usage.detect import Detector
from cost_middleware.usage.fields import MAX_TOKENS

VALID = dict(input_tokens=100, output_tokens=20, cached_input_tokens=30,
             cache_write_input_tokens=40, reasoning_tokens=5)
#: Each changes one thing of VALID into something no provider could report.
IMPOSSIBLE: dict[str, dict[str, Any]] = {
    "the issue's example": dict(input_tokens=100, cached_input_tokens=200, output_tokens=-5),
    "negative output": {**VALID, "output_tokens": -5},
    "negative input": {**VALID, "input_tokens": -1, "cached_input_tokens": 0,
                       "cache_write_input_tokens": 0},
    "negative cache read": {**VALID, "cached_input_tokens": -30},
    "negative optional count": {**VALID, "web_search_requests": -2},
    "negative TTL split": {**VALID, "cache_write_1h_input_tokens": -1},
    "cache reads above input": {**VALID, "cached_input_tokens": 61},
    "reasoning above output": {**VALID, "reasoning_tokens": 21},
    "above the sanity bound": {**VALID, "output_tokens": MAX_TOKENS + 1},
    "a float": {**VALID, "output_tokens": 20.0},
    "a bool": {**VALID, "output_tokens": True},
    "a string": {**VALID, "input_tokens": "100"},
    "a missing total": {**VALID, "output_tokens": None},
    "a missing subset": {**VALID, "cached_input_tokens": None},
}
POSSIBLE: dict[str, dict[str, Any]] = {
    "typical": VALID,
    "all zero": dict(input_tokens=0, output_tokens=0),
    "the bound": dict(input_tokens=MAX_TOKENS, output_tokens=MAX_TOKENS,
                      cached_input_tokens=MAX_TOKENS),
    "writes with no TTL split": {**VALID, "cache_write_5m_input_tokens": None,
                                 "cache_write_1h_input_tokens": None},
    "the README's": dict(input_tokens=1200, cached_input_tokens=1024, output_tokens=300),
}


def collecting(tmp: Path) -> tuple[CostTracker, list[CostRecord]]:
    tracker = CostTracker(Settings(database_url=f"sqlite:///{tmp / 'cost.db'}",
                                   spool_dir=str(tmp / "spool")))
    records: list[CostRecord] = []
    tracker.record = records.append  # type: ignore[method-assign]
    return tracker, records


def record(tracker: CostTracker, usage: Usage) -> CostRecord | None:
    return record_usage(usage, provider="openai", model="gpt-4o", api="chat_completions",
                        tracker=tracker)


@pytest.mark.parametrize("values", IMPOSSIBLE.values(), ids=IMPOSSIBLE)
def test_impossible_usage_is_kept_without_usage_and_counted(values: dict[str, Any],
                                                            tmp_path: Path) -> None:
    tracker, records = collecting(tmp_path)
    result = record(tracker, Usage(**values))
    assert result is not None and records == [result]
    assert result.usage is None and (result.provider, result.model) == ("openai", "gpt-4o")
    counters = tracker.metrics.snapshot()["counters"]
    assert counters == {"skipped.invalid_usage": 1}
    tracker.metrics.close()


@pytest.mark.parametrize("values", POSSIBLE.values(), ids=POSSIBLE)
def test_possible_usage_is_kept_as_given(values: dict[str, Any], tmp_path: Path) -> None:
    tracker, records = collecting(tmp_path)
    usage = Usage(**values)
    result = record(tracker, usage)
    assert result is not None and result.usage is usage and records == [result]
    assert tracker.metrics.snapshot()["counters"] == {}
    tracker.metrics.close()


def test_impossible_usage_is_stored_unpriced(tmp_path: Path) -> None:
    tracker = CostTracker(Settings(database_url=f"sqlite:///{tmp_path / 'cost.db'}",
                                   spool_dir=str(tmp_path / "spool"), statsd_enabled=False))
    bad = record(tracker, Usage(**IMPOSSIBLE["the issue's example"]))
    good = record(tracker, Usage(**VALID))
    assert bad is not None and good is not None
    assert tracker.flush(30)
    with tracker.engine.connect() as conn:
        rows = {r.record_id: r for r in conn.execute(sa.select(cost_records))}
    tracker.close()
    assert rows[bad.record_id].input_tokens is None
    assert rows[bad.record_id].output_tokens is None
    assert rows[bad.record_id].cost_usd is None
    assert rows[bad.record_id].model == "gpt-4o"
    assert rows[good.record_id].cost_usd is not None and rows[good.record_id].cost_usd > 0


def test_a_disabled_tracker_records_nothing(tmp_path: Path) -> None:
    tracker, records = collecting(tmp_path)
    off = CostTracker(tracker.settings.with_overrides(enabled=False))
    off.record = records.append  # type: ignore[method-assign]
    assert record(off, Usage(**VALID)) is None and records == []
    tracker.metrics.close()
    off.metrics.close()


DETECTOR = Detector()
COUNT = st.one_of(st.integers(-3, 150), st.just(MAX_TOKENS), st.just(MAX_TOKENS + 1))


@given(prompt=COUNT, completion=COUNT, cached=COUNT, reasoning=COUNT)
def test_the_same_counts_are_refused_by_the_reader_and_by_record_usage(
    prompt: int, completion: int, cached: int, reasoning: int
) -> None:
    """An OpenAI body with these counts and record_usage with the same Usage agree."""
    body = {"id": "c1", "object": "chat.completion", "model": "gpt-4o", "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "prompt_tokens_details": {"cached_tokens": cached},
                      "completion_tokens_details": {"reasoning_tokens": reasoning}}}
    target = DETECTOR.match("POST", "/v1/chat/completions")
    assert target is not None
    reader = target.open(Exchange("POST", "/v1/chat/completions", "", None, 200,
                                  {"content-type": "application/json"}, None))
    assert reader is not None
    reader.feed(json.dumps(body).encode())
    extraction = reader.finish(True)
    assert extraction is not None
    read = extraction.usage

    tracker = CostTracker(Settings(statsd_enabled=False))
    tracker.record = lambda record: None  # type: ignore[method-assign]
    given_usage = Usage(input_tokens=prompt, output_tokens=completion,
                        cached_input_tokens=cached, reasoning_tokens=reasoning)
    result = record(tracker, given_usage)
    assert result is not None
    assert (result.usage is None) == (read is None)
    if read is not None:
        assert (read.input_tokens, read.output_tokens, read.cached_input_tokens,
                read.reasoning_tokens) == (prompt, completion, cached, reasoning)


@pytest.mark.parametrize("values", [IMPOSSIBLE[k] for k in (
    "the issue's example", "negative output", "negative input", "negative cache read",
    "cache reads above input")], ids=str)
def test_records_built_by_hand_with_impossible_usage_are_stored_unpriced(
    values: dict[str, Any], tmp_path: Path
) -> None:
    """``CostTracker.record`` takes records as they are; pricing refuses what no reader would
    pass: the row keeps its counts, costs nothing, and ``price.bad_usage`` counts it."""
    tracker = CostTracker(Settings(database_url=f"sqlite:///{tmp_path / 'cost.db'}",
                                   spool_dir=str(tmp_path / "spool")))
    bad = CostRecord(provider="openai", api="chat_completions", model="gpt-4o",
                     usage=Usage(**values))
    good = CostRecord(provider="openai", api="chat_completions", model="gpt-4o",
                      usage=Usage(**VALID))
    tracker.record(bad)
    tracker.record(good)
    assert tracker.flush(30)
    counters = tracker.metrics.snapshot()["counters"]
    with tracker.engine.connect() as conn:
        rows = {r.record_id: r for r in conn.execute(sa.select(cost_records))}
    tracker.close()
    assert rows[bad.record_id].cost_usd is None and rows[bad.record_id].price_version is None
    assert rows[bad.record_id].input_tokens == values["input_tokens"]
    assert rows[good.record_id].cost_usd is not None and rows[good.record_id].cost_usd > 0
    assert counters.get("price.bad_usage") == 1
