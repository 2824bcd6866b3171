"""``record_usage``: attribution inside a request (through the real ASGI adapter), outside one,
and what bad arguments cost."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from cost_middleware import CostMiddleware, CostRecord, Settings, Usage, record_usage
from cost_middleware import context as context_module
from cost_middleware._types import Receive, Scope, Send
from cost_middleware.engine.tracker import CostTracker
from cost_middleware.schema import cost_records

#: gpt-4o at the bundled list price: 86 base input x 2.50 + 1920 cached x 1.25 + 300 x 10.00.
USAGE = Usage(input_tokens=2006, cached_input_tokens=1920, output_tokens=300)
USAGE_COST = Decimal("0.005615")


def settings(tmp: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "statsd_host": "127.0.0.1", "statsd_port": 9,  # counters aggregate; sends go nowhere
        "database_url": f"sqlite:///{tmp / 'cost.db'}", "spool_dir": str(tmp / "spool"),
    }
    values.update(overrides)
    return Settings(**values)


class Collected:
    """A real tracker whose records are collected instead of queued."""

    def __init__(self, tmp: Path, **overrides: Any) -> None:
        self.tracker = CostTracker(settings(tmp, **overrides))
        self.records: list[CostRecord] = []
        self.tracker.record = self.records.append  # type: ignore[method-assign, assignment]

    @property
    def counters(self) -> dict[str, float]:
        return self.tracker.metrics.snapshot()["counters"]


@pytest.fixture
def collected(tmp_path: Path) -> Iterator[Collected]:
    c = Collected(tmp_path)
    yield c
    c.tracker.close()


@pytest.fixture
def fresh_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """The no-request warning is once per process: make this test's call the first."""
    monkeypatch.setattr(context_module, "_warned_no_request", False)


class RecordingApp:
    """A raw ASGI app (not a provider route) that calls ``record_usage`` while it answers."""

    def __init__(self, usage: Usage | None = USAGE, **kwargs: Any) -> None:
        self.usage = usage
        self.kwargs = {"provider": "openai", "model": "gpt-4o-2024-08-06",
                       "api": "chat_completions", **kwargs}
        self.returned: list[CostRecord | None] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await asyncio.sleep(0)  # let concurrent requests interleave
        self.returned.append(record_usage(self.usage, **self.kwargs))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


async def post(app: Any, path: str, headers: dict[str, str]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post(path, headers=headers, content=b"{}")


# -- inside a request ----------------------------------------------------------------------


def test_inside_a_request_the_record_carries_its_attribution(collected: Collected) -> None:
    app = RecordingApp()
    mw = CostMiddleware(app, tracker=collected.tracker)
    response = asyncio.run(post(mw, "/summarize/42?x=1",
                                {"x-tenant-id": "acme", "x-request-id": "req-7"}))
    assert response.status_code == 200 and response.text == "ok"
    [record] = app.returned
    assert record is not None and collected.records == [record]
    assert (record.tenant, record.request_id, record.method, record.route) == (
        "acme", "req-7", "POST", "/summarize/42")
    assert (record.provider, record.model, record.api) == (
        "openai", "gpt-4o-2024-08-06", "chat_completions")
    assert record.usage == USAGE and record.streamed is False and record.partial is False
    assert record.cost_usd is None  # priced by the worker


def test_a_request_without_headers_gets_a_generated_request_id(collected: Collected) -> None:
    app = RecordingApp()
    asyncio.run(post(CostMiddleware(app, tracker=collected.tracker), "/a", {}))
    [record] = app.returned
    assert record is not None and record.tenant is None
    assert record.request_id is not None and len(record.request_id) == 32
    int(record.request_id, 16)


def test_the_configured_attribution_headers_are_read(tmp_path: Path) -> None:
    c = Collected(tmp_path, tenant_header="X-Org", request_id_header="X-Trace")
    try:
        app = RecordingApp()
        asyncio.run(post(CostMiddleware(app, tracker=c.tracker), "/a",
                         {"x-org": "globex", "x-tenant-id": "acme", "x-trace": "t-1"}))
        [record] = app.returned
        assert record is not None and (record.tenant, record.request_id) == ("globex", "t-1")
    finally:
        c.tracker.close()


def test_attribution_values_are_capped(collected: Collected) -> None:
    app = RecordingApp()
    asyncio.run(post(CostMiddleware(app, tracker=collected.tracker), "/r" + "o" * 600,
                     {"x-tenant-id": "t" * 300, "x-request-id": "i" * 200}))
    [record] = app.returned
    assert record is not None
    assert record.tenant == "t" * 256 and record.request_id == "i" * 128
    assert record.route is not None and len(record.route) == 512


def test_concurrent_requests_keep_their_own_attribution(collected: Collected) -> None:
    app = RecordingApp()
    mw = CostMiddleware(app, tracker=collected.tracker)

    async def many() -> None:
        await asyncio.gather(*(post(mw, f"/r/{i}", {"x-tenant-id": f"t{i}"})
                               for i in range(20)))

    asyncio.run(many())
    assert len(collected.records) == 20
    assert {(r.tenant, r.route) for r in collected.records} == {
        (f"t{i}", f"/r/{i}") for i in range(20)}


def test_an_explicit_tracker_inside_a_request_keeps_the_request_attribution(
        collected: Collected, tmp_path: Path) -> None:
    other = Collected(tmp_path / "other")
    try:
        app = RecordingApp(tracker=other.tracker)
        asyncio.run(post(CostMiddleware(app, tracker=collected.tracker), "/a",
                         {"x-tenant-id": "acme"}))
        assert collected.records == []
        [record] = other.records
        assert record.tenant == "acme" and record.route == "/a"
    finally:
        other.tracker.close()


def test_inside_a_request_the_record_is_priced_and_stored(tmp_path: Path) -> None:
    mw = CostMiddleware(RecordingApp(), settings(tmp_path, statsd_enabled=False))
    asyncio.run(post(mw, "/summarize", {"x-tenant-id": "acme", "x-request-id": "req-9"}))
    mw.tracker.close()  # flushes the queue, as the server's shutdown would
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'cost.db'}")
    try:
        with engine.connect() as conn:
            [row] = conn.execute(sa.select(cost_records)).mappings().all()
    finally:
        engine.dispose()
    assert (row["tenant"], row["request_id"], row["route"], row["method"]) == (
        "acme", "req-9", "/summarize", "POST")
    assert (row["provider"], row["model"], row["api"]) == (
        "openai", "gpt-4o-2024-08-06", "chat_completions")
    assert (row["input_tokens"], row["cached_input_tokens"], row["output_tokens"]) == (
        2006, 1920, 300)
    assert row["cost_usd"] == USAGE_COST and row["price_version"] is not None


def test_a_disabled_middleware_records_nothing(tmp_path: Path) -> None:
    c = Collected(tmp_path, enabled=False)
    try:
        app = RecordingApp()
        response = asyncio.run(post(CostMiddleware(app, tracker=c.tracker), "/a", {}))
        assert response.status_code == 200
        # Disabled, the adapter sets no request: the call is one outside any request.
        assert app.returned == [None] and c.records == []
    finally:
        c.tracker.close()


# -- outside a request -----------------------------------------------------------------------


def test_outside_a_request_with_a_tracker_the_record_is_unattributed(
        collected: Collected) -> None:
    record = record_usage(USAGE, provider="anthropic", model="claude-sonnet-4-5",
                          tracker=collected.tracker, streamed=True, partial=True)
    assert record is not None and collected.records == [record]
    assert (record.tenant, record.request_id, record.method, record.route) == (
        None, None, None, None)
    assert (record.provider, record.model, record.api) == ("anthropic", "claude-sonnet-4-5",
                                                           "app")
    assert record.streamed is True and record.partial is True


def test_after_a_request_ended_its_attribution_is_gone(collected: Collected) -> None:
    app = RecordingApp()
    asyncio.run(post(CostMiddleware(app, tracker=collected.tracker), "/a",
                     {"x-tenant-id": "acme"}))
    assert context_module.current_request.get() is None
    record = record_usage(USAGE, provider="openai", model="gpt-4o", tracker=collected.tracker)
    assert record is not None and record.tenant is None and record.route is None


def test_outside_a_request_without_a_tracker_nothing_is_recorded_and_it_warns_once(
        fresh_warning: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="cost_middleware")
    assert record_usage(USAGE, provider="openai", model="gpt-4o") is None
    assert record_usage(USAGE, provider="openai", model="gpt-4o") is None
    assert [r.getMessage() for r in caplog.records] == [
        "cost_middleware: record_usage() called outside a request and without tracker=; "
        "the usage was not recorded"]


# -- bad arguments: never raise (impossible counts: test_record_usage_validation.py) ----------


def test_no_usage_is_kept_as_an_unpriced_record(collected: Collected) -> None:
    record = record_usage(None, provider="openai", model="gpt-4o", tracker=collected.tracker)
    assert record is not None and record.usage is None and collected.records == [record]
    assert collected.counters == {}


@pytest.mark.parametrize("usage", [{"input_tokens": 1, "output_tokens": 2}, 12, "usage"])
def test_usage_of_the_wrong_type_is_an_internal_error_not_an_exception(
        collected: Collected, usage: Any) -> None:
    assert record_usage(usage, provider="openai", model="gpt-4o",
                        tracker=collected.tracker) is None
    assert collected.records == []
    assert collected.counters == {"skipped.internal_error": 1}


def test_names_are_made_text_and_capped(collected: Collected) -> None:
    record = record_usage(USAGE, provider="p" * 100, model="m" * 300, api=42,  # type: ignore[arg-type]
                          tracker=collected.tracker)
    assert record is not None
    assert record.provider == "p" * 64 and record.model == "m" * 256 and record.api == "42"
    record = record_usage(USAGE, provider="openai", model=None, tracker=collected.tracker)
    assert record is not None and record.model is None


def test_a_name_that_cannot_be_made_text_is_an_internal_error(collected: Collected) -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert record_usage(USAGE, provider=Unprintable(), model="m",  # type: ignore[arg-type]
                        tracker=collected.tracker) is None
    assert collected.records == []
    assert collected.counters == {"skipped.internal_error": 1}
