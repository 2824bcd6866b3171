"""OpenTelemetry beside StatsD: GenAI metrics and span attributes through both adapters, with
the official ASGI/WSGI instrumentation wrapped around the app, on the SDK's in-memory reader
and exporter. The cost metric must sum to the ledger."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from flask import Flask, Response
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware as OtelASGI
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware as OtelWSGI
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response as StarletteResponse
from starlette.responses import StreamingResponse
from starlette.routing import Route

from cost_middleware import ConfigError, CostMiddleware, Settings, WSGICostMiddleware
from cost_middleware.engine.otel import _bounded, text
from cost_middleware.engine.tracker import CostTracker
from cost_middleware.metrics import MAX_LABEL_LENGTH, MAX_LABEL_VALUES, Metrics
from cost_middleware.schema import cost_records

# -- the app's own OpenTelemetry set-up (global, once per process, as an app does it) ------

EXPORTER = InMemorySpanExporter()
READER = InMemoryMetricReader(preferred_temporality={Histogram: AggregationTemporality.DELTA})
_tracer_provider = TracerProvider()
_tracer_provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(_tracer_provider)
metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))

# -- provider responses, served locally ----------------------------------------------------

CHAT = orjson.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
              "prompt_tokens_details": {"cached_tokens": 200},
              "completion_tokens_details": {"reasoning_tokens": 50}},
})
MODEL = "claude-sonnet-4-5-20250929"


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


STREAM_HEAD = [
    _sse("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": MODEL, "content": [],
        "usage": {"input_tokens": 100, "cache_creation_input_tokens": 50,
                  "cache_read_input_tokens": 25, "output_tokens": 1}}}),
    _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
    _sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "hello"}}),
]
STREAM_TAIL = [
    _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
    _sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": {"output_tokens": 40}}),
    _sse("message_stop", {"type": "message_stop"}),
]

#: gen_ai.usage.* on the server span, and the token metric's values, per call.
JSON_USAGE = {"gen_ai.usage.input_tokens": 1200, "gen_ai.usage.output_tokens": 300,
              "gen_ai.usage.cache_read.input_tokens": 200,
              "gen_ai.usage.reasoning.output_tokens": 50}
STREAM_USAGE = {"gen_ai.usage.input_tokens": 175, "gen_ai.usage.output_tokens": 40,
                "gen_ai.usage.cache_read.input_tokens": 25,
                "gen_ai.usage.cache_creation.input_tokens": 50}
#: A stream cut after its first events: the last values seen.
CUT_USAGE = {"gen_ai.usage.input_tokens": 175, "gen_ai.usage.output_tokens": 1,
             "gen_ai.usage.cache_read.input_tokens": 25,
             "gen_ai.usage.cache_creation.input_tokens": 50}
JSON_ATTRS = {"gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat",
              "gen_ai.request.model": "gpt-4o-2024-08-06",
              "gen_ai.response.model": "gpt-4o-2024-08-06"}
STREAM_ATTRS = {"gen_ai.provider.name": "anthropic", "gen_ai.operation.name": "chat",
                "gen_ai.request.model": MODEL, "gen_ai.response.model": MODEL}


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "statsd_enabled": False, "database_url": f"sqlite:///{tmp_path / 'cost.db'}",
        "spool_dir": str(tmp_path / "spool"), "otel_enabled": True,
        # The local server stands in for api.openai.com.
        "route_providers": (("/v1/chat/completions", "openai"),)}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(autouse=True)
def _fresh_telemetry() -> Iterator[None]:
    EXPORTER.clear()
    READER.get_metrics_data()  # delta temporality: drop what earlier tests recorded
    yield
    EXPORTER.clear()


# -- the two apps ----------------------------------------------------------------------------

def starlette_app() -> Starlette:
    async def chat(request: Request) -> StarletteResponse:
        await request.body()
        return StarletteResponse(CHAT, media_type="application/json")

    async def messages(request: Request) -> StreamingResponse:
        cut = request.query_params.get("cut") == "1"

        async def body() -> Any:
            for chunk in STREAM_HEAD:
                yield chunk
            if cut:
                raise RuntimeError("upstream died")
            for chunk in STREAM_TAIL:
                yield chunk

        return StreamingResponse(body(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                             Route("/v1/messages", messages, methods=["POST"])])


def flask_app() -> Flask:
    app = Flask(__name__)

    @app.post("/v1/chat/completions")
    def chat() -> Response:
        return Response(CHAT, mimetype="application/json")

    @app.post("/v1/messages")
    def messages() -> Response:
        from flask import request

        cut = request.args.get("cut") == "1"

        def body() -> Iterator[bytes]:
            yield from STREAM_HEAD
            if cut:
                raise RuntimeError("upstream died")
            yield from STREAM_TAIL

        return Response(body(), mimetype="text/event-stream")

    return app


async def _asgi_calls(app: Any) -> None:
    headers = {"x-tenant-id": "acme"}
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        r = await client.post("/v1/chat/completions", json={"model": "gpt-4o"}, headers=headers)
        assert r.content == CHAT
        r = await client.post("/v1/messages", json={"model": MODEL, "stream": True},
                              headers=headers)
        assert r.content == b"".join(STREAM_HEAD + STREAM_TAIL)
        await client.post("/v1/messages?cut=1", json={"model": MODEL, "stream": True},
                          headers=headers)


def _wsgi_calls(app: Flask) -> None:
    client = app.test_client()
    headers = {"x-tenant-id": "acme"}
    r = client.post("/v1/chat/completions", json={"model": "gpt-4o"}, headers=headers)
    assert r.data == CHAT
    r = client.post("/v1/messages", json={"model": MODEL, "stream": True}, headers=headers)
    assert r.data == b"".join(STREAM_HEAD + STREAM_TAIL)
    r = client.post("/v1/messages?cut=1", json={"model": MODEL, "stream": True},
                    headers=headers)
    with pytest.raises(RuntimeError, match="upstream died"):
        r.get_data()  # the server reads the stream only now
    r.close()


def run_asgi(tmp_path: Path, otel_outside: bool = True, **overrides: Any) -> CostTracker:
    if otel_outside:
        cost = CostMiddleware(starlette_app(), settings(tmp_path, **overrides))
        app: Any = OtelASGI(cost)
    else:
        app = cost = CostMiddleware(OtelASGI(starlette_app()), settings(tmp_path, **overrides))
    import asyncio

    asyncio.run(_asgi_calls(app))
    assert cost.tracker.flush(10)
    return cost.tracker


def run_wsgi(tmp_path: Path, otel_outside: bool = True, **overrides: Any) -> CostTracker:
    app = flask_app()
    if otel_outside:
        cost = WSGICostMiddleware(app.wsgi_app, settings(tmp_path, **overrides))
        app.wsgi_app = OtelWSGI(cost)  # type: ignore[method-assign]
    else:
        cost = WSGICostMiddleware(OtelWSGI(app.wsgi_app), settings(tmp_path, **overrides))
        app.wsgi_app = cost  # type: ignore[method-assign]
    _wsgi_calls(app)
    assert cost.tracker.flush(10)
    return cost.tracker


RUNS = {"asgi": run_asgi, "wsgi": run_wsgi}


# -- reading what was exported -----------------------------------------------------------------

def server_spans() -> list[ReadableSpan]:
    spans = [s for s in EXPORTER.get_finished_spans() if s.kind is SpanKind.SERVER]
    return sorted(spans, key=lambda s: s.start_time or 0)


def gen_ai(span: ReadableSpan) -> dict[str, Any]:
    return {k: v for k, v in (span.attributes or {}).items() if k.startswith("gen_ai.")}


def points() -> dict[str, list[tuple[dict[str, Any], Any]]]:
    """Our scope's metrics: name -> [(attributes, data point)], with name and unit checked."""
    data = READER.get_metrics_data()
    found: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    units: dict[str, str] = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            if scope.scope.name != "cost_middleware":
                continue
            assert scope.scope.schema_url == "https://opentelemetry.io/schemas/1.41.0"
            for metric in scope.metrics:
                units[metric.name] = metric.unit or ""
                found.setdefault(metric.name, []).extend(
                    (dict(p.attributes or {}), p) for p in metric.data.data_points)
    assert units == {
        "gen_ai.client.token.usage": "{token}",
        "gen_ai.usage.cache_read.input_tokens": "{token}",
        "gen_ai.usage.cache_creation.input_tokens": "{token}",
        "gen_ai.usage.reasoning.output_tokens": "{token}",
        "gen_ai.client.operation.cost": "USD",
    }
    return found


def sums(found: list[tuple[dict[str, Any], Any]]) -> dict[tuple[tuple[str, Any], ...], Any]:
    return {tuple(sorted(attrs.items())): (p.sum, p.count) for attrs, p in found}


def ledger(tracker: CostTracker) -> list[dict[str, Any]]:
    with tracker.engine.connect() as conn:
        rows = conn.execute(sa.select(cost_records).order_by(cost_records.c.created_at))
        return [dict(r) for r in rows.mappings()]


def key(attrs: dict[str, Any], **extra: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted({**attrs, **extra}.items()))


# -- the tests ---------------------------------------------------------------------------------

@pytest.mark.parametrize("adapter", RUNS)
def test_server_spans_carry_usage_models_and_provider(adapter: str, tmp_path: Path) -> None:
    RUNS[adapter](tmp_path)
    spans = server_spans()
    assert len(spans) == 3
    assert [gen_ai(s) for s in spans] == [
        {**JSON_ATTRS, **JSON_USAGE}, {**STREAM_ATTRS, **STREAM_USAGE},
        {**STREAM_ATTRS, **CUT_USAGE}]
    # Not opted in: no tenant anywhere.
    assert all("cost_middleware.tenant" not in (s.attributes or {}) for s in spans)


@pytest.mark.parametrize("adapter", RUNS)
def test_metrics_exact_and_cost_sums_to_the_ledger(adapter: str, tmp_path: Path) -> None:
    tracker = run_asgi(tmp_path) if adapter == "asgi" else run_wsgi(tmp_path)
    rows = ledger(tracker)
    assert [(r["model"], r["partial"]) for r in rows] == [
        ("gpt-4o-2024-08-06", False), (MODEL, False), (MODEL, True)]
    assert all(r["cost_usd"] is not None for r in rows)
    found = points()
    tokens = sums(found["gen_ai.client.token.usage"])
    assert tokens == {
        key(JSON_ATTRS, **{"gen_ai.token.type": "input"}): (1200, 1),
        key(JSON_ATTRS, **{"gen_ai.token.type": "output"}): (300, 1),
        key(STREAM_ATTRS, **{"gen_ai.token.type": "input"}): (175 + 175, 2),
        key(STREAM_ATTRS, **{"gen_ai.token.type": "output"}): (40 + 1, 2),
    }
    assert sums(found["gen_ai.usage.cache_read.input_tokens"]) == {
        key(JSON_ATTRS): (200, 1), key(STREAM_ATTRS): (50, 2)}
    assert sums(found["gen_ai.usage.cache_creation.input_tokens"]) == {
        key(STREAM_ATTRS): (100, 2)}
    assert sums(found["gen_ai.usage.reasoning.output_tokens"]) == {key(JSON_ATTRS): (50, 1)}
    cost = sums(found["gen_ai.client.operation.cost"])
    money = {"gen_ai.usage.cost.currency": "USD", "gen_ai.usage.cost.source": "local"}
    by_model = {r["model"]: [x["cost_usd"] for x in rows if x["model"] == r["model"]]
                for r in rows}
    assert cost == {
        key(JSON_ATTRS, **money): (float(by_model["gpt-4o-2024-08-06"][0]), 1),
        key(STREAM_ATTRS, **money): (float(by_model[MODEL][0]) + float(by_model[MODEL][1]), 2),
    }
    with tracker.engine.connect() as conn:
        pico = conn.execute(sa.text("SELECT sum(cost_usd_pico) FROM cost_records")).scalar_one()
    total = sum(s for s, _ in cost.values())
    # Doubles, as the proposal has them: equal to the exact sum up to the last bit or two.
    assert total == pytest.approx(float(Decimal(pico) / 10**12), rel=1e-15, abs=0)
    tracker.close()


@pytest.mark.parametrize("adapter", RUNS)
def test_each_priced_record_gets_a_cost_span_under_its_request(adapter: str,
                                                               tmp_path: Path) -> None:
    tracker = RUNS[adapter](tmp_path)
    rows = {r["record_id"]: r for r in ledger(tracker)}
    servers = server_spans()
    children = [s for s in EXPORTER.get_finished_spans() if s.name == "cost_middleware.price"]
    assert len(children) == 3
    for child, server in zip(sorted(children, key=lambda s: s.start_time or 0), servers,
                             strict=True):
        assert child.parent is not None and server.context is not None
        assert child.parent.span_id == server.context.span_id
        assert child.context is not None
        assert child.context.trace_id == server.context.trace_id
        assert child.kind is SpanKind.INTERNAL
        attrs = dict(child.attributes or {})
        row = rows[attrs.pop("cost_middleware.record_id")]
        assert attrs.pop("gen_ai.usage.cost.amount") == float(row["cost_usd"])
        assert attrs.pop("cost_middleware.price_version") == row["price_version"]
        expected = JSON_ATTRS if row["api"] == "chat_completions" else STREAM_ATTRS
        assert attrs == {**expected, "gen_ai.usage.cost.currency": "USD",
                         "gen_ai.usage.cost.source": "local"}
        assert (child.start_time or 0) <= (child.end_time or 0)
    tracker.close()


@pytest.mark.parametrize("adapter", RUNS)
def test_instrumentation_inside_our_middleware_misses_usage(adapter: str,
                                                           tmp_path: Path) -> None:
    """Our middleware outside the instrumentation. WSGI: the instrumentation's iterable ends
    its span before ours finishes, so no server span gets usage. ASGI: our ``send`` is called
    while the server span is current and before the instrumentation ends it, so complete
    responses do; a cut one does not (the span ends as the app's exception leaves it, before
    our middleware sees the exception). Hence the documented order: instrumentation outside.
    The metrics are exact either way."""
    tracker = RUNS[adapter](tmp_path, otel_outside=False)
    annotated = [bool(gen_ai(s)) for s in server_spans()]
    assert annotated == ([True, True, False] if adapter == "asgi" else [False] * 3)
    tokens = sums(points()["gen_ai.client.token.usage"])
    assert tokens[key(JSON_ATTRS, **{"gen_ai.token.type": "input"})] == (1200, 1)
    tracker.close()


def test_tenant_and_route_are_opt_in(tmp_path: Path) -> None:
    tracker = run_asgi(tmp_path, otel_attributes=("tenant", "route"))
    spans = server_spans()
    assert [(s.attributes or {}).get("cost_middleware.tenant") for s in spans] == ["acme"] * 3
    tokens = sums(points()["gen_ai.client.token.usage"])
    extra = {"cost_middleware.tenant": "acme", "http.route": "/v1/chat/completions",
             "gen_ai.token.type": "input"}
    assert tokens[key(JSON_ATTRS, **extra)] == (1200, 1)
    tracker.close()


def test_several_records_in_one_request_are_summed_on_its_span(tmp_path: Path) -> None:
    from cost_middleware import Usage, record_usage

    tracker = CostTracker(settings(tmp_path))
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request", kind=SpanKind.SERVER):
        for n in (10, 20):
            record_usage(Usage(input_tokens=n, output_tokens=n // 2, reasoning_tokens=1),
                         provider="mistral", model="mistral-large-latest", api="chat_completions",
                         tracker=tracker)
    (span,) = server_spans()
    assert gen_ai(span) == {
        "gen_ai.provider.name": "mistral_ai", "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "mistral-large-latest",
        "gen_ai.response.model": "mistral-large-latest",
        "gen_ai.usage.input_tokens": 30, "gen_ai.usage.output_tokens": 15,
        "gen_ai.usage.reasoning.output_tokens": 2}
    tracker.close()


def test_untrusted_values_are_bounded_and_printable(tmp_path: Path) -> None:
    from cost_middleware import Usage, record_usage

    tracker = CostTracker(settings(tmp_path, otel_attributes=("tenant",)))
    hostile = "evil\x00\n\x1b[31m" + "x" * 500
    with trace.get_tracer("test").start_as_current_span("request", kind=SpanKind.SERVER):
        record_usage(Usage(input_tokens=1, output_tokens=1), provider=hostile, model=hostile,
                     api=hostile, tracker=tracker)
    (span,) = server_spans()
    cleaned = "evil___[31m" + "x" * (MAX_LABEL_LENGTH - len("evil___[31m"))
    assert gen_ai(span)["gen_ai.provider.name"] == cleaned
    assert gen_ai(span)["gen_ai.operation.name"] == cleaned
    assert gen_ai(span)["gen_ai.request.model"] == cleaned
    tracker.close()


@given(st.text())
def test_text_is_printable_and_bounded(value: str) -> None:
    cleaned = text(value)
    assert cleaned.isprintable() and len(cleaned) <= MAX_LABEL_LENGTH
    if value.isprintable():
        assert cleaned == value[:MAX_LABEL_LENGTH]


def test_metric_attributes_share_the_statsd_cardinality_cap() -> None:
    m = Metrics(Settings(statsd_enabled=False))
    for i in range(MAX_LABEL_VALUES):
        assert _bounded(m.label("tenant", f"t.{i}"), f"t.{i}") == f"t.{i}"  # dots kept
    assert _bounded(m.label("tenant", "one-more"), "one-more") == "other"
    assert _bounded(m.label("tenant", "t.3"), "t.3") == "t.3"


def test_settings() -> None:
    s = Settings.from_env({"COST_MIDDLEWARE_OTEL": "on",
                           "COST_MIDDLEWARE_OTEL_ATTRIBUTES": "tenant, route"})
    assert s.otel_enabled and s.otel_attributes == ("tenant", "route")
    assert Settings.from_env({}).otel_enabled is False
    with pytest.raises(ConfigError, match="COST_MIDDLEWARE_OTEL_ATTRIBUTES"):
        Settings.from_env({"COST_MIDDLEWARE_OTEL_ATTRIBUTES": "tenant,model"})
    with pytest.raises(ConfigError, match="COST_MIDDLEWARE_OTEL="):
        Settings.from_env({"COST_MIDDLEWARE_OTEL": "maybe"})


def test_with_otel_off_nothing_of_opentelemetry_is_imported(tmp_path: Path) -> None:
    """Neither our OTel module nor, from our code, any ``opentelemetry`` module (redis may
    import the API on its own when it is installed: that import is not ours)."""
    code = f"""
import asyncio, os, sys
ours = os.path.dirname(__import__("cost_middleware").__file__)
imported_by_us = []
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            frame = sys._getframe(1)
            while frame and frame.f_code.co_filename.startswith("<frozen"):
                frame = frame.f_back
            if frame and frame.f_code.co_filename.startswith(ours):
                imported_by_us.append(name)
        return None
sys.meta_path.insert(0, Watch())
from cost_middleware import CostMiddleware, Settings, WSGICostMiddleware
s = Settings(statsd_enabled=False, database_url="sqlite:///{tmp_path / 'c.db'}",
             spool_dir="{tmp_path / 'spool'}")
body = b'{{"model":"gpt-4o","usage":{{"prompt_tokens":1,"completion_tokens":1}}}}'
async def app(scope, receive, send):
    await send({{"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]}})
    await send({{"type": "http.response.body", "body": body}})
async def receive():
    return {{"type": "http.request", "body": b"{{}}"}}
async def send(message):
    pass
mw = CostMiddleware(app, s)
scope = {{"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [],
         "query_string": b""}}
asyncio.run(mw(scope, receive, send))
assert mw.tracker.flush(10)
WSGICostMiddleware(lambda e, r: [], s)
print(imported_by_us, "cost_middleware.engine.otel" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path)
    assert out.stdout.strip() == "[] False"
