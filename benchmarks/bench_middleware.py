"""Middleware CPU per request, as the difference against the bare app in the same run.

Each case sends the same request straight through the ASGI interface (no network, no server)
to the bare app and to the app wrapped in CostMiddleware, which records into SQLite from its
background thread as in production. Time to first byte is measured the same way.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from pathlib import Path
from time import perf_counter
from typing import Any

import orjson

from cost_middleware import CostMiddleware, Settings
from cost_middleware._types import ASGIApp, Message

REPEATS = 5


def openai_body(size: int) -> bytes:
    """An OpenAI chat completion of about ``size`` bytes."""
    content = "x" * max(0, size - 520)
    return orjson.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1754470111,
        "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp_bench", "service_tier": "default",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content, "refusal": None}}],
        "usage": {"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
                  "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}},
    })


def openai_stream(events: int) -> list[bytes]:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1754470111,
            "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_bench"}
    chunks = [b"data: " + orjson.dumps({**base, "usage": None, "choices": [
        {"index": 0, "delta": {"content": f"token{i} "}, "finish_reason": None}]}) + b"\n\n"
        for i in range(events - 2)]
    chunks.append(b"data: " + orjson.dumps({**base, "choices": [], "usage": {
        "prompt_tokens": 1355, "completion_tokens": 87, "total_tokens": 1442,
        "prompt_tokens_details": {"cached_tokens": 1152},
        "completion_tokens_details": {"reasoning_tokens": 0}}}) + b"\n\n")
    chunks.append(b"data: [DONE]\n\n")
    return chunks


def make_app(chunks: list[bytes], ctype: bytes) -> ASGIApp:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", ctype)]})
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def make_scope(path: str) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "client": ("127.0.0.1", 1), "server": ("bench", 80),
            "headers": [(b"content-type", b"application/json"), (b"x-tenant-id", b"acme"),
                        (b"user-agent", b"bench"), (b"accept", b"*/*")]}


async def _time(app: ASGIApp, path: str, n: int) -> tuple[float, float]:
    """(seconds per request, seconds to first body byte) for ``n`` requests."""
    request: Message = {"type": "http.request", "body": b'{"model": "gpt-4o"}'}

    async def receive() -> Message:
        return request

    first = 0.0
    start = 0.0

    async def send(message: Message) -> None:
        nonlocal first
        if message["type"] == "http.response.body" and not first:
            first = perf_counter() - start

    ttfb = 0.0
    t0 = perf_counter()
    for _ in range(n):
        first = 0.0
        start = perf_counter()
        await app(make_scope(path), receive, send)
        ttfb += first
    return (perf_counter() - t0) / n, ttfb / n


def measure(app: ASGIApp, path: str, n: int) -> tuple[float, float]:
    best = (float("inf"), float("inf"))
    for _ in range(REPEATS):
        result = asyncio.run(_time(app, path, n))
        best = min(best, result)
    return best


CASES: list[tuple[str, str, Callable[[], ASGIApp], int, float]] = [
    # name, path, app factory, requests per repeat, target µs
    ("non-provider route", "/api/items",
     lambda: make_app([b'{"items": []}'], b"application/json"), 20000, 3.0),
    ("2 KB provider JSON", "/v1/chat/completions",
     lambda: make_app([openai_body(2048)], b"application/json"), 5000, 50.0),
    ("100-event SSE stream", "/v1/chat/completions",
     lambda: make_app(openai_stream(100), b"text/event-stream"), 1000, 150.0),
    ("1 MB provider JSON", "/v1/chat/completions",
     lambda: make_app([openai_body(1 << 20)[i:i + 65536] for i in range(0, 1 << 20, 65536)],
                      b"application/json"), 100, float("nan")),
]


def run() -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database_url=f"sqlite:///{Path(tmp) / 'bench.db'}",
                            spool_dir=str(Path(tmp) / "spool"), statsd_enabled=False)
        for name, path, factory, n, target in CASES:
            bare_app = factory()
            wrapped = CostMiddleware(bare_app, settings)
            wrapped.tracker.start()
            measure(wrapped, path, min(n, 200))  # warm up: imports, tables, price cache
            bare, bare_ttfb = measure(bare_app, path, n)
            with_mw, mw_ttfb = measure(wrapped, path, n)
            wrapped.tracker.close()
            results.append({
                "benchmark": f"middleware: {name}",
                "baseline_us": bare * 1e6,
                "value_us": with_mw * 1e6,
                "overhead_us": (with_mw - bare) * 1e6,
                "ratio": with_mw / bare,
                "ttfb_added_us": (mw_ttfb - bare_ttfb) * 1e6,
                "target_us": target,
            })
    return results


if __name__ == "__main__":
    for row in run():
        print(row)
