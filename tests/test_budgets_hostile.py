"""Hostile tenant and route names: never part of a Redis key or a metric name, bounded, and
returned escaped in the 429 body; counted exactly in real Redis whatever their bytes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import RedisServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cost_middleware.budgets.counting import Addition, RedisCounters, Window
from cost_middleware.budgets.gate import Blocked
from cost_middleware.budgets.model import MAX_SUBJECT, Budget, window_id
from cost_middleware.metrics import Metrics
from cost_middleware.pricing.redis_keys import SharedClient
from cost_middleware.utc import utcnow

KEY = re.compile(r"^cost_middleware:budget:\{counters\}:[0-9a-f]{20}:[0-9]+$")
names = st.text(min_size=1, max_size=700) | st.binary(min_size=1, max_size=64).map(
    lambda b: b.decode("latin-1"))


@pytest.fixture(scope="module")
def counters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCounters]:
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    shared = SharedClient(server.url)
    try:
        yield RedisCounters(shared)
    finally:
        shared.close()
        server.stop()


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=names, scope=st.sampled_from(["tenant", "route", "model", "provider"]))
def test_any_name_is_counted_exactly_and_never_in_a_key(counters: RedisCounters, value: str,
                                                        scope: str) -> None:
    budget = Budget(scope, "*", "day", Decimal(1))
    counted = budget.value_of(value)
    assert counted is not None and len(counted) <= MAX_SUBJECT
    window = Window(budget.ident, budget.window, window_id("day", utcnow()))
    assert KEY.match(window.key)
    counters.seed(window, {}, force=True)
    [(seeded, [result])] = counters.add([(window, [Addition(counted, 7, 10, None)])])
    assert seeded and result.value == counted and result.total == 7
    assert counters.read(window) == {counted: 7}
    blocked = Blocked(scope, counted, "day", Decimal(1), Decimal("1.5"), None)
    assert json.loads(blocked.body())["error"]["subject"] == counted
    assert all(v.isascii() for _, v in blocked.headers(0.0))


@given(value=names)
def test_a_budget_subject_is_printable_and_bounded_or_refused(value: str) -> None:
    try:
        budget = Budget("tenant", value, "day", Decimal(1))
    except ValueError:
        assert not value.isprintable() or len(value) > MAX_SUBJECT or value == ""
        return
    assert re.fullmatch(r"[0-9a-f]{20}", budget.ident)


@given(values=st.lists(names, min_size=1, max_size=50))
def test_metric_names_from_names_are_sanitized(values: list[str]) -> None:
    from cost_middleware.config import Settings

    metrics = Metrics(Settings(statsd_enabled=True))
    for value in values:
        label = metrics.label("budget", value)
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", label)
