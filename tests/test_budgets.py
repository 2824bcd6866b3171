"""Budgets in one process and across trackers sharing Redis: blocking, the 429, raising,
observe mode, record_usage and the httpx transport, Redis down (open and closed), and
reconciling with the ledger exactly. Real SQLite, PostgreSQL and Redis."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from budget_helpers import CHAT, app, ledger_spend, ledger_usd, post, settings
from budget_helpers import window_key as key_of
from conftest import RedisServer, wait_for

from cost_middleware import BudgetExceeded, CostTracker, Usage, WSGICostMiddleware, record_usage
from cost_middleware.budgets import api
from cost_middleware.budgets.counting import RedisCounters
from cost_middleware.budgets.model import Budget, window_bounds
from cost_middleware.budgets.runtime import current_window
from cost_middleware.context import RequestContext, current_request
from cost_middleware.engine.ledger import open_ledger
from cost_middleware.httpx_transport import CostTransport
from cost_middleware.ops.report import summarize
from cost_middleware.pricing.redis_keys import SharedClient
from cost_middleware.utc import utcnow


def test_windows_are_utc_calendar_windows() -> None:
    at = datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert window_bounds("hour", at) == (datetime(2024, 12, 31, 23, tzinfo=UTC),
                                         datetime(2025, 1, 1, tzinfo=UTC))
    assert window_bounds("month", at) == (datetime(2024, 12, 1, tzinfo=UTC),
                                          datetime(2025, 1, 1, tzinfo=UTC))
    assert window_bounds("total", at) == (None, None)
    for bad in ({"scope": "team"}, {"window": "week"}, {"mode": "warn"},
                {"limit_usd": Decimal(-1)}, {"scope": "all", "subject": "acme"},
                {"alert_at": 1.5}, {"subject": "a\nb"}):
        kwargs = {"scope": "tenant", "subject": "acme", "window": "day",
                  "limit_usd": Decimal(1), **bad}
        with pytest.raises(ValueError):
            Budget(**kwargs)  # type: ignore[arg-type]


def test_a_spent_budget_answers_429_before_the_app_and_report_agrees(
        db_url: str, tmp_path: Path) -> None:
    config = settings(db_url, tmp_path)
    engine = open_ledger(config)
    budget = api.set_budget(engine, config, Budget("tenant", "acme", "day", Decimal("0.002")))
    api.set_budget(engine, config, Budget("tenant", "*", "day", Decimal(5), "observe", 0.5))
    middleware = app(config)
    tracker = middleware.tracker
    try:
        n = 0
        while (reply := post(middleware, "acme", n)).status_code == 200:
            tracker.flush()
            n += 1
            assert n < 100
        assert reply.status_code == 429
        error = reply.json()["error"]
        assert error["type"] == "budget_exceeded"
        assert (error["scope"], error["subject"], error["window"]) == ("tenant", "acme", "day")
        assert Decimal(error["limit_usd"]) == Decimal("0.002")
        assert Decimal(error["spent_usd"]) >= Decimal("0.002")
        _, end = window_bounds("day", utcnow())
        assert end is not None
        assert 0 < int(reply.headers["retry-after"]) <= (end - utcnow()).total_seconds() + 1
        tracker.flush()
        written = summarize(engine, "tenant")
        # The blocked request never reached the app: it is not in the ledger.
        assert {r.key: r.requests for r in written}["acme"] == n
        assert post(middleware, "globex").status_code == 200  # others are never blocked
        tracker.flush()
        # status and report agree with the ledger to the cent (here: to the pico-dollar).
        rows = {(s.subject, s.mode): s for s in api.status(engine)}
        report = {r.key: r.cost_usd for r in summarize(engine, "tenant")}
        assert rows["acme", "block"].spent_usd == report["acme"]
        assert rows["acme", "observe"].spent_usd == report["acme"]
        assert rows["globex", "observe"].spent_usd == report["globex"]
        assert rows["acme", "block"].blocking and not rows["globex", "observe"].blocking
        assert ledger_usd(engine, budget, "acme") == report["acme"]
        # Raising the limit unblocks (without Redis, at the next poll of the table).
        api.set_budget(engine, config, Budget("tenant", "acme", "day", Decimal(10)))
        tracker.budgets._next_poll = 0  # the poll is due now
        tracker.budgets.tick()
        assert post(middleware, "acme").status_code == 200
    finally:
        tracker.close()
        engine.dispose()


def test_observe_budgets_never_block_and_alert_once(db_url: str, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    config = settings(db_url, tmp_path)
    engine = open_ledger(config)
    api.set_budget(engine, config, Budget("all", "*", "hour", Decimal("0.001"), "observe", 0.5))
    middleware = app(config)
    tracker = middleware.tracker
    try:
        tracker.start()
        assert wait_for(lambda: tracker._budgets is not None and tracker.budgets.budgets != [])
        for n in range(6):
            assert post(middleware, "acme", n).status_code == 200
            middleware.tracker.flush()
        lines = [r.getMessage() for r in caplog.records]
        assert sum("crossed its alert threshold" in line for line in lines) == 1
        assert sum("crossed its limit" in line for line in lines) == 1
    finally:
        middleware.tracker.close()
        engine.dispose()


def test_record_usage_and_the_transport_raise_for_a_spent_budget(sqlite_url: str,
                                                                 tmp_path: Path) -> None:
    config = settings(sqlite_url, tmp_path)
    engine = open_ledger(config)
    api.set_budget(engine, config, Budget("provider", "openai", "month", Decimal("0.0001")))
    tracker = CostTracker(config)
    sent: list[httpx.Request] = []

    def provider(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"model": "gpt-4o", "usage": {
            "prompt_tokens": 1000, "completion_tokens": 1000, "total_tokens": 2000}})

    client = httpx.Client(transport=CostTransport(httpx.MockTransport(provider),
                                                  tracker=tracker))
    token = current_request.set(RequestContext(tracker, "POST", "/chat", {}, 0.0))
    try:
        tracker.start()
        assert wait_for(lambda: tracker._budgets is not None and tracker.budgets.budgets != [])
        client.post("https://api.openai.com/v1/chat/completions", json={"model": "gpt-4o"})
        tracker.flush()
        with pytest.raises(BudgetExceeded) as raised:
            client.post("https://api.openai.com/v1/chat/completions", json={"model": "gpt-4o"})
        assert len(sent) == 1  # refused before it was sent
        assert raised.value.scope == "provider" and raised.value.retry_after
        usage = Usage(input_tokens=10, output_tokens=10)
        with pytest.raises(BudgetExceeded):
            record_usage(usage, provider="openai", model="gpt-4o")
        tracker.flush()
        assert len(summarize(engine, "model")) == 1 and summarize(engine, "model")[0].requests == 2
    finally:
        current_request.reset(token)
        client.close()
        tracker.close()
        engine.dispose()


def test_wsgi_answers_429(sqlite_url: str, tmp_path: Path) -> None:
    config = settings(sqlite_url, tmp_path)
    engine = open_ledger(config)
    api.set_budget(engine, config, Budget("route", CHAT, "day", Decimal(0)))
    called: list[str] = []

    def inner(environ: dict[str, object], start_response: Any) -> list[bytes]:
        called.append("app")
        start_response("200 OK", [])
        return [b"{}"]

    middleware = WSGICostMiddleware(inner, config)
    try:
        middleware.tracker.start()
        assert wait_for(lambda: middleware.tracker.budget_gate.check(
            RequestContext(middleware.tracker, "POST", CHAT, {}, 0.0), "openai") is not None)
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": CHAT, "wsgi.version": (1, 0)}
        seen: list[Any] = []
        out = middleware(environ, lambda status, headers: seen.append((status, headers)))
        assert seen[0][0].startswith("429")
        assert json.loads(b"".join(out))["error"]["limit_usd"] == "0"
        assert called == []
        environ["PATH_INFO"] = "/health"
        b"".join(middleware(environ, lambda status, headers: None))
        assert called == ["app"]  # only provider routes are blocked
    finally:
        middleware.close()
        engine.dispose()


def _two_processes(db_url: str, tmp_path: Path, redis_url: str, **extra: object
                   ) -> tuple[CostTracker, CostTracker]:
    a = CostTracker(settings(db_url, tmp_path / "a", redis_url, **extra))
    b = CostTracker(settings(db_url, tmp_path / "b", redis_url, **extra))
    for t in (a, b):
        t.start()
    return a, b


def _blocked(tracker: CostTracker, tenant: str) -> bool:
    context = RequestContext(tracker, "POST", CHAT, {"x-tenant-id": tenant}, 0.0)
    return tracker.budget_gate.check(context, "openai") is not None


def _spend(tracker: CostTracker, tenant: str, usd: str) -> None:
    # A priced record as the pipeline makes one: priced by the book, then written and counted.
    from cost_middleware.records import CostRecord

    record = CostRecord(provider="openai", api="chat", model="gpt-4o", tenant=tenant,
                        route=CHAT, usage=None)
    record.cost_usd = Decimal(usd)
    tracker.batcher._process = None  # keep the given cost: no re-pricing
    tracker.record(record)
    tracker.flush()


def test_processes_share_counters_and_learn_of_spent_and_raised(
        db_url: str, tmp_path: Path, redis_server: RedisServer) -> None:
    config = settings(db_url, tmp_path, redis_server.url)
    engine = open_ledger(config)
    budget = api.set_budget(engine, config, Budget("tenant", "*", "day", Decimal("1.00")))
    a, b = _two_processes(db_url, tmp_path, redis_server.url)
    try:
        assert wait_for(lambda: a.budgets.budgets != [] and b.budgets.budgets != [])
        _spend(a, "acme", "0.60")
        _spend(b, "acme", "0.39")
        assert not _blocked(a, "acme") and not _blocked(b, "acme")
        _spend(b, "acme", "0.01")  # crossed in b: a hears of it
        assert _blocked(b, "acme")
        assert wait_for(lambda: _blocked(a, "acme"))
        assert not _blocked(a, "globex")
        client = redis.Redis.from_url(redis_server.url)
        counted = client.hget(key_of(budget), "v:acme")
        assert counted is not None and int(counted) == ledger_spend(engine, budget)["acme"]
        api.set_budget(engine, config, Budget("tenant", "*", "day", Decimal("2.00")))
        assert wait_for(lambda: not _blocked(a, "acme") and not _blocked(b, "acme"))
        # Every key is a digest and a number: no tenant text in any key.
        assert all(k.startswith(b"cost_middleware:") and b"acme" not in k
                   for k in client.keys("*"))
        client.close()
    finally:
        a.close()
        b.close()
        engine.dispose()


@pytest.mark.parametrize("fail_closed", [False, True])
def test_redis_down_then_back_reconciles_with_the_ledger_exactly(
        db_url: str, tmp_path: Path, redis_server: RedisServer, fail_closed: bool) -> None:
    config = settings(db_url, tmp_path, redis_server.url)
    engine = open_ledger(config)
    budget = api.set_budget(engine, config, Budget("tenant", "*", "day", Decimal("1.00")))
    a, b = _two_processes(db_url, tmp_path, redis_server.url, budgets_fail_closed=fail_closed)
    try:
        assert wait_for(lambda: a.budgets.budgets != [] and b.budgets.budgets != [])
        _spend(a, "acme", "0.50")
        redis_server.stop()
        _spend(a, "acme", "0.30")  # counted locally in a (open), from the ledger's sums
        _spend(b, "initech", "0.10")
        if fail_closed:
            # Every request a block budget covers is refused while spend cannot be known.
            assert wait_for(lambda: _blocked(a, "globex") and _blocked(b, "globex"))
        else:
            assert not _blocked(a, "globex") and not _blocked(b, "acme")
            # b counts from the ledger's sums when it found Redis down (0.50, or 0.80 with a's
            # 0.30), plus its own spend since: over the limit either way. a does not see it.
            _spend(b, "acme", "0.55")
            # (A write that met the other writer's lock waits in the spool, then counts.)
            assert wait_for(lambda: _blocked(b, "acme"))
            assert not _blocked(a, "acme")
        redis_server.start()
        _spend(a, "acme", "0.05")
        assert wait_for(lambda: not a.budgets._down and not b.budgets._down)
        for t in (a, b):
            t.budgets.reconcile()  # the settle pass, now, rather than in a few seconds
        client = redis.Redis.from_url(redis_server.url)
        counted = {k.decode(): int(v) for k, v in client.hgetall(key_of(budget)).items()
                   if k.startswith(b"v:")}
        assert counted == {f"v:{k}": v for k, v in ledger_spend(engine, budget).items()}
        assert wait_for(lambda: not _blocked(a, "globex") and not _blocked(b, "globex"))
        expect_acme = Decimal("1.40") if not fail_closed else Decimal("0.85")
        assert _blocked(a, "acme") == (expect_acme >= 1)
        client.close()
    finally:
        a.close()
        b.close()
        engine.dispose()


def test_reconcile_command_api_restarts_windows(sqlite_url: str, tmp_path: Path,
                                                redis_server: RedisServer) -> None:
    config = settings(sqlite_url, tmp_path, redis_server.url)
    engine = open_ledger(config)
    budget = api.set_budget(engine, config, Budget("all", "*", "month", Decimal(3)))
    tracker = CostTracker(config)
    try:
        tracker.start()
        assert wait_for(lambda: tracker._budgets is not None and tracker.budgets.budgets != [])
        _spend(tracker, "acme", "0.25")
        counters = RedisCounters(SharedClient(redis_server.url))
        window = current_window(budget, utcnow())
        counters.seed(window, {"*": 999}, force=True)  # drift
        [recount] = api.reconcile(engine, config)
        assert recount.before_usd == Decimal("999E-12")
        assert recount.after_usd == Decimal("0.25")
        assert counters.read(window) == {"*": 250_000_000_000}
    finally:
        tracker.close()
        engine.dispose()
