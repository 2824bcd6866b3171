"""Hostile bytes cost nothing, broken bytes lose nothing (the hostile-input suite, in process).

Every way a response body could make the middleware work without bound is fed in 64 KiB
reads, as a server delivers them: no read may cost more than a few milliseconds of our work
(the bound asserted is loose, for a shared machine: these cost seconds before they were
bounded), the skip is counted, and the client gets the bytes unchanged. Bodies with broken
text, and bodies far over ``COST_MIDDLEWARE_MAX_BODY_BYTES``, are recorded with exact usage.
The same bomb through a real uvicorn server: ``test_hostile_server.py``.

Categories of the suite already covered elsewhere: garbage and format-like noise
(``test_usage_robustness.py``, ``test_asgi.py``), truncation (``test_capture.py``,
``test_usage_robustness.py``), wrong types (``test_usage_robustness.py``), bad gzip
(``test_capture.py``, ``test_decompress.py``), injection in headers (``test_context.py``).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import random
import struct
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from time import perf_counter, thread_time
from typing import Any

import brotli
import orjson
import pytest
import sqlalchemy as sa
from asgi_lifespan import LifespanManager
from providers import ReplayApp

from cost_middleware import CostMiddleware, CostRecord, Settings
from cost_middleware._types import Message, Receive, Scope, Send
from cost_middleware.body.sse import LazySSEDecoder
from cost_middleware.body.sse_tail import TAIL_OPEN_LIMIT, TAIL_TRIM_BYTES
from cost_middleware.body.whole import END_BYTES
from cost_middleware.capture import Capture
from cost_middleware.context import RequestContext
from cost_middleware.engine.tracker import CostTracker
from cost_middleware.schema import cost_records

READ = 64 << 10
#: Our work one read may cost here (a few ms measured; seconds before the bounds). CPU time of
#: the thread, not wall time: a read that is quadratic spends it, a thread the machine
#: preempts or pauses does not (one CI run saw a 0.5 s stall of the wall clock).
MAX_READ_SECONDS = 0.025
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
GEMINI = "/v1beta/models/gemini-2.5-pro:streamGenerateContent"
SSE = "text/event-stream"
EVENT = (b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,'
         b'"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"aaaa"}}]}\n\n')
HEAD = EVENT * 10


def settings(tmp: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"statsd_host": "127.0.0.1", "statsd_port": 9,
                              "database_url": f"sqlite:///{tmp / 'cost.db'}",
                              "spool_dir": str(tmp / "spool")}
    values.update(overrides)
    return Settings(**values)


class Pipeline:
    """A real tracker whose records are collected; responses go through a :class:`Capture`."""

    def __init__(self, tmp: Path, **overrides: Any) -> None:
        self.tracker = CostTracker(settings(tmp, **overrides))
        self.records: list[CostRecord] = []
        self.tracker.record = self.records.append  # type: ignore[method-assign, assignment]

    def respond(self, path: str, headers: list[tuple[str, str]],
                reads: Iterator[bytes] | list[bytes], *, complete: bool = True) -> float:
        """Drive one response; the longest our work took for one read (or the end)."""
        context = RequestContext(self.tracker, "POST", path, [(b"x-tenant-id", b"t")],
                                 perf_counter())
        target = self.tracker.detector.match("POST", path)
        assert target is not None
        capture = Capture(context, target, path, "", None)
        capture.response_start(200, headers)
        longest = 0.0
        for read in reads:
            t0 = thread_time()
            capture.response_body(read)
            longest = max(longest, thread_time() - t0)
        t0 = thread_time()
        capture.finish(complete)
        return max(longest, thread_time() - t0)

    @property
    def counters(self) -> dict[str, float]:
        return self.tracker.metrics.snapshot()["counters"]


@pytest.fixture
def pipe(tmp_path: Path) -> Iterator[Pipeline]:
    made = Pipeline(tmp_path)
    yield made
    made.tracker.close()


def reads(data: bytes, size: int = READ) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def gzip_bomb() -> bytes:
    """A stream of one event repeated to 64 MB, in 250 KB of gzip."""
    block = EVENT * 5000
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return b"".join(packer.compress(block) for _ in range((64 << 20) // len(block))) + \
        packer.flush()


def event_stream_message(payload: bytes, headers: bytes = b"") -> bytes:
    prelude = struct.pack(">II", 16 + len(headers) + len(payload), len(headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + headers + payload
    return message + struct.pack(">I", zlib.crc32(message))


def named(name: bytes) -> bytes:
    return bytes([11]) + b":event-type" + bytes([7]) + struct.pack(">H", len(name)) + name


#: name -> (path, response headers, body, what is counted: a skip, or, for a stream whose
#: provider was known before the hostile part, a partial record without usage)
HOSTILE: dict[str, tuple[str, list[tuple[str, str]], Callable[[], bytes], str]] = {
    "gzip bomb": (CHAT, [("content-type", SSE), ("content-encoding", "gzip")], gzip_bomb,
                  "skipped.decompress_ratio"),
    "brotli bomb": (CHAT, [("content-type", SSE), ("content-encoding", "br")],
                    lambda: bytes(brotli.compress(EVENT * 200_000, quality=5)),
                    "skipped.decompress_ratio"),
    "deflate bomb, JSON body": (CHAT, [("content-type", "application/json"),
                                       ("content-encoding", "deflate")],
                                lambda: zlib.compress(b'{"a":"' + b" " * (64 << 20) + b'"}', 9),
                                "skipped.decompress_ratio"),
    "deep nesting, JSON body": (CHAT, [("content-type", "application/json")],
                                lambda: b"[" * (4 << 20), "skipped.invalid_json"),
    "deep nesting, JSON array stream": (GEMINI, [("content-type", "application/json")],
                                        lambda: b"[" + (b"[" * 500 + b"]" * 500 + b",") * 4000,
                                        "skipped.stream_too_dense"),
    "tiny elements, JSON array stream": (GEMINI, [("content-type", "application/json")],
                                         lambda: b"[" + b"1," * (2 << 20),
                                         "skipped.stream_too_dense"),
    "tiny unnamed events, SSE": (MESSAGES, [("content-type", SSE)],
                                 lambda: b"data: 1\n\n" * 400_000, "skipped.stream_too_dense"),
    "comments after the head, SSE tail": (CHAT, [("content-type", SSE)],
                                          lambda: HEAD + b":\n\n" * 1_000_000,
                                          "usage.missing"),
    "blank lines, SSE": (MESSAGES, [("content-type", SSE)], lambda: b"\n" * (4 << 20),
                         "skipped.stream_too_dense"),
    "short lines in one event, SSE": (MESSAGES, [("content-type", SSE)],
                                      lambda: b"data: a\n" * 100_000 + b"\n",
                                      "skipped.stream_too_dense"),
    "an endless line, SSE": (CHAT, [("content-type", SSE)],
                             lambda: b"data: " + b"a" * (4 << 20), "skipped.sse_event_too_large"),
    "tiny lines, NDJSON": ("/api/chat", [("content-type", "application/x-ndjson")],
                           lambda: b'{"model":"m","done":false}\n' + b"1\n" * (2 << 20),
                           "skipped.stream_too_dense"),
    "an endless line, NDJSON": ("/api/chat", [("content-type", "application/x-ndjson")],
                                lambda: b"{" + b" " * (4 << 20), "skipped.ndjson_line_too_large"),
    "tiny messages, event-stream": (
        "/model/m/converse-stream", [("content-type", "application/vnd.amazon.eventstream")],
        lambda: event_stream_message(b"{}", named(b"messageStart"))
        + event_stream_message(b"") * 200_000, "usage.missing"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_body_costs_a_few_milliseconds_per_read(case: str, pipe: Pipeline) -> None:
    path, headers, make, counted = HOSTILE[case]
    longest = pipe.respond(path, headers, reads(make()))
    assert longest < MAX_READ_SECONDS, f"{longest * 1e3:.1f} ms for one read"
    assert pipe.counters[counted] == 1
    assert all(r.partial and r.usage is None for r in pipe.records)
    assert "skipped.internal_error" not in pipe.counters


@pytest.mark.parametrize("size", [64, 1024, READ])
def test_an_endless_line_costs_linear_time_in_any_reads(size: int, pipe: Pipeline) -> None:
    # The held tail is a list of reads joined once, never rejoined per read.
    body = b"data: " + b"a" * (1 << 20)
    t0 = thread_time()
    pipe.respond(CHAT, [("content-type", SSE)], reads(body, size))
    assert thread_time() - t0 < 0.5
    assert pipe.counters["skipped.sse_event_too_large"] == 1


def test_a_tail_of_comments_is_held_bounded_then_refused() -> None:
    # Read for its tail, a stream of comments would be held whole and searched at every trim.
    decoder = LazySSEDecoder(lambda: None, 8, lambda: True)
    decoder.feed(HEAD)
    most = 0
    for read in reads(b": keep-alive\n\n" * 200_000, 4096):
        decoder.feed(read)
        most = max(most, decoder.tail.buffered if decoder.tail is not None else 0)
    assert 0 < most <= TAIL_OPEN_LIMIT + TAIL_TRIM_BYTES + 4096
    assert decoder.error == "stream_too_dense"


# -- through the adapter: the bytes are the app's ----------------------------------------------


async def exchange(app: Any, path: str, headers: list[tuple[bytes, bytes]] | None = None,
                   body: bytes = b"{}") -> list[Message]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "headers": headers or [],
             "client": ("127.0.0.1", 1), "server": ("test", 80)}
    sent: list[Message] = []
    parts = [body]

    async def receive() -> Message:
        if parts:
            return {"type": "http.request", "body": parts.pop(), "more_body": False}
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def received(sent: list[Message]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


@pytest.mark.parametrize("case", ["gzip bomb", "comments after the head, SSE tail",
                                  "tiny elements, JSON array stream", "deep nesting, JSON body"])
def test_hostile_bodies_reach_the_client_unchanged(case: str, tmp_path: Path) -> None:
    path, headers, make, counted = HOSTILE[case]
    body = make()
    raw = [(k.encode(), v.encode()) for k, v in headers]
    mw = CostMiddleware(ReplayApp(reads(body), 200, raw), settings(tmp_path))
    mw.tracker.record = lambda record: None  # type: ignore[method-assign]
    sent = asyncio.run(exchange(mw, path))
    assert hashlib.sha256(received(sent)).digest() == hashlib.sha256(body).digest()
    assert sent[0]["headers"][:len(raw)] == raw
    assert mw.tracker.metrics.snapshot()["counters"][counted] == 1
    mw.tracker.close()


# -- broken text loses nothing -----------------------------------------------------------------

USAGE = {"prompt_tokens": 1234, "completion_tokens": 567, "total_tokens": 1801,
         "prompt_tokens_details": {"cached_tokens": 1024}}


def chat_body(content: bytes) -> bytes:
    return (b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o",'
            b'"choices":[{"index":0,"message":{"role":"assistant","content":"' + content
            + b'"},"finish_reason":"stop"}],"usage":' + orjson.dumps(USAGE) + b"}")


BROKEN = {
    "a lone surrogate escape": b"half an emoji: \\ud83d.",
    "a lone low surrogate escape": b"\\ude00 alone",
    "an invalid UTF-8 byte": b"caf\xe9 au lait",
    "a UTF-8 sequence cut short": b"\xf0\x9f\x98 then more",
    "both, in one body": b"\\ud83d and \xff",
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_text_in_a_body_still_leaves_a_row_with_exact_usage(case: str,
                                                                   tmp_path: Path) -> None:
    body = chat_body(BROKEN[case])
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)
    url = f"sqlite:///{tmp_path / 'cost.db'}"
    mw = CostMiddleware(ReplayApp(reads(body)),
                        settings(tmp_path, database_url=url))

    async def run() -> tuple[list[Message], dict[str, float]]:
        async with LifespanManager(mw):
            sent = await exchange(mw, CHAT)
            # Read before shutdown, which sends the counters (and so resets them).
            return sent, mw.tracker.metrics.snapshot()["counters"]

    sent, counters = asyncio.run(run())
    assert received(sent) == body
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        [row] = conn.execute(sa.select(cost_records)).mappings().all()
    engine.dispose()
    assert (row["model"], row["input_tokens"], row["cached_input_tokens"],
            row["output_tokens"]) == ("gpt-4o", 1234, 1024, 567)
    assert row["cost_usd"] is not None
    assert counters["usage.repaired"] == 1


def test_broken_text_in_a_stream_event_is_read_too(pipe: Pipeline) -> None:
    # Gemini's last chunk carries text and usage together.
    last = (b'data: {"candidates":[{"content":{"parts":[{"text":"\\ud83d"}],"role":"model"},'
            b'"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":7,'
            b'"candidatesTokenCount":9,"totalTokenCount":16},"modelVersion":"gemini-2.5-pro"}'
            b"\r\n\r\n")
    pipe.respond(GEMINI, [("content-type", SSE)], [last])
    [record] = pipe.records
    assert record.usage is not None
    assert (record.usage.input_tokens, record.usage.output_tokens) == (7, 9)


# -- a large answer is billed ------------------------------------------------------------------


#: An OpenAI chat completion around a long text: what comes before it and after it.
BIG_HEAD = (b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o",'
            b'"choices":[{"index":0,"message":{"role":"assistant","content":"')
BIG_TAIL = (b'","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":'
            + orjson.dumps(USAGE) + b',"system_fingerprint":"fp_1"}')


def test_a_50_mb_body_is_billed_exactly_with_bounded_memory(tmp_path: Path) -> None:
    head, tail = BIG_HEAD, BIG_TAIL
    text = b"All work and no play makes Jack a dull boy.\\n " * 2000
    count = (50 << 20) // len(text)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        for part in (head, *(text for _ in range(count)), tail):
            # A fresh copy per read, as a server's reads are: what is held shows in memory.
            await send({"type": "http.response.body", "body": bytes(memoryview(part)),
                        "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    mw = CostMiddleware(app, settings(tmp_path))
    records: list[CostRecord] = []
    mw.tracker.record = records.append  # type: ignore[method-assign, assignment]
    digest = hashlib.sha256()
    size = 0

    async def send(message: Message) -> None:
        nonlocal size
        if message["type"] == "http.response.body":
            digest.update(message["body"])
            size += len(message["body"])

    async def run() -> None:
        scope = {"type": "http", "method": "POST", "path": CHAT, "raw_path": CHAT.encode(),
                 "query_string": b"", "root_path": "", "headers": [], "scheme": "http",
                 "http_version": "1.1", "asgi": {"version": "3.0"}}

        async def receive() -> Message:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        await mw(scope, receive, send)

    tracemalloc.start()
    try:
        asyncio.run(run())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == len(head) + count * len(text) + len(tail) > 50_000_000
    assert digest.digest() == hashlib.sha256(head + text * count + tail).digest()
    [record] = records
    assert record.usage is not None and record.model == "gpt-4o" and not record.partial
    assert (record.usage.input_tokens, record.usage.cached_input_tokens,
            record.usage.output_tokens) == (1234, 1024, 567)
    # What one body holds at most: the body limit (8 MiB), then its two ends.
    assert peak < mw.settings.max_body_bytes + 4 * END_BYTES + (2 << 20)
    mw.tracker.close()


def families() -> dict[str, tuple[str, bytes]]:
    """Large bodies of each family: path and body (its middle is the bulk)."""
    rnd = random.Random(7)
    words = [bytes(rnd.choices(b"abcdefghij", k=rnd.randint(1, 8))) for _ in range(300)]
    text = b" ".join(rnd.choice(words) for _ in range(2_000_000))
    return {
        "openai chat": (CHAT, BIG_HEAD + text + BIG_TAIL),
        "anthropic": (MESSAGES, b'{"id":"msg_1","type":"message","role":"assistant",'
                      b'"model":"claude-sonnet-4-5","content":[{"type":"text","text":"' + text
                      + b'"}],"stop_reason":"end_turn","stop_sequence":null,"usage":'
                      b'{"input_tokens":21,"cache_creation_input_tokens":100,'
                      b'"cache_read_input_tokens":3000,"output_tokens":4096}}'),
        "gemini": ("/v1beta/models/gemini-2.5-pro:generateContent",
                   b'{"candidates":[{"content":{"parts":[{"text":"' + text + b'"}],'
                   b'"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":'
                   b'{"promptTokenCount":12,"candidatesTokenCount":3456,'
                   b'"totalTokenCount":3468},"modelVersion":"gemini-2.5-pro"}'),
        "openai responses": ("/v1/responses",
                             b'{"id":"resp_1","object":"response","created_at":1,'
                             b'"status":"completed","model":"gpt-4.1","output":[{"type":'
                             b'"message","id":"m","status":"completed","role":"assistant",'
                             b'"content":[{"type":"output_text","text":"' + text + b'",'
                             b'"annotations":[]}]}],"tools":[],"usage":{"input_tokens":40,'
                             b'"input_tokens_details":{"cached_tokens":0},"output_tokens":'
                             b'999,"output_tokens_details":{"reasoning_tokens":100},'
                             b'"total_tokens":1039},"user":null,"metadata":{}}'),
        "openai embeddings": ("/v1/embeddings", orjson.dumps({
            "object": "list", "model": "text-embedding-3-small",
            "data": [{"object": "embedding", "index": i,
                      "embedding": [rnd.random() for _ in range(1536)]} for i in range(600)],
            "usage": {"prompt_tokens": 8000, "total_tokens": 8000}})),
    }


FAMILIES = families()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_large_bodies_of_every_family_are_billed_as_if_read_whole(
        family: str, encoding: str | None, tmp_path: Path) -> None:
    path, body = FAMILIES[family]
    assert len(body) > 10_000_000
    headers = [("content-type", "application/json")]
    data = body
    if encoding:
        headers.append(("content-encoding", encoding))
        data = gzip.compress(body, 1)
    whole = Pipeline(tmp_path / "whole", max_body_bytes=64 << 20)
    ends = Pipeline(tmp_path / "ends")
    whole.respond(path, headers, reads(data))
    longest = ends.respond(path, headers, reads(data))
    [expected], [record] = whole.records, ends.records
    assert expected.usage is not None
    assert (record.provider, record.api, record.model, record.usage, record.partial) == (
        expected.provider, expected.api, expected.model, expected.usage, False)
    assert longest < MAX_READ_SECONDS
    for p in (whole, ends):
        p.tracker.close()


def test_a_large_body_cut_short_is_truncated_not_guessed(pipe: Pipeline) -> None:
    path, body = FAMILIES["openai chat"]
    pipe.respond(path, [("content-type", "application/json")], reads(body[:-100]),
                 complete=False)
    assert pipe.records == []
    assert pipe.counters["skipped.truncated_body"] == 1


def test_a_large_body_whose_ends_hold_no_usage_is_too_large(pipe: Pipeline) -> None:
    body = b'{"data":"' + b"x" * (12 << 20) + b'"}'
    pipe.respond(CHAT, [("content-type", "application/json")], reads(body))
    assert pipe.records == []
    assert pipe.counters["skipped.body_too_large"] == 1
