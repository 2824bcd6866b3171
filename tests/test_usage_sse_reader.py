"""``SSEReader`` (raw tails, batched reads, names dropped unread) against the full incremental
path (``StreamReader`` over a plain ``SSEDecoder``: every read decoded, every event seen).

Both must give the same ``Extraction`` and skip reason for every SSE fixture and for long
synthetic streams of every family, however the body is cut into reads, complete or not.
"""

from __future__ import annotations

import random
from functools import cache
from itertools import pairwise
from typing import Any
from urllib.parse import unquote

import orjson
import pytest
from conftest import fixture_bytes, load_expected
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cost_middleware.body.sse_decoder import SSEDecoder
from cost_middleware.usage.base import Exchange
from cost_middleware.usage.detect import Detector
from cost_middleware.usage.model import Extraction
from cost_middleware.usage.readers import SSEReader, StreamReader

DETECTOR = Detector()
SSE = "text/event-stream"
EVENTS = 10_000


def open_pair(path: str, request_body: bytes | None = None) -> tuple[SSEReader, StreamReader]:
    """The reader ``open`` gives, and the full path over a stream of its own."""
    raw, _, query = path.partition("?")
    target = DETECTOR.match("POST", unquote(raw))
    assert target is not None, path

    def reader() -> Any:
        exchange = Exchange("POST", unquote(raw), query,
                            request_body if target.needs_request_body else None, 200,
                            {"content-type": SSE}, raw)
        return target.open(exchange)

    fast = reader()
    assert isinstance(fast, SSEReader)
    # The stream object is the family's own; only the way bytes reach it differs.
    return fast, StreamReader(SSEDecoder(), reader()._stream)


def both(path: str, chunks: list[bytes], complete: bool = True,
         request_body: bytes | None = None) -> tuple[Extraction | None, SSEReader]:
    """Run both paths; assert they agree; return the result and the fast reader."""
    fast, full = open_pair(path, request_body)
    for chunk in chunks:
        fast.feed(chunk)
        full.feed(chunk)
    result = fast.finish(complete)
    assert result == full.finish(complete)
    assert fast.skip_reason == full.skip_reason
    return result, fast


def reads(body: bytes, rng: random.Random, low: int, high: int) -> list[bytes]:
    cuts = [0]
    while cuts[-1] < len(body):
        cuts.append(min(len(body), cuts[-1] + rng.randint(low, high)))
    return [body[a:b] for a, b in pairwise(cuts)]


def per_event(body: bytes, end: bytes, split_end: bool) -> list[bytes]:
    """One read per event, as servers write them; or with each blank line cut in two."""
    pieces = [p + end for p in body.split(end)]
    pieces[-1] = pieces[-1][: -len(end)]
    if not split_end:
        return [p for p in pieces if p]
    half = len(end) // 2
    return [part for p in pieces for part in (p[:-half], p[-half:]) if part]


# --- every SSE fixture -------------------------------------------------------------------------

SSE_ENTRIES = [e for e in load_expected() if e["content_type"] == SSE]


def request_body(entry: dict[str, Any]) -> bytes | None:
    body = entry.get("request_body")
    return orjson.dumps(body) if body is not None else None


@pytest.mark.parametrize("entry", SSE_ENTRIES, ids=lambda e: e["file"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fixtures_under_random_chunkings(entry: dict[str, Any], data: st.DataObject) -> None:
    body = fixture_bytes(entry)
    body = body[: data.draw(st.integers(0, len(body)), label="length")]
    cuts = sorted(data.draw(st.sets(st.integers(0, len(body)), max_size=40), label="cuts"))
    chunks = [body[a:b] for a, b in pairwise([0, *cuts, len(body)]) if b > a]
    both(entry["path"], chunks, data.draw(st.booleans(), label="complete"),
         request_body(entry))


@pytest.mark.parametrize("entry", SSE_ENTRIES, ids=lambda e: e["file"])
def test_fixtures_one_read_per_event(entry: dict[str, Any]) -> None:
    body = fixture_bytes(entry)
    end = b"\r\n\r\n" if b"\r\n\r\n" in body else b"\n\n"
    for split_end in (False, True):
        both(entry["path"], per_event(body, end, split_end), True, request_body(entry))


# --- long synthetic streams --------------------------------------------------------------------

CHAT = "/v1/chat/completions"
GROQ = "/openai/v1/chat/completions"
GEMINI = "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
ANTHROPIC = "/v1/messages"
RESPONSES = "/v1/responses"
COHERE = "/v2/chat"
COHERE_REQUEST = b'{"model": "command-a-03-2025", "stream": true}'

Item = tuple[str | None, Any]


def sse(items: list[Item], end: bytes = b"\n\n") -> bytes:
    line = end[: len(end) // 2]
    out = []
    for name, payload in items:
        data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        head = b"event: " + name.encode() + line if name is not None else b""
        out.append(head + b"data: " + data + end)
    return b"".join(out)


CHUNK = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1754469402,
         "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_7e31a2c9d4"}
USAGE = {"prompt_tokens": 1355, "completion_tokens": 98, "total_tokens": 1453,
         "prompt_tokens_details": {"cached_tokens": 1152}}


def delta(i: int, **extra: Any) -> dict[str, Any]:
    return {**CHUNK, "choices": [{"index": 0, "delta": {"content": f" w{i}"},
                                  "finish_reason": None}], "usage": None, **extra}


def chat(after_usage: int = 0, *, done: bool = True, keepalive: int = 0,
         error: int | None = None, huge: int | None = None, vllm: bool = False,
         groq: bool = False) -> list[Item]:
    """An OpenAI-style stream; the usage chunk is followed by ``after_usage`` deltas."""
    items: list[Item] = []
    for i in range(EVENTS):
        chunk = delta(i)
        if vllm:
            chunk["usage"] = {**USAGE, "completion_tokens": i}
        if huge is not None and i == huge:
            chunk["choices"][0]["delta"]["content"] = "x" * 300_000
        items.append((None, chunk))
        if keepalive and i % keepalive == 0:
            items.append((None, b": keep-alive"))
        if error is not None and i == error:
            items.append((None, {"error": {"message": "overloaded", "type": "server_error"}}))
    finish = {**CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop",
                                    **({"stop_reason": None} if vllm else {})}], "usage": None}
    if groq:
        finish["x_groq"] = {"id": "req_1", "usage": {**USAGE, "queue_time": 0.01}}
    tail: list[Item] = [(None, finish), (None, {**CHUNK, "choices": [], "usage": USAGE})]
    items[len(items) - after_usage : len(items) - after_usage] = tail
    if done:
        items.append((None, b"[DONE]"))
    return items


def gemini(*, finish: bool = True) -> list[Item]:
    items: list[Item] = []
    for i in range(EVENTS):
        candidate: dict[str, Any] = {"content": {"parts": [{"text": f" w{i}"}]}, "index": 0}
        if finish and i == EVENTS - 1:
            candidate["finishReason"] = "STOP"
        items.append((None, {"candidates": [candidate], "modelVersion": "gemini-2.5-pro",
                             "usageMetadata": {"promptTokenCount": 2400,
                                               "candidatesTokenCount": i + 1}}))
    return items


def anthropic(*, deltas: int = 1, error: int | None = None, unnamed: bool = False,
              stop: bool = True) -> list[Item]:
    start = {"type": "message_start", "message": {
        "model": "claude-haiku-4-5-20251001", "usage": {
            "input_tokens": 1210, "cache_creation_input_tokens": 100,
            "cache_read_input_tokens": 5430, "output_tokens": 2,
            "cache_creation": {"ephemeral_5m_input_tokens": 100,
                               "ephemeral_1h_input_tokens": 0}}}}
    items: list[Item] = [("message_start", start)]
    for i in range(EVENTS):
        name = None if unnamed and i % 1000 == 7 else "content_block_delta"
        items.append((name, {"type": "content_block_delta", "index": 0,
                             "delta": {"type": "text_delta", "text": f" w{i}"}}))
        if i % 500 == 0:
            items.append(("ping", {"type": "ping"}))
        if deltas > 1 and i % (EVENTS // deltas) == 0:
            items.append(("message_delta", {"type": "message_delta", "delta": {},
                                            "usage": {"input_tokens": 1210 + i}}))
        if error is not None and i == error:
            items.append(("error", {"type": "error", "error": {"type": "overloaded_error"}}))
    items.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                    "usage": {"output_tokens": 187}}))
    if stop:
        items.append(("message_stop", {"type": "message_stop"}))
    return items


def responses() -> list[Item]:
    response = {"id": "resp_1", "object": "response", "model": "o3-2025-04-16", "usage": None}
    items: list[Item] = [("response.created", {"type": "response.created", "response": response})]
    items += [("response.output_text.delta", {"type": "response.output_text.delta",
                                              "delta": f" w{i}"}) for i in range(EVENTS)]
    done: dict[str, Any] = {**response, "usage": {"input_tokens": 10, "output_tokens": 20},
                            "output": []}
    items.append(("response.completed", {"type": "response.completed", "response": done}))
    return items


def cohere() -> list[Item]:
    items: list[Item] = [("message-start", {"type": "message-start", "id": "c1"})]
    items += [("content-delta", {"type": "content-delta", "index": 0,
                                 "delta": {"message": {"content": {"text": f" w{i}"}}}})
              for i in range(EVENTS)]
    items.append(("message-end", {"type": "message-end", "delta": {
        "finish_reason": "COMPLETE",
        "usage": {"billed_units": {"input_tokens": 5, "output_tokens": 7}}}}))
    return items


#: name → (path, builder, line end)
CASES: dict[str, tuple[str, Any, bytes]] = {
    "chat": (CHAT, chat, b"\n\n"),
    "chat_crlf": (CHAT, chat, b"\r\n\r\n"),
    "chat_usage_then_6": (CHAT, lambda: chat(6), b"\n\n"),
    "chat_usage_then_7": (CHAT, lambda: chat(7), b"\n\n"),
    "chat_no_done_keepalive": (CHAT, lambda: chat(done=False, keepalive=3), b"\n\n"),
    "chat_error_midway": (CHAT, lambda: chat(error=5000), b"\n\n"),
    "chat_error_last": (CHAT, lambda: chat(error=EVENTS - 1, done=False), b"\n\n"),
    "chat_huge_event": (CHAT, lambda: chat(huge=6000), b"\n\n"),
    "vllm_continuous": (CHAT, lambda: chat(vllm=True), b"\n\n"),
    "groq_both_usages": (GROQ, lambda: chat(groq=True), b"\n\n"),
    "gemini": (GEMINI, gemini, b"\r\n\r\n"),
    "gemini_unfinished": (GEMINI, lambda: gemini(finish=False), b"\r\n\r\n"),
    "anthropic": (ANTHROPIC, anthropic, b"\n\n"),
    "anthropic_many_deltas": (ANTHROPIC, lambda: anthropic(deltas=4), b"\n\n"),
    "anthropic_error_midway": (ANTHROPIC, lambda: anthropic(error=4000), b"\n\n"),
    "anthropic_unnamed_events": (ANTHROPIC, lambda: anthropic(unnamed=True), b"\n\n"),
    "anthropic_crlf_no_stop": (ANTHROPIC, lambda: anthropic(stop=False), b"\r\n\r\n"),
    "responses": (RESPONSES, responses, b"\n\n"),
    "cohere": (COHERE, cohere, b"\n\n"),
}


@cache
def body_of(case: str) -> bytes:
    _, build, end = CASES[case]
    return sse(build(), end)


@pytest.mark.parametrize("case", CASES)
def test_long_streams_one_read_per_event(case: str) -> None:
    path, _, end = CASES[case]
    result, reader = both(path, per_event(body_of(case), end, False), True, COHERE_REQUEST)
    assert result is not None and result.model is not None
    if case.startswith("chat") and not case.endswith("huge_event"):
        assert reader._tail is not None  # the tail took the stream over


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(sorted(CASES)), seed=st.integers(0, 2**32),
       low=st.integers(64, 8192), span=st.integers(0, 16384),
       length=st.one_of(st.none(), st.floats(0, 1)), complete=st.booleans())
def test_long_streams_under_random_chunkings(case: str, seed: int, low: int, span: int,
                                             length: float | None, complete: bool) -> None:
    path = CASES[case][0]
    body = body_of(case)
    if length is not None:
        body = body[: int(len(body) * length)]
    both(path, reads(body, random.Random(seed), low, low + span), complete, COHERE_REQUEST)


def test_usage_is_looked_for_in_the_last_eight_events_as_before() -> None:
    """The documented limit of OpenAI-style streams holds on the tail path too: usage
    followed by 7 other events ([DONE] included) is found, by 8 it is not."""
    found, _ = both(CHAT, per_event(body_of("chat_usage_then_6"), b"\n\n", False))
    lost, _ = both(CHAT, per_event(body_of("chat_usage_then_7"), b"\n\n", False))
    assert found is not None and found.usage is not None
    assert found.usage.input_tokens == 1355
    assert lost is not None and lost.usage is None


def test_named_events_that_were_dropped_are_not_missed() -> None:
    """Anthropic: an error between dropped deltas still marks the stream partial, and every
    message_delta counts (field by field)."""
    result, _ = both(ANTHROPIC, reads(body_of("anthropic_error_midway"), random.Random(1), 1, 4096))
    assert result is not None and result.partial
    merged, _ = both(ANTHROPIC, [body_of("anthropic_many_deltas")])
    assert merged is not None and merged.usage is not None
    assert merged.usage.input_tokens == 1210 + 3 * (EVENTS // 4) + 5430 + 100
