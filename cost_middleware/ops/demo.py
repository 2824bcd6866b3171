"""``cost-middleware demo``: mixed provider traffic through the middleware, then a cost report.

Everything runs in this process on the embedded defaults (SQLite, no Redis): a fake provider
app, the same requests sent to it bare and wrapped, the middleware's overhead from the
difference, and the report of what was recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from time import perf_counter
from typing import Any

import orjson
from rich.console import Console
from rich.progress import Progress

from cost_middleware._types import ASGIApp, Message
from cost_middleware.asgi import CostMiddleware
from cost_middleware.config import Settings
from cost_middleware.engine.tracker import CostTracker
from cost_middleware.ops.fake_provider import FakeProviderApp
from cost_middleware.ops.render import print_report
from cost_middleware.ops.report import summarize
from cost_middleware.storage.sinks import MemorySink

TENANTS = ("acme", "globex", "initech", "umbrella", "hooli")
#: (path, model, stream) mixes of what apps send; weights roughly like real traffic.
CALLS: tuple[tuple[str, str, bool], ...] = (
    ("/v1/chat/completions", "gpt-4o-mini", False),
    ("/v1/chat/completions", "gpt-4o-mini", True),
    ("/v1/chat/completions", "gpt-4o", False),
    ("/v1/chat/completions", "gpt-4.1", True),
    ("/v1/chat/completions", "o4-mini", False),
    ("/v1/messages", "claude-sonnet-4-5-20250929", False),
    ("/v1/messages", "claude-haiku-4-5-20251001", True),
    ("/v1/messages", "claude-opus-4-1-20250805", False),
    ("/v1beta/models/gemini-2.5-flash:generateContent", "gemini-2.5-flash", False),
    ("/v1beta/models/gemini-2.5-pro:generateContent", "gemini-2.5-pro", False),
)


@dataclass(frozen=True, slots=True)
class DemoRequest:
    path: str
    body: bytes
    headers: list[tuple[bytes, bytes]]


def build_requests(count: int, seed: int = 7) -> list[DemoRequest]:
    rng = random.Random(seed)
    requests = []
    for i in range(count):
        path, model, stream = rng.choice(CALLS)
        body: dict[str, Any] = {"model": model, "stream": stream,
                                "messages": [{"role": "user", "content": f"question {i}"}]}
        if stream and path.endswith("/chat/completions"):
            body["stream_options"] = {"include_usage": True}
        headers = [(b"content-type", b"application/json"),
                   (b"x-tenant-id", rng.choice(TENANTS).encode())]
        requests.append(DemoRequest(path, orjson.dumps(body), headers))
    return requests


async def call(app: ASGIApp, request: DemoRequest) -> int:
    """One request straight through the ASGI interface; returns the response body size."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": request.path,
             "raw_path": request.path.encode(), "query_string": b"", "root_path": "",
             "headers": request.headers, "client": ("127.0.0.1", 1), "server": ("demo", 80)}
    sent = False
    size = 0

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": request.body, "more_body": False}

    async def send(message: Message) -> None:
        nonlocal size
        if message["type"] == "http.response.body":
            size += len(message.get("body", b""))

    await app(scope, receive, send)
    return size


@contextlib.asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[None]:
    """Runs ``app``'s lifespan around the block, as a server does: one lifespan task gets
    ``lifespan.startup`` before the block and ``lifespan.shutdown`` after it."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    replies: asyncio.Queue[Message] = asyncio.Queue()
    task: asyncio.Future[None] = asyncio.ensure_future(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get,
            replies.put))

    async def step(phase: str) -> None:
        await inbox.put({"type": f"lifespan.{phase}"})
        reply = asyncio.ensure_future(replies.get())
        await asyncio.wait((reply, task), return_when=asyncio.FIRST_COMPLETED)
        if not reply.done():
            reply.cancel()
            task.result()  # the app's own exception, if it raised
            raise RuntimeError(f"the app ended its lifespan before {phase} completed")
        if reply.result()["type"] != f"lifespan.{phase}.complete":
            raise RuntimeError(f"lifespan {phase} failed: {reply.result().get('message', '')}")

    await step("startup")
    try:
        yield
    finally:
        await step("shutdown")
        await task


async def _timed(app: ASGIApp, requests: list[DemoRequest], progress: Progress | None,
                 task: Any) -> list[float]:
    times = []
    for request in requests:
        t0 = perf_counter()
        await call(app, request)
        times.append(perf_counter() - t0)
        if progress is not None:
            progress.advance(task)
    return times


async def run(count: int, settings: Settings, console: Console) -> dict[str, Any]:
    provider = FakeProviderApp()
    wrapped = CostMiddleware(provider, settings)
    requests = build_requests(count)
    started = datetime.now(UTC)
    async with serving(wrapped):
        # Warm both paths (imports, caches) before measuring, keeping warm-up records out of
        # the database and StatsD so both hold exactly the requests the demo reports.
        with tempfile.TemporaryDirectory() as spool:
            # Its own spool: it must never replay (into memory) what the real one holds.
            warm = CostMiddleware(provider, tracker=CostTracker(
                settings.with_overrides(spool_dir=spool, statsd_enabled=False),
                sink=MemorySink()))
            async with serving(warm):
                for request in requests[:50]:
                    await call(provider, request)
                    await call(warm, request)
        bare: list[float] = []
        with_mw: list[float] = []
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("sending requests", total=2 * count)
            # Interleave blocks of bare and wrapped runs so drift affects both alike.
            for i in range(0, count, 250):
                block = requests[i:i + 250]
                bare += await _timed(provider, block, progress, task)
                with_mw += await _timed(wrapped, block, progress, task)
        tracker = wrapped.tracker
        t0 = perf_counter()
        tracker.flush(30.0)
        flush_seconds = perf_counter() - t0
        engine = tracker.engine
        by_model = summarize(engine, "model", since=started)
        by_tenant = summarize(engine, "tenant", since=started)
    overhead_us = [(w - b) * 1e6 for w, b in zip(sorted(with_mw), sorted(bare), strict=True)]
    return {
        "requests": count,
        "bare_p50_us": statistics.median(bare) * 1e6,
        "wrapped_p50_us": statistics.median(with_mw) * 1e6,
        "overhead_p50_us": statistics.median(overhead_us),
        "overhead_mean_us": (statistics.fmean(with_mw) - statistics.fmean(bare)) * 1e6,
        "final_flush_s": flush_seconds,
        "by_model": by_model,
        "by_tenant": by_tenant,
    }


def main(count: int = 3000, settings: Settings | None = None,
         console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    settings = settings if settings is not None else Settings.from_env()
    console.print(f"[bold]cost-middleware demo[/]: {count:,} provider calls (OpenAI, Anthropic, "
                  f"Gemini; JSON and streams; {len(TENANTS)} tenants) into "
                  f"{settings.database_url.split('://', 1)[0]}")
    result = asyncio.run(run(count, settings, console))
    print_report(console, result["by_model"], "model", "Cost by model")
    print_report(console, result["by_tenant"], "tenant", "Cost by tenant")
    console.print(
        f"Per request: bare app p50 {result['bare_p50_us']:.1f} µs, with middleware p50 "
        f"{result['wrapped_p50_us']:.1f} µs → [bold]overhead p50 "
        f"{result['overhead_p50_us']:.1f} µs[/] (mean {result['overhead_mean_us']:.1f} µs), "
        "pricing and storage off the request path."
    )
    return result
