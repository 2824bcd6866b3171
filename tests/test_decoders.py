"""Incremental decoders: framing rules, chunking invariance, bounded memory, never raising."""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Callable, Iterable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from conftest import fixture_bytes, fixture_chunks, load_expected
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cost_middleware.body.events import (
    BODY_TOO_LARGE,
    EVENTSTREAM_CRC,
    EVENTSTREAM_FRAMING,
    EVENTSTREAM_TOO_LARGE,
    JSON_ARRAY_SYNTAX,
    JSON_ARRAY_TOO_LARGE,
    NDJSON_TOO_LARGE,
    SSE_TOO_LARGE,
    Event,
)
from cost_middleware.body.eventstream import EventStreamDecoder
from cost_middleware.body.json_array import JSONArrayDecoder
from cost_middleware.body.ndjson import NDJSONDecoder
from cost_middleware.body.sse_decoder import SSEDecoder
from cost_middleware.body.sse_tail import TAIL_TRIM_BYTES, SSETail, find_boundary
from cost_middleware.body.whole import BodyBuffer

Decoder = SSEDecoder | NDJSONDecoder | JSONArrayDecoder | EventStreamDecoder
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

EXPECTED = load_expected()
BEDROCK = Path(str(next(e for e in EXPECTED if e["file"].endswith(".eventstream"))["_dir"]))
BEDROCK_STREAM = (BEDROCK / "bedrock_converse_stream.eventstream").read_bytes()


def entries(content_type: str) -> list[dict[str, Any]]:
    return [e for e in EXPECTED if e["content_type"] == content_type and e["stream"]]


def decode(decoder: Decoder, chunks: Iterable[bytes]) -> list[Event]:
    events: list[Event] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events + decoder.close()


def cut(data: bytes, points: Iterable[int]) -> list[bytes]:
    """``data`` split at the given offsets (sorted, deduplicated, clipped)."""
    bounds = [0, *sorted({min(max(p, 0), len(data)) for p in points}), len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]


def assert_every_two_way_split(factory: Callable[[], Decoder], data: bytes) -> list[Event]:
    whole = decode(factory(), [data])
    for i in range(len(data) + 1):
        assert decode(factory(), [data[:i], data[i:]]) == whole, i
    return whole


# --- SSE --------------------------------------------------------------------------------------


def sse(data: bytes, chunks: Iterable[int] = ()) -> list[tuple[str | None, bytes]]:
    return [(e.name, e.data) for e in decode(SSEDecoder(), cut(data, chunks))]


def test_sse_data_lines_with_and_without_space() -> None:
    assert sse(b"data: a\n\ndata:b\n\ndata:  c\n\n") == [(None, b"a"), (None, b"b"), (None, b" c")]


def test_sse_event_names_and_multiline_data() -> None:
    body = b"event: message_start\ndata: {\"a\":1}\n\nevent: delta\ndata: x\ndata: y\ndata:\n\n"
    assert sse(body) == [("message_start", b'{"a":1}'), ("delta", b"x\ny\n")]


def test_sse_comments_id_retry_and_unknown_fields_are_ignored() -> None:
    body = (b": OPENROUTER PROCESSING\n\n:ping\nid: 7\nretry: 100\nfoo: bar\ndata: x\n\n"
            b"id: 8\n\n: only a comment\n\n")
    assert sse(body) == [(None, b"x")]


def test_sse_event_without_data_is_not_dispatched_but_empty_data_is() -> None:
    assert sse(b"event: ping\n\n") == []
    assert sse(b"data\n\n") == [(None, b"")]
    assert sse(b"data:\n\n") == [(None, b"")]
    assert sse(b"event:\ndata: x\n\n") == [(None, b"x")]


def test_sse_name_is_not_carried_to_the_next_event() -> None:
    assert sse(b"event: a\ndata: 1\n\ndata: 2\n\n") == [("a", b"1"), (None, b"2")]


@pytest.mark.parametrize("end", [b"\n", b"\r", b"\r\n"])
def test_sse_line_endings(end: bytes) -> None:
    body = b"event: e" + end + b"data: 1" + end + b"data: 2" + end + end + b"data: 3" + end + end
    expected = [("e", b"1\n2"), (None, b"3")]
    assert sse(body) == expected
    assert_every_two_way_split(SSEDecoder, body)


def test_sse_cr_and_lf_split_across_reads_is_one_line_end() -> None:
    assert sse(b"data: a\r\ndata: b\r\n\r\n", [8]) == [(None, b"a\nb")]
    # CR then CRLF: two line ends, so the event ends there.
    assert sse(b"data: a\r\r\ndata: b\r\n\r\n", [8]) == [(None, b"a"), (None, b"b")]
    # A pending CR survives an empty read.
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\n") == [Event(None, b"a")]


def test_sse_runs_of_blank_lines() -> None:
    body = b"\n\n\ndata: a\n\n\n\n\ndata: b\n\n\n"
    assert sse(body) == [(None, b"a"), (None, b"b")]
    assert_every_two_way_split(SSEDecoder, body)


def test_sse_leading_bom_is_dropped_even_when_split() -> None:
    body = b"\xef\xbb\xbfdata: a\n\n"
    assert sse(body) == [(None, b"a")]
    assert sse(body, [1, 2]) == [(None, b"a")]
    # Only at the start of the stream.
    assert sse(b"data: a\n\n\xef\xbb\xbfdata: b\n\n") == [(None, b"a")]


def test_sse_bytes_are_never_decoded() -> None:
    body = 'data: {"t":"Grüße 👋"}\n\n'.encode()
    assert assert_every_two_way_split(SSEDecoder, body) == [Event(None, body[6:-2])]
    invalid = b"data: \xff\xfe\n\n"
    assert sse(invalid) == [(None, b"\xff\xfe")]


def test_sse_close_exposes_a_cut_last_event_with_data_only() -> None:
    assert sse(b"data: a\n\ndata: {\"usage\":1}") == [(None, b"a"), (None, b'{"usage":1}')]
    assert sse(b"data: a\n\ndata: b\n") == [(None, b"a"), (None, b"b")]
    assert sse(b"data: a\n\nevent: x\n") == [(None, b"a")]
    assert sse(b"data: a\n\n: comment") == [(None, b"a")]
    decoder = SSEDecoder()
    decoder.feed(b"data: x")
    assert decoder.close() == [Event(None, b"x")]
    assert decoder.close() == []


def test_sse_done_sentinel_split_inside() -> None:
    assert sse(b"data: {}\n\ndata: [DONE]\n\n", [16, 19]) == [(None, b"{}"), (None, b"[DONE]")]


def test_sse_oversized_event_stops_the_decoder() -> None:
    decoder = SSEDecoder(max_event_bytes=32)
    assert decoder.feed(b"data: small\n\ndata: " + b"x" * 20) == [Event(None, b"small")]
    assert decoder.feed(b"y" * 20) == []
    assert decoder.error == SSE_TOO_LARGE
    assert decoder.buffered == 0
    assert decoder.feed(b"\n\ndata: later\n\n") == []
    assert decoder.close() == []


def test_sse_oversized_event_in_one_read_is_an_error_too() -> None:
    body = b"data: a\n\ndata: " + b"x" * 40 + b"\n\ndata: b\n\n"
    decoder = SSEDecoder(max_event_bytes=32)
    assert decoder.feed(body) == [Event(None, b"a")]
    assert decoder.error == SSE_TOO_LARGE


def test_sse_lines_without_blank_line_are_bounded() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    for _ in range(20):
        decoder.feed(b": keep-alive\n")
        assert decoder.buffered <= 64
    assert decoder.error == SSE_TOO_LARGE


@pytest.mark.parametrize("entry", entries("text/event-stream"), ids=lambda e: e["file"])
def test_sse_fixtures_split_anywhere(entry: dict[str, Any]) -> None:
    body = fixture_bytes(entry)
    events = assert_every_two_way_split(SSEDecoder, body)
    assert events
    for event in events:
        assert b"\r" not in event.data
        if event.data != b"[DONE]":
            json.loads(event.data)


def test_sse_recorded_network_reads() -> None:
    (entry,) = [e for e in EXPECTED if e.get("transport") == "chunks_b64"]
    chunks = fixture_chunks(entry)
    assert chunks is not None and len(chunks) > 1
    events = decode(SSEDecoder(), chunks)
    assert events == decode(SSEDecoder(), [b"".join(chunks)])
    assert [e.data for e in events][-1] == b"[DONE]"
    assert json.loads(events[1].data)["choices"][0]["delta"]["content"] == "Grüße aus Köln 👋"
    assert json.loads(events[-2].data)["usage"]["prompt_tokens"] == 2210


def test_sse_gemini_crlf_fixture() -> None:
    (entry,) = [e for e in EXPECTED if e["file"] == "gemini_stream.sse"]
    events = decode(SSEDecoder(), [fixture_bytes(entry)])
    assert [json.loads(e.data)["usageMetadata"]["candidatesTokenCount"] for e in events] == [
        12, 140, 265]


def reference_sse(body: bytes) -> list[Event]:
    """A direct, slow transcription of the WHATWG algorithm (plus our close() rule)."""
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    lines = re.split(rb"\r\n|\r|\n", body)
    events: list[Event] = []
    data: list[bytes] = []
    name: bytes = b""
    for line in lines:
        if not line:
            if data:
                events.append(Event(name.decode("utf-8", "replace") or None, b"\n".join(data)))
            data, name = [], b""
            continue
        if line.startswith(b":"):
            continue
        field, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value
    if data:
        events.append(Event(name.decode("utf-8", "replace") or None, b"\n".join(data)))
    return events


SSE_TOKENS = st.sampled_from([
    b"data: ", b"data:", b"data", b"event: ", b"event:", b"id: 1", b"retry: 5", b": c", b":",
    b"\n", b"\n", b"\n\n", b"\r", b"\r\n", b"x", b'{"a": 1}', b"[DONE]", b"\xc3\xbc",
    b"\xf0\x9f\x91\x8b", b"\xef\xbb\xbf", b" ",
])


@FAST
@given(st.lists(SSE_TOKENS, max_size=40).map(b"".join), st.lists(st.integers(0, 400)))
def test_sse_matches_the_reference_under_any_chunking(body: bytes, points: list[int]) -> None:
    decoder = SSEDecoder()
    assert decode(decoder, cut(body, points)) == reference_sse(body)
    assert decoder.error is None


JSON_TOKENS = st.sampled_from(
    [b"[", b"]", b"{", b"}", b'"', b"\\", b",", b" ", b"1", b"x", b"\r\n"]
)
BEDROCK_PREFIXES = st.integers(0, len(BEDROCK_STREAM)).map(lambda n: BEDROCK_STREAM[:n])
CAPPED: list[tuple[type[Decoder], st.SearchStrategy[bytes]]] = [
    (SSEDecoder, SSE_TOKENS), (NDJSONDecoder, SSE_TOKENS), (JSONArrayDecoder, JSON_TOKENS),
    (EventStreamDecoder, BEDROCK_PREFIXES),
]


@FAST
@given(st.data(), st.lists(st.integers(0, 2000)))
def test_size_cap_does_not_depend_on_chunking(data: st.DataObject, points: list[int]) -> None:
    cls, tokens = data.draw(st.sampled_from(CAPPED))
    body = b"".join(data.draw(st.lists(tokens, max_size=60)))
    cap = data.draw(st.integers(4, 300))
    whole, chunked = cls(max_event_bytes=cap), cls(max_event_bytes=cap)
    assert decode(whole, [body]) == decode(chunked, cut(body, points))
    assert whole.error == chunked.error


# --- SSE: dropping names, starting mid-stream, the raw tail -----------------------------------

KEEP = frozenset({"keep"})
#: Blocks as providers of named events write them, with the odd irregular one.
NAMED_BLOCKS = st.one_of(
    st.tuples(
        st.sampled_from([b"event: keep", b"event: drop", b"event: ", b"event:keep",
                         b"event: drop ", b"event: ping"]),
        st.sampled_from([b"data: {}", b"data: x", b"data:y", b"data", b": c", b"id: 1",
                         b"event: keep", b"data: [DONE]", b'data: {"t": "event: keep"}']),
    ).map(b"\n".join),
    st.sampled_from([b"data: 1", b": ping", b"data: a\ndata: b", b"",
                     b"event: keep\nevent: drop\ndata: z", b"event: drop\ndata: 1\ndata: 2",
                     b"\xef\xbb\xbfevent: keep\ndata: 0"]),
)
#: Bodies of a few blocks, or of hundreds (reads of many events are framed differently).
NAMED_STREAMS = st.tuples(
    st.lists(NAMED_BLOCKS, max_size=30),
    st.sampled_from([1, 1, 40]),
    st.sampled_from([b"\n\n", b"\n\n", b"\n\n", b"\r\n\r\n", b"\n\n\n", b"\r\r"]),
    st.sampled_from([b"", b"\n\n", b"event: keep\nda"]),
).map(lambda t: t[2].join(t[0] * t[1]) + t[3])


@FAST
@given(NAMED_STREAMS, st.lists(st.integers(0, 600)))
def test_sse_keep_drops_exactly_the_other_names(body: bytes, points: list[int]) -> None:
    decoder = SSEDecoder(keep=KEEP)
    expected = [e for e in reference_sse(body) if e.name is None or e.name in KEEP]
    assert decode(decoder, cut(body, points)) == expected
    assert decoder.error is None


def test_sse_keep_reads_of_regular_named_blocks() -> None:
    names = [b"drop", b"keep", b"ping", b"keep", b"", b"drop"] + [b"drop"] * 100
    body = b"".join(b"event: %s\ndata: {\"i\": %d}\n\n" % (name, i)
                    for i, name in enumerate(names))
    assert SSEDecoder(keep=KEEP)._named(body, KEEP) is not None  # by columns, not by blocks
    events = decode(SSEDecoder(keep=KEEP), [body, b"event: keep\ndata: 9"])
    assert events == [Event("keep", b'{"i": 1}'), Event("keep", b'{"i": 3}'),
                      Event(None, b'{"i": 4}'), Event("keep", b"9")]


@FAST
@given(st.lists(SSE_TOKENS, max_size=60).map(b"".join), st.data())
def test_sse_decoding_may_start_after_any_boundary_found(body: bytes, data: st.DataObject) -> None:
    offset = data.draw(st.integers(0, len(body)))
    found = find_boundary(body[offset:])
    if found is None:
        assert b"\n\n" not in body[offset:] and b"\r\n\r\n" not in body[offset:]
        return
    start = offset + found[0]
    whole = reference_sse(body)
    rest = decode(SSEDecoder(mid_stream=True), [body[start:]])
    assert rest == whole[len(whole) - len(rest):]


TAIL_BLOCKS = st.sampled_from([
    b"data: 1", b'data: {"a": 2}', b"data: [DONE]", b": keep-alive", b"id: 7\ndata: 3",
    b"data: x\ndata: y", b"event: e\ndata: 4", b"retry: 1", b"data:", b"", b"data: " + b"z" * 90,
    b"data: " + b"w" * 700,
])


@FAST
@given(
    st.lists(TAIL_BLOCKS, max_size=80),
    st.sampled_from([b"\n\n", b"\n\n", b"\r\n\r\n", b"\n\n\n", b"\r\n\n"]),
    st.sampled_from([b"", b"\n\n", b"data: cut"]),
    st.integers(1, 9), st.integers(1, 400), st.integers(1, 800), st.integers(8, 3000),
    st.lists(st.integers(0, 60000), max_size=60),
)
def test_sse_tail_returns_the_last_events_a_decoder_returns(
    blocks: list[bytes], end: bytes, last: bytes, count: int, trim: int, limit: int, cap: int,
    points: list[int],
) -> None:
    """From a boundary on, the tail's events are the decoder's last ones (at least ``count``,
    or all); when it gives up, ``resume`` carries on exactly as the decoder would from the
    events it still holds."""
    body = end.join(blocks) + last
    found = find_boundary(body)
    assume(found is not None)
    assert found is not None
    start, sep = found
    rest = body[start:]
    decoder = SSEDecoder(cap, mid_stream=True)
    expected = decode(decoder, [rest])
    chunks = cut(rest, points)
    tail = SSETail(sep, count, cap, trim_bytes=trim, open_limit=limit)
    for i, chunk in enumerate(chunks):
        if not tail.feed(chunk):
            resumed, held = tail.resume()
            events = held + decode(resumed, chunks[i + 1 :])
            assert events == expected[len(expected) - len(events):]
            assert len(held) >= count or events == expected
            assert resumed.error == decoder.error
            return
    assert decoder.error is None
    events = tail.events()
    assert events == expected[len(expected) - len(events):]
    assert len(events) >= count or events == expected


def test_sse_tail_of_a_long_stream_stays_small() -> None:
    event = b'data: {"choices": [{"delta": {"content": " word"}}], "usage": null}\n\n'
    tail = SSETail(b"\n\n", 8)
    most = 0
    for i in range(10_000):
        assert tail.feed(event if i % 7 else event + b": ping\n\n")
        most = max(most, tail.buffered)
    assert most <= TAIL_TRIM_BYTES + 9 * len(event) + 20
    events = tail.events()
    assert len(events) >= 8 and all(e.data == event[6:-2] for e in events)


def test_sse_tail_gives_up_on_an_event_near_the_cap() -> None:
    tail = SSETail(b"\n\n", 2, max_event_bytes=1000, trim_bytes=100)
    assert tail.feed(b"data: 1\n\ndata: 2\n\n")
    fed = [b"data: " + b"x" * 200 for _ in range(3)]
    assert all(tail.feed(chunk) for chunk in fed[:2])
    assert not tail.feed(fed[2])
    decoder, events = tail.resume()
    assert events == [Event(None, b"1"), Event(None, b"2")]
    assert decoder.feed(b"x" * 400) == []
    assert decoder.error == SSE_TOO_LARGE


# --- NDJSON -----------------------------------------------------------------------------------


def ndjson(data: bytes, chunks: Iterable[int] = ()) -> list[bytes]:
    events = decode(NDJSONDecoder(), cut(data, chunks))
    assert all(e.name is None for e in events)
    return [e.data for e in events]


def test_ndjson_lines_crlf_and_blank_lines() -> None:
    body = b'{"a":1}\n\n{"b":2}\r\n \t\r\n\r\n{"c":3}\n'
    assert ndjson(body) == [b'{"a":1}', b'{"b":2}', b'{"c":3}']


def test_ndjson_final_line_without_newline_comes_at_close() -> None:
    decoder = NDJSONDecoder()
    assert decoder.feed(b'{"a":1}\n{"done":') == [Event(None, b'{"a":1}')]
    assert decoder.feed(b"true}") == []
    assert decoder.close() == [Event(None, b'{"done":true}')]
    assert decoder.close() == []


def test_ndjson_oversized_line() -> None:
    decoder = NDJSONDecoder(max_event_bytes=8)
    assert decoder.feed(b"1\n" + b"2" * 20) == [Event(None, b"1")]
    assert decoder.error == NDJSON_TOO_LARGE
    assert decoder.buffered == 0
    assert decoder.feed(b"\n3\n") == []


@pytest.mark.parametrize("entry", entries("application/x-ndjson"), ids=lambda e: e["file"])
def test_ndjson_fixtures_split_anywhere(entry: dict[str, Any]) -> None:
    events = assert_every_two_way_split(NDJSONDecoder, fixture_bytes(entry))
    assert json.loads(events[-1].data)["done"] is True


NDJSON_TOKENS = st.sampled_from(
    [b"\n", b"\r\n", b"\r", b" ", b"{}", b'{"a":"\xc3\xbc"}', b"1", b"\t"]
)


@FAST
@given(st.lists(NDJSON_TOKENS, max_size=40).map(b"".join), st.lists(st.integers(0, 200)))
def test_ndjson_chunking_invariance(body: bytes, points: list[int]) -> None:
    expected = [line.rstrip(b"\r") for line in body.split(b"\n") if line.strip()]
    assert ndjson(body, points) == expected


# --- JSON array -------------------------------------------------------------------------------


def array(data: bytes, chunks: Iterable[int] = ()) -> list[bytes]:
    return [e.data for e in decode(JSONArrayDecoder(), cut(data, chunks))]


def test_json_array_gemini_style() -> None:
    body = (b'[{"candidates": [{"text": "a"}]}\r\n,\r\n'
            b'{"usageMetadata": {"promptTokenCount": 3}}\r\n]')
    assert array(body) == [b'{"candidates": [{"text": "a"}]}',
                           b'{"usageMetadata": {"promptTokenCount": 3}}']


def test_json_array_strings_with_brackets_quotes_and_escapes() -> None:
    elements = [rb'{"t": "]}[{,\"\\"}', rb'{"t": "\\\\"}', rb'{"t": "\\\""}', rb'["}", "\\"]',
                rb'"]"']
    body = b"[" + b" ,\n".join(elements) + b"]"
    assert assert_every_two_way_split(JSONArrayDecoder, body) == [Event(None, e) for e in elements]
    for element in elements:
        json.loads(element)


def test_json_array_scalars_and_empty() -> None:
    assert array(b"[1, -2.5e3,true ,false,null,\"s\"]") == [
        b"1", b"-2.5e3", b"true", b"false", b"null", b'"s"']
    assert array(b"  [ ]  ") == []
    assert array(b"[{},]") == [b"{}"]


def test_json_array_is_emitted_as_soon_as_complete() -> None:
    decoder = JSONArrayDecoder()
    assert decoder.feed(b'[{"a": [1, {"b": "}"}') == []
    assert decoder.feed(b"]}") == [Event(None, b'{"a": [1, {"b": "}"}]}')]
    assert decoder.feed(b",\r\n") == []
    assert decoder.buffered == 0
    assert decoder.feed(b"3") == []  # a number may go on
    assert decoder.feed(b"]") == [Event(None, b"3")]
    assert decoder.done
    assert decoder.feed(b"garbage") == []
    assert decoder.error is None


@pytest.mark.parametrize("body", [b'{"error": {}}', b"[1 2]", b"[,1]", b"[}", b"x"])
def test_json_array_syntax_errors(body: bytes) -> None:
    decoder = JSONArrayDecoder()
    decode(decoder, [body])
    assert decoder.error == JSON_ARRAY_SYNTAX


def test_json_array_cut_stream_yields_complete_elements_only() -> None:
    assert array(b'[{"a": 1}, {"b": ') == [b'{"a": 1}']
    assert array(b"[1, 23") == [b"1"]


def test_json_array_oversized_element() -> None:
    decoder = JSONArrayDecoder(max_event_bytes=16)
    assert decoder.feed(b'[{"a": 1}, {"b": "') == [Event(None, b'{"a": 1}')]
    decoder.feed(b"x" * 20)
    assert decoder.error == JSON_ARRAY_TOO_LARGE
    assert decoder.buffered == 0


def test_json_array_long_string_is_scanned_incrementally() -> None:
    decoder = JSONArrayDecoder()
    decoder.feed(b'[{"t": "')
    for _ in range(200):
        assert decoder.feed(b"\\\\" + b"x" * 100) == []
    assert decoder.feed(b'"}]') != []


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.sampled_from('ab"\\[]{},: \n\tü👋/')),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(alphabet=st.sampled_from('k"\\]}'), max_size=3), inner, max_size=4),
    max_leaves=12,
)


@FAST
@given(st.lists(JSON_VALUES, max_size=6), st.sampled_from([None, 1, 2]),
       st.sampled_from([",", ",\r\n", " ,\n  "]), st.lists(st.integers(0, 2000)))
def test_json_array_elements_round_trip(values: list[Any], indent: int | None, sep: str,
                                        points: list[int]) -> None:
    texts = [json.dumps(v, indent=indent, ensure_ascii=False) for v in values]
    body = ("[" + sep.join(texts) + "\n]").encode()
    decoder = JSONArrayDecoder()
    events = decode(decoder, cut(body, points))
    assert decoder.error is None and decoder.done
    assert [json.loads(e.data) for e in events] == values


def reference_array(body: bytes, cap: int) -> tuple[list[bytes], str | None]:
    """The framing rules of ``JSONArrayDecoder``, transcribed one byte at a time."""
    n = len(body)
    out: list[bytes] = []

    def blank(i: int) -> int:
        while i < n and body[i] in b" \t\r\n":
            i += 1
        return i

    i = blank(0)
    if i == n:
        return out, None
    if body[i] != ord("["):
        return out, JSON_ARRAY_SYNTAX
    i += 1
    value_next = True
    while True:
        i = blank(i)
        if i == n:
            return out, None
        c = body[i]
        if c == ord("]"):
            return out, None
        if not value_next:
            if c != ord(","):
                return out, JSON_ARRAY_SYNTAX
            value_next = True
            i += 1
            continue
        start = i
        if c in b"{[\"":
            depth = 0
            in_string = c == ord('"')
            i += 1
            if not in_string:
                depth = 1
            while i < n and (depth or in_string):
                b = body[i]
                if in_string:
                    if b == ord("\\"):
                        i += 1
                    elif b == ord('"'):
                        in_string = False
                elif b == ord('"'):
                    in_string = True
                elif b in b"[{":
                    depth += 1
                elif b in b"]}":
                    depth -= 1
                i += 1
            if depth or in_string:
                return out, JSON_ARRAY_TOO_LARGE if n - start > cap else None
        elif c in b"-0123456789tfn":
            while i < n and body[i] not in b",] \t\r\n\x0b\x0c\x1c\x1d\x1e\x1f":
                i += 1
            if i == n:
                return out, JSON_ARRAY_TOO_LARGE if n - start > cap else None
        else:
            return out, JSON_ARRAY_SYNTAX
        if i - start > cap:
            return out, JSON_ARRAY_TOO_LARGE
        out.append(body[start:i])
        value_next = False


INDENTED_ELEMENTS = st.one_of(
    JSON_VALUES.map(lambda v: json.dumps({"v": v}, indent=2, ensure_ascii=False).encode()),
    st.sampled_from([
        b'{\n"a": 1}', b'{\n"a": {\n}\n}', b'{\n"a": "\\n}"\n}', b'{\r\n  "a": [1]\r\n}',
        b'{\n  "a": NaN\n}', b'{\n"a": "x\n}"\n}', b'{\n}', b'{"a": 2}', b"[\n1\n]", b"7", b'"s"',
        b'{\n"a": 1\n}}', b'{\n"a": [\n}\n', b"{\n\n}", b'{\n "big": "' + b"b" * 300 + b'"\n}',
    ]),
)


@FAST
@given(st.lists(INDENTED_ELEMENTS, max_size=8), st.sampled_from([b",", b",\r\n", b"\n,\n", b" "]),
       st.sampled_from([b"]", b"\n]", b"", b",]"]), st.integers(40, 4000),
       st.lists(st.integers(0, 5000), max_size=12))
def test_json_array_matches_the_reference_under_any_chunking(
    elements: list[bytes], sep: bytes, end: bytes, cap: int, points: list[int]
) -> None:
    """Indented objects have their end guessed: events and errors are the scan's all the same."""
    body = b"[\n" + sep.join(elements) + end
    decoder = JSONArrayDecoder(max_event_bytes=cap)
    events = decode(decoder, cut(body, points))
    expected, error = reference_array(body, cap)
    assert [e.data for e in events] == expected
    assert decoder.error == error


def test_json_array_guess_that_is_wrong_is_scanned() -> None:
    decoder = JSONArrayDecoder()
    # No line starts with ``}``: nothing to guess from, so the end comes when the input ends.
    assert decoder.feed(b'[{\n"a": 1},') == []
    assert decoder.feed(b'{\n"b": 2\n}') == [Event(None, b'{\n"a": 1}'),
                                             Event(None, b'{\n"b": 2\n}')]
    assert decoder.feed(b',{\n"c": 3}]') == []
    assert decoder.close() == [Event(None, b'{\n"c": 3}')]
    assert decoder.done


# --- AWS event-stream -------------------------------------------------------------------------


def header(name: str, kind: int, value: bytes = b"") -> bytes:
    encoded = name.encode()
    if kind in (6, 7):
        value = struct.pack(">H", len(value)) + value
    return bytes([len(encoded)]) + encoded + bytes([kind]) + value


def message(headers: bytes, payload: bytes) -> bytes:
    total = 12 + len(headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(headers))
    body = prelude + struct.pack(">I", zlib.crc32(prelude)) + headers + payload
    return body + struct.pack(">I", zlib.crc32(body))


def event_headers(event_type: str) -> bytes:
    return (header(":event-type", 7, event_type.encode())
            + header(":content-type", 7, b"application/json")
            + header(":message-type", 7, b"event"))


def test_eventstream_fixture() -> None:
    events = assert_every_two_way_split(EventStreamDecoder, BEDROCK_STREAM)
    assert [e.name for e in events] == [
        "messageStart", "contentBlockDelta", "contentBlockDelta", "contentBlockDelta",
        "contentBlockStop", "messageStop", "metadata"]
    assert json.loads(events[-1].data)["usage"]["outputTokens"] == 48


@FAST
@given(st.lists(st.integers(0, len(BEDROCK_STREAM))))
def test_eventstream_random_chunking(points: list[int]) -> None:
    decoder = EventStreamDecoder()
    assert decode(decoder, cut(BEDROCK_STREAM, points)) == decode(EventStreamDecoder(),
                                                                  [BEDROCK_STREAM])
    assert decoder.error is None
    assert decoder.buffered == 0


def test_eventstream_exception_and_error_frames() -> None:
    exception = message(header(":exception-type", 7, b"throttlingException")
                        + header(":content-type", 7, b"application/json")
                        + header(":message-type", 7, b"exception"), b'{"message":"slow down"}')
    error = message(header(":error-code", 7, b"InternalFailure")
                    + header(":error-message", 7, b"boom") + header(":message-type", 7, b"error"),
                    b"")
    events = decode(EventStreamDecoder(), [exception + error])
    assert [(e.name, e.data) for e in events] == [
        ("exception:throttlingException", b'{"message":"slow down"}'),
        ("error:InternalFailure", b""),
    ]


def test_eventstream_every_header_type() -> None:
    headers = (header("t", 0) + header("f", 1) + header("b", 2, b"\x01")
               + header("s", 3, b"\x00\x02")
               + header("i", 4, b"\x00" * 4) + header("l", 5, b"\x00" * 8)
               + header("bytes", 6, b"\x00\xff") + header("ts", 8, b"\x00" * 8)
               + header("u", 9, b"\x11" * 16) + header(":event-type", 7, "chünk".encode()))
    assert decode(EventStreamDecoder(), [message(headers, b"{}")]) == [Event("chünk", b"{}")]
    assert decode(EventStreamDecoder(), [message(b"", b"x")]) == [Event(None, b"x")]


@pytest.mark.parametrize("offset", [0, 3, 5, 9, 20, 60, -8, -1])
def test_eventstream_corruption_is_detected(offset: int) -> None:
    corrupt = bytearray(BEDROCK_STREAM)
    corrupt[offset] ^= 0x40
    decoder = EventStreamDecoder()
    events = decode(decoder, [bytes(corrupt)])
    assert decoder.error == EVENTSTREAM_CRC
    assert len(events) == (6 if offset < 0 else 0)
    assert decoder.feed(BEDROCK_STREAM) == []


def test_eventstream_absurd_length_is_refused_before_buffering() -> None:
    prelude = struct.pack(">II", 1 << 31, 10)
    decoder = EventStreamDecoder(max_event_bytes=1 << 20)
    decoder.feed(prelude + struct.pack(">I", zlib.crc32(prelude)) + b"x" * 100)
    assert decoder.error == EVENTSTREAM_TOO_LARGE
    assert decoder.buffered == 0


@pytest.mark.parametrize("total, headers_len", [(15, 0), (20, 5)])
def test_eventstream_impossible_lengths(total: int, headers_len: int) -> None:
    prelude = struct.pack(">II", total, headers_len)
    decoder = EventStreamDecoder()
    decoder.feed(prelude + struct.pack(">I", zlib.crc32(prelude)) + b"\x00" * 20)
    assert decoder.error == EVENTSTREAM_FRAMING


@pytest.mark.parametrize("headers", [header("x", 10), b"\x05ab", header("s", 7, b"abc")[:-1],
                                     header("i", 4, b"\x00")])
def test_eventstream_bad_headers(headers: bytes) -> None:
    decoder = EventStreamDecoder()
    assert decode(decoder, [message(headers, b"{}")]) == []
    assert decoder.error == EVENTSTREAM_FRAMING


def test_eventstream_large_message_in_small_reads() -> None:
    payload = json.dumps({"t": "x" * 300_000}).encode()
    data = message(event_headers("contentBlockDelta"), payload)
    decoder = EventStreamDecoder()
    assert decode(decoder, cut(data, range(0, len(data), 1000))) == [
        Event("contentBlockDelta", payload)]


# --- every stream fixture, any chunking ------------------------------------------------------

STREAM_DECODERS: dict[str, Callable[[], Decoder]] = {
    "text/event-stream": SSEDecoder, "application/x-ndjson": NDJSONDecoder,
    "application/vnd.amazon.eventstream": EventStreamDecoder,
}
STREAM_FIXTURES = [e for e in EXPECTED if e["stream"] and e["content_type"] in STREAM_DECODERS]


def test_every_stream_fixture_is_covered() -> None:
    assert {e["content_type"] for e in STREAM_FIXTURES} == set(STREAM_DECODERS)


@FAST
@given(st.sampled_from(STREAM_FIXTURES), st.lists(st.integers(0, 6000), max_size=80))
def test_stream_fixtures_under_random_chunking(entry: dict[str, Any], points: list[int]) -> None:
    factory = STREAM_DECODERS[entry["content_type"]]
    body = fixture_bytes(entry)
    decoder = factory()
    assert decode(decoder, cut(body, points)) == decode(factory(), [body])
    assert decoder.error is None


# --- every decoder: arbitrary bytes -----------------------------------------------------------

FACTORIES: list[Callable[[int], Decoder]] = [
    lambda m: SSEDecoder(max_event_bytes=m), lambda m: NDJSONDecoder(max_event_bytes=m),
    lambda m: JSONArrayDecoder(max_event_bytes=m), lambda m: EventStreamDecoder(max_event_bytes=m),
]


@FAST
@given(st.sampled_from(FACTORIES), st.integers(16, 256),
       st.lists(st.binary(max_size=300) | SSE_TOKENS | st.just(BEDROCK_STREAM[:150]), max_size=30))
def test_arbitrary_bytes_never_raise_and_stay_bounded(
    factory: Callable[[int], Decoder], cap: int, chunks: list[bytes]
) -> None:
    decoder = factory(cap)
    for chunk in chunks:
        for event in decoder.feed(chunk):
            assert isinstance(event.data, bytes)
        assert decoder.buffered <= cap
    decoder.close()
    assert decoder.error is None or isinstance(decoder.error, str)


# --- BodyBuffer -------------------------------------------------------------------------------


def test_body_buffer() -> None:
    body = BodyBuffer(max_bytes=10)
    body.feed(b"abc")
    assert body.close() == b"abc"
    body = BodyBuffer(max_bytes=10)
    for part in (b"ab", b"", b"cdef"):
        body.feed(part)
    assert body.buffered == 6
    assert body.close() == b"abcdef"
    assert BodyBuffer().close() == b""


def test_body_buffer_cap() -> None:
    body = BodyBuffer(max_bytes=4)
    body.feed(b"abc")
    body.feed(b"de")
    assert body.error == BODY_TOO_LARGE
    assert body.buffered == 0
    body.feed(b"f")
    assert body.close() is None


def test_body_buffer_cap_is_set_before_the_first_read() -> None:
    body = BodyBuffer(max_bytes=100)
    body.cap(4)
    body.feed(b"abcde")
    assert body.error == BODY_TOO_LARGE
    fed = BodyBuffer(max_bytes=100)
    fed.feed(b"ab")
    with pytest.raises(RuntimeError):
        fed.cap(4)
    over = BodyBuffer(max_bytes=4)
    over.feed(b"abcde")  # over the cap: nothing held, but read
    with pytest.raises(RuntimeError):
        over.cap(100)
