"""The cost and token counters the writer sends per batch add up to the ledger exactly."""

from __future__ import annotations

import math
from collections import Counter
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cost_middleware import CostRecord, Settings
from cost_middleware.engine.tracker import CostTracker
from cost_middleware.usage.model import Usage

# Names that sanitize alike ("gpt-4o" and "gpt 4o" both become "gpt-4o"), a missing model,
# and a hostile one: the counters are per label, not per raw name.
MODELS = ["gpt-4o", "gpt 4o", "claude-sonnet-4-5", None, "a:1|c\nb"]
counts = st.integers(min_value=0, max_value=10**9)
usages = st.one_of(st.none(), st.builds(
    Usage, input_tokens=counts, output_tokens=counts, cached_input_tokens=counts,
    cache_write_input_tokens=counts, reasoning_tokens=st.one_of(st.none(), counts)))
# Exact to 1e-12 USD, as priced: most carry a fraction of a micro-dollar.
costs = st.one_of(st.none(), st.integers(min_value=0, max_value=10**15).map(
    lambda units: Decimal(units).scaleb(-12)))
records = st.builds(CostRecord, provider=st.sampled_from(["openai", "anthropic"]),
                    api=st.just("chat"), model=st.sampled_from(MODELS), usage=usages,
                    cost_usd=costs)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(records, max_size=60), cut=st.integers(min_value=0, max_value=60))
# Two batches whose fractions of a micro-dollar only make a whole one together.
@example(batch=[CostRecord("openai", "chat", "gpt-4o", None, cost_usd=Decimal("0.0000007"))] * 2,
         cut=1)
def test_counters_add_up_to_the_ledger(batch: list[CostRecord], cut: int, tmp_path: Path) -> None:
    cut %= len(batch) + 1
    tracker = CostTracker(Settings(statsd_enabled=True, database_url=f"sqlite:///{tmp_path}/x.db"))
    metrics = tracker.metrics
    try:
        # Two batches: the micro-dollar fractions the first leaves are carried to the second.
        tracker._count_totals(batch[:cut])
        tracker._count_totals(batch[cut:])
        sent = metrics.snapshot()["counters"]
        cost: dict[str, Decimal] = {}
        tokens: Counter[str] = Counter()
        for r in batch:
            key = f"{metrics.label('provider', r.provider)}.{metrics.label('model', r.model)}"
            if r.cost_usd is not None:
                cost[key] = cost.get(key, Decimal(0)) + r.cost_usd
            if r.usage is not None:
                for kind, value in (("input", r.usage.input_tokens),
                                    ("cached_input", r.usage.cached_input_tokens),
                                    ("cache_write_input", r.usage.cache_write_input_tokens),
                                    ("output", r.usage.output_tokens),
                                    ("reasoning", r.usage.reasoning_tokens or 0)):
                    tokens[f"tokens.{kind}.{key}"] += value
        micro = {f"cost.{k}": math.floor(usd * 1_000_000) for k, usd in cost.items()}
        assert {k: v for k, v in sent.items() if k.startswith("cost.")} == {
            k: v for k, v in micro.items() if v}
        assert {k: v for k, v in sent.items() if k.startswith("tokens.")} == {
            k: v for k, v in tokens.items() if v}
    finally:
        tracker.close()
        metrics.close()
