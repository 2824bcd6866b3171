"""What ``COST_MIDDLEWARE_OTEL=on`` costs the request path, against off, in the same run.

The cases of ``bench_middleware`` run through the official OpenTelemetry ASGI instrumentation
(an SDK tracer provider that keeps every span, and a meter provider with an in-memory reader,
as an instrumented app has them; no exporter, so no network). Three apps alternate: the bare
app under the instrumentation, our middleware inside it with OTel off (the baseline), and
with OTel on. What OTel on adds on the request path is the span attributes; the metrics are
recorded by the background worker, which competes for the GIL meanwhile, as in production.

    python benchmarks/bench_otel.py [--quick]
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from bench_middleware import CASES, _time
from common import WINDOW_S, Result, best_per_call, interleave, standalone
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from cost_middleware import CostMiddleware, CostRecord, Settings, Usage
from cost_middleware.engine.otel import OtelRecorder
from cost_middleware.metrics import Metrics

#: Cases of bench_middleware measured here (the 1 MB body says nothing about OTel).
NAMES = ("non-provider route", "2 KB provider JSON", "100-event SSE stream")


def bench_case(name: str, settings: Settings, quick: bool) -> Result:
    case = next(c for c in CASES if c.name == name)
    bare = case.app()
    off = CostMiddleware(bare, settings)
    on = CostMiddleware(bare, settings.with_overrides(otel_enabled=True))
    apps: dict[str, Any] = {"bare": OpenTelemetryMiddleware(bare),
                            "off": OpenTelemetryMiddleware(off),
                            "on": OpenTelemetryMiddleware(on)}
    for mw in (off, on):
        mw.tracker.start()
    try:
        per_request, _ = asyncio.run(_time(apps["on"], case.path, 50))  # warm up
        n = max(3, round(WINDOW_S / per_request))
        samples = interleave({k: (lambda app=app: asyncio.run(_time(app, case.path, n)))
                              for k, app in apps.items()}, 40 if quick else 150)
    finally:
        for mw in (off, on):
            mw.tracker.close()
    bare_us, off_us, on_us = (min(s[0] for s in samples[k]) * 1e6 for k in ("bare", "off", "on"))
    return Result(f"request path, OTel on: {name}", on_us, "µs", "OTel off", off_us, "", None,
                  f"on adds {on_us - off_us:.1f} µs; off adds {off_us - bare_us:.1f} µs to the "
                  f"instrumented bare app ({bare_us:.1f} µs)")


def bench_annotate(quick: bool) -> Result:
    """The request path's whole OTel step for one record, inside a recording server span,
    against a span set-attribute of one value (the least any annotation costs)."""
    settings = Settings(statsd_enabled=False, otel_enabled=True)
    recorder = OtelRecorder(settings, Metrics(settings))
    record = CostRecord(provider="openai", api="chat_completions", model="gpt-4o-2024-08-06",
                        usage=Usage(input_tokens=2006, output_tokens=300, cached_input_tokens=1920,
                                    reasoning_tokens=0))
    with trace.get_tracer("bench").start_as_current_span("request") as span:
        best = best_per_call({"one": lambda: span.set_attribute("k", 1),
                              "annotate": lambda: recorder.annotate(record)},
                             20 if quick else 100)
    return Result("OTel annotate of one record (span attributes)", best["annotate"] * 1e6, "µs",
                  "one set_attribute", best["one"] * 1e6, "", None,
                  "per record on the request path; the span is the current server span")


def run(quick: bool) -> list[Result]:
    trace.set_tracer_provider(TracerProvider())
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database_url=f"sqlite:///{Path(tmp) / 'bench.db'}",
                            spool_dir=str(Path(tmp) / "spool"), statsd_enabled=False)
        results = [bench_case(name, settings, quick) for name in NAMES]
    return [*results, bench_annotate(quick)]


if __name__ == "__main__":
    standalone(run, "OpenTelemetry: the request path with COST_MIDDLEWARE_OTEL on vs off")
