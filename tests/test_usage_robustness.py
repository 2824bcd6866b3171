"""Hostile input never raises out of a reader, and never leaves state that spoils the next one."""

from __future__ import annotations

import base64
import json
from itertools import pairwise
from typing import Any
from urllib.parse import unquote

import pytest
from conftest import fixture_bytes, load_expected
from hypothesis import given, settings
from hypothesis import strategies as st
from test_usage_fixtures import assert_matches, run

from cost_middleware.usage.base import Exchange
from cost_middleware.usage.detect import Detector
from cost_middleware.usage.fields import MAX_TOKENS
from cost_middleware.usage.model import Extraction

DETECTOR = Detector(("/custom/*",))
PATHS = (
    "/v1/chat/completions", "/openai/deployments/d1/chat/completions",
    "/openai/v1/chat/completions", "/api/v1/chat/completions", "/chat/completions",
    "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages",
    "/v1/projects/p/locations/l/publishers/anthropic/models/claude-x@1:streamRawPredict",
    "/v1beta/models/gemini-2.5-flash:generateContent",
    "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
    "/v1/projects/p/locations/l/publishers/google/models/g:streamGenerateContent",
    "/model/us.anthropic.claude-x-v1%3A0/converse", "/model/m/converse-stream",
    "/model/m/invoke", "/model/m/invoke-with-response-stream", "/v2/chat", "/api/chat",
    "/api/generate", "/api/embed", "/custom/llm",
)
CONTENT_TYPES = (
    "application/json", "text/event-stream", "application/x-ndjson",
    "application/vnd.amazon.eventstream", "", "application/json; charset=utf-8",
)
ENTRIES = load_expected()


def reader_for(path: str, content_type: str, request_body: bytes | None = None) -> Any:
    raw, _, query = path.partition("?")
    target = DETECTOR.match("POST", unquote(raw))
    assert target is not None, path
    exchange = Exchange("POST", unquote(raw), query, request_body, 200,
                        {"content-type": content_type}, raw)
    return target.open(exchange)


def check_result(result: Extraction | None) -> None:
    """Whatever comes out is internally consistent."""
    if result is None or result.usage is None:
        return
    usage = result.usage
    assert 0 <= usage.cached_input_tokens + usage.cache_write_input_tokens <= usage.input_tokens
    assert 0 <= usage.output_tokens <= MAX_TOKENS and usage.input_tokens <= MAX_TOKENS
    if usage.reasoning_tokens is not None:
        assert usage.reasoning_tokens <= usage.output_tokens


def feed_all(reader: Any, body: bytes, cuts: list[int], complete: bool) -> Extraction | None:
    bounds = [0, *sorted(c for c in cuts if c <= len(body)), len(body)]
    for a, b in pairwise(bounds):
        reader.feed(body[a:b])
    result: Extraction | None = reader.finish(complete)
    return result


@settings(max_examples=200, deadline=None)
@given(
    path=st.sampled_from(PATHS),
    content_type=st.sampled_from(CONTENT_TYPES),
    body=st.binary(max_size=600),
    cuts=st.lists(st.integers(0, 600), max_size=6),
    complete=st.booleans(),
)
def test_arbitrary_bytes_never_raise(path: str, content_type: str, body: bytes,
                                     cuts: list[int], complete: bool) -> None:
    reader = reader_for(path, content_type, request_body=body[:50] or None)
    if reader is not None:
        check_result(feed_all(reader, body, cuts, complete))


# Text that looks like the formats: frames and JSON fragments providers use, shuffled.
_PIECES = (
    b"data: ", b"event: ", b"\n", b"\r\n", b"\n\n", b": ping\n", b"[DONE]", b"{", b"}", b"[",
    b"]", b",", b":", b'"', b'"usage":', b'"usage":{', b'"prompt_tokens":', b'"type":"',
    b"message_start", b"message_delta", b"message_stop", b'"message":', b'"model":"m"',
    b'"choices":[]', b'"usageMetadata":', b'"promptTokenCount":', b'"done":true',
    b'"input_tokens":', b'"output_tokens":', b"12", b"-5", b"1e3", b"true", b"null", b'"7"',
    b"99999999999999999999", b'"finishReason":"STOP"', b'{"error":', b"response.completed",
    b'"response":', b'"bytes":"', base64.b64encode(b'{"type":"message_start"}'), b"chunk",
)


@settings(max_examples=200, deadline=None)
@given(
    path=st.sampled_from(PATHS),
    content_type=st.sampled_from(CONTENT_TYPES[:3]),
    pieces=st.lists(st.sampled_from(_PIECES), max_size=60),
    cuts=st.lists(st.integers(0, 400), max_size=4),
)
def test_format_like_noise_never_raises(path: str, content_type: str, pieces: list[bytes],
                                        cuts: list[int]) -> None:
    reader = reader_for(path, content_type)
    if reader is not None:
        check_result(feed_all(reader, b"".join(pieces), cuts, True))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False,
                                                                      allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


def _poison(obj: Any, value: Any, index: int) -> Any:
    """``obj`` with the ``index``-th dict value found in a walk replaced by ``value``."""
    counter = [index]

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, item in node.items():
                counter[0] -= 1
                out[key] = value if counter[0] == -1 else walk(item)
            return out
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return walk(obj)


JSON_ENTRIES = [e for e in ENTRIES if e["content_type"] == "application/json"
                and e["status"] < 400 and not e["stream"]]


@pytest.mark.parametrize("entry", JSON_ENTRIES, ids=lambda e: e["file"])
@settings(max_examples=40, deadline=None)
@given(value=json_values, index=st.integers(0, 60))
def test_any_value_anywhere_in_a_real_body_never_raises(entry: dict[str, Any], value: Any,
                                                        index: int) -> None:
    """Wrong types, negatives, floats, bools, huge numbers, nested junk at any key."""
    # The stdlib encoder writes integers beyond 64 bits, which orjson refuses to.
    body = json.dumps(_poison(json.loads(fixture_bytes(entry)), value, index)).encode()
    result = run(entry, [body])
    check_result(result)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e["file"])
def test_garbage_readers_leave_no_state_behind(entry: dict[str, Any]) -> None:
    """Readers share no mutable state: after garbage through every kind, a good response
    still extracts exactly."""
    for path in PATHS:
        for content_type in CONTENT_TYPES:
            reader = reader_for(path, content_type)
            if reader is not None:
                reader.feed(b'\x00\xff{"usage": {"prompt_tokens": "x"}}\n\ndata: {"model": 1}\n\n')
                reader.feed(bytes(range(256)))
                reader.finish(False)
    assert_matches(entry, run(entry, [fixture_bytes(entry)]))


SSE_ENTRIES = [e for e in ENTRIES if e["content_type"] == "text/event-stream"]
_NOISE_EVENTS = (
    b": keep-alive\n\n", b"retry: 3000\n\n", b"id: 7\n\n", b"data: 12\n\n", b"data: \"text\"\n\n",
    b"data: not json at all\n\n", b"data: [1, 2]\n\n", b"event: unknown\ndata: null\n\n",
    b"data:\n\n",
)


@pytest.mark.parametrize("entry", SSE_ENTRIES, ids=lambda e: e["file"])
@settings(max_examples=20, deadline=None)
@given(noise=st.lists(st.sampled_from(_NOISE_EVENTS), min_size=1, max_size=12))
def test_good_stream_after_noise_events_still_extracts(entry: dict[str, Any],
                                                        noise: list[bytes]) -> None:
    """Comments, retry/id fields and non-object data events before the provider's events."""
    body = fixture_bytes(entry).replace(b"\r\n", b"\n")
    assert_matches(entry, run(entry, [b"".join(noise), body]))
