"""What the middleware costs the host app: CPU per request, time to first byte, import time.

Each case sends the same requests straight through the ASGI interface (no network, no server)
to the bare app and to the app wrapped in ``CostMiddleware``, in alternating rounds; the
baseline is the bare app. The wrapped app runs as in production: records go to SQLite from the
background thread (which competes for the GIL during the measurement, as it would in a real
process) and metrics are aggregated and sent to a UDP socket nobody reads. Import time is the
CPU time of a fresh interpreter importing us against one running ``pass``.

    python benchmarks/bench_middleware.py [--quick]
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from time import perf_counter
from typing import Any

import orjson
from common import WINDOW_S, Result, fresh_python, interleave, standalone

from cost_middleware import CostMiddleware, Settings
from cost_middleware._types import ASGIApp, Message

IMPORT_LIMIT_S = 0.3
#: What the target names, and what a running app has loaded (public names are lazy).
IMPORTS = ("import cost_middleware", "from cost_middleware import *")


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
    """(seconds per request, seconds to the first body byte) over ``n`` requests."""
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


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    path: str
    app: Callable[[], ASGIApp]
    #: µs the middleware may add; None: no target (reported for scale).
    limit_us: float | None


CASES = [
    Case("non-provider route", "/api/items",
         lambda: make_app([b'{"items": []}'], b"application/json"), 3.0),
    Case("2 KB provider JSON", "/v1/chat/completions",
         lambda: make_app([openai_body(2048)], b"application/json"), 50.0),
    Case("100-event SSE stream", "/v1/chat/completions",
         lambda: make_app(openai_stream(100), b"text/event-stream"), 150.0),
    Case("1 MB provider JSON (64 KB chunks)", "/v1/chat/completions",
         lambda: make_app([openai_body(1 << 20)[i:i + 65536] for i in range(0, 1 << 20, 65536)],
                          b"application/json"), None),
]


def bench_case(case: Case, settings: Settings, quick: bool) -> list[Result]:
    bare = case.app()
    wrapped = CostMiddleware(bare, settings)
    wrapped.tracker.start()
    try:
        # Warm up (tables, price cache), then size the samples on the slower app: many short
        # samples, of which the fastest is the least disturbed.
        per_request, _ = asyncio.run(_time(wrapped, case.path, 50))
        n = max(3, round(WINDOW_S / per_request))
        samples = interleave({
            "bare": lambda: asyncio.run(_time(bare, case.path, n)),
            "wrapped": lambda: asyncio.run(_time(wrapped, case.path, n)),
        }, 60 if quick else 200)
    finally:
        wrapped.tracker.close()
    # Best of each figure separately: the fastest sample is the least disturbed one.
    bare_us, with_us = (min(s[0] for s in samples[k]) * 1e6 for k in ("bare", "wrapped"))
    bare_ttfb, with_ttfb = (min(s[1] for s in samples[k]) * 1e6 for k in ("bare", "wrapped"))
    added, ttfb_added = with_us - bare_us, with_ttfb - bare_ttfb
    return [
        Result(f"middleware CPU per request: {case.name}", with_us, "µs",
               "bare app", bare_us,
               "" if case.limit_us is None else f"adds ≤ {case.limit_us:g} µs",
               None if case.limit_us is None else added <= case.limit_us,
               f"adds {added:.1f} µs"),
        # "Unchanged" has no number: the first chunk may wait for the set-up (detection, the
        # reader), never for the body, so the note sets it against the whole request's cost.
        Result(f"time to first byte: {case.name}", with_ttfb, "µs", "bare app", bare_ttfb,
               "unchanged (forwarded at once)", None,
               f"adds {ttfb_added:.1f} µs of the {added:.1f} µs added per request"),
    ]


def bench_import(quick: bool) -> list[Result]:
    samples = interleave({code: partial(fresh_python, code) for code in ("pass", *IMPORTS)},
                         5 if quick else 10)
    wall = {code: min(w for w, _ in values) for code, values in samples.items()}
    cpu = {code: min(c for _, c in values) for code, values in samples.items()}
    results = []
    for code in IMPORTS:
        added = cpu[code] - cpu["pass"]
        results.append(Result(f"python -c '{code}', CPU", cpu[code], "s", "python -c pass",
                              cpu["pass"], f"import ≤ {IMPORT_LIMIT_S:g} s",
                              added <= IMPORT_LIMIT_S,
                              f"the import takes {added:.3f} s of CPU; wall {wall[code]:.3f} s "
                              f"vs {wall['pass']:.3f} s (fresh interpreter, best of "
                              f"{len(samples[code])})"))
    return results


def run(quick: bool) -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as statsd:
        statsd.bind(("127.0.0.1", 0))  # a StatsD that never reads: sends cost what they cost
        settings = Settings(database_url=f"sqlite:///{Path(tmp) / 'bench.db'}",
                            spool_dir=str(Path(tmp) / "spool"), statsd_host="127.0.0.1",
                            statsd_port=statsd.getsockname()[1])
        for case in CASES:
            results.extend(bench_case(case, settings, quick))
    results.extend(bench_import(quick))
    return results


if __name__ == "__main__":
    standalone(run, "middleware: CPU per request and time to first byte vs the bare app")
