"""The framework-free tee, driven directly: a real tracker, real detector targets, real bodies."""

from __future__ import annotations

import gzip
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from time import perf_counter

import pytest
from conftest import CORPUS_FIXTURES

from cost_middleware.capture import MAX_REQUEST_BODY, Capture
from cost_middleware.config import Settings
from cost_middleware.context import MAX_ROUTE, RequestContext
from cost_middleware.engine.tracker import CostTracker
from cost_middleware.records import CostRecord, new_record_id
from cost_middleware.usage.base import Exchange, Reader, Target
from cost_middleware.usage.model import Extraction

CHAT = "/v1/chat/completions"
JSON = [("Content-Type", "application/json")]
SSE = [("content-type", "text/event-stream")]
OPENAI_CHAT = (CORPUS_FIXTURES / "openai_chat.json").read_bytes()
OPENAI_STREAM = (CORPUS_FIXTURES / "openai_chat_stream.sse").read_bytes()
ANTHROPIC_STREAM = (CORPUS_FIXTURES / "anthropic_messages_stream.sse").read_bytes()
COHERE_CHAT = (CORPUS_FIXTURES / "cohere_chat_v2.json").read_bytes()


class Pipeline:
    """A real tracker whose records are collected instead of queued."""

    def __init__(self, tmp: Path, **overrides: object) -> None:
        # Counters only aggregate with StatsD on; the discard port receives what close() sends.
        values: dict[str, object] = {
            "statsd_host": "127.0.0.1", "statsd_port": 9,
            "database_url": f"sqlite:///{tmp / 'cost.db'}", "spool_dir": str(tmp / "spool"),
        }
        values.update(overrides)
        self.tracker = CostTracker(Settings(**values))  # type: ignore[arg-type]
        self.records: list[CostRecord] = []
        self.tracker.record = self.records.append  # type: ignore[method-assign, assignment]

    def context(self, path: str = CHAT,
                headers: list[tuple[bytes, bytes]] | None = None) -> RequestContext:
        return RequestContext(self.tracker, "POST", path,
                              [(b"x-tenant-id", b"acme"), (b"x-request-id", b"req-1")]
                              if headers is None else headers, perf_counter())

    def target(self, path: str = CHAT) -> Target:
        target = self.tracker.detector.match("POST", path)
        assert target is not None, path
        return target

    def capture(self, path: str = CHAT, *, context: RequestContext | None = None,
                target: Target | None = None, client_call: bool = False) -> Capture:
        return Capture(context or self.context(path), target or self.target(path), path, "",
                       None, client_call=client_call)

    @property
    def counters(self) -> dict[str, float]:
        return self.tracker.metrics.snapshot()["counters"]

    @property
    def timings(self) -> dict[str, list[float]]:
        return self.tracker.metrics.snapshot()["timings"]


#: Builds a :class:`Pipeline` with settings overridden (``make_pipe``).
MakePipe = Callable[..., Pipeline]


@pytest.fixture
def make_pipe(tmp_path: Path) -> Iterator[MakePipe]:
    """Pipelines with settings overridden; their trackers are closed afterwards."""
    made: list[Pipeline] = []

    def make(**overrides: object) -> Pipeline:
        made.append(Pipeline(tmp_path / str(len(made)), **overrides))
        return made[-1]

    yield make
    for p in made:
        p.tracker.close()


@pytest.fixture
def pipe(make_pipe: MakePipe) -> Pipeline:
    return make_pipe()


class Watched:
    """A real target whose ``open`` calls are noted (when, and with which exchange)."""

    def __init__(self, target: Target, events: list[str]) -> None:
        self.provider = target.provider
        self.api = target.api
        self.needs_request_body = target.needs_request_body
        self._target = target
        self.events = events
        self.exchanges: list[Exchange] = []

    def open(self, exchange: Exchange) -> Reader | None:
        self.events.append("open")
        self.exchanges.append(exchange)
        return self._target.open(exchange)


class BrokenReader:
    """A reader with a bug in ``feed`` or ``finish``."""

    skip_reason: str | None = None

    def __init__(self, fail_in: str) -> None:
        self.fail_in = fail_in

    def feed(self, chunk: bytes) -> None:
        if self.fail_in == "feed":
            raise KeyError("a bug in a reader")

    def finish(self, complete: bool) -> Extraction | None:
        if self.fail_in == "finish":
            raise ZeroDivisionError("a bug in a reader")
        return None


class BrokenTarget:
    provider = "openai"
    api = "chat_completions"
    needs_request_body = False

    def __init__(self, fail_in: str) -> None:
        self.fail_in = fail_in

    def open(self, exchange: Exchange) -> Reader | None:
        if self.fail_in == "open":
            raise ValueError("a bug in a target")
        return BrokenReader(self.fail_in)


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def respond(capture: Capture, body: bytes | list[bytes],
            headers: list[tuple[str, str]] = JSON, status: int = 200, *,
            complete: bool = True, route: str | None = None) -> None:
    """One response through ``capture``, as an adapter drives it: start, chunks, end."""
    capture.response_start(status, headers)
    for chunk in [body] if isinstance(body, bytes) else body:
        capture.response_body(chunk)
    capture.finish(complete, route)


# -- when the reader opens ----------------------------------------------------------------


def test_the_reader_opens_after_the_first_body_chunk_not_at_response_start(
        pipe: Pipeline) -> None:
    events: list[str] = []
    target = Watched(pipe.target(), events)
    capture = pipe.capture(target=target)
    capture.response_start(200, [("Content-Type", "application/json"), ("X-Other", "1")])
    assert events == [] and capture.status == 200
    for piece in chunks(OPENAI_CHAT, 50):
        events.append("chunk")
        capture.response_body(piece)
    capture.finish(True)
    assert events[:2] == ["chunk", "open"] and events.count("open") == 1
    exchange = target.exchanges[0]
    assert exchange.status == 200 and exchange.path == CHAT and exchange.method == "POST"
    # Header names reach the reader lower-cased.
    assert exchange.response_headers == {"content-type": "application/json", "x-other": "1"}
    assert exchange.request_body is None
    [record] = pipe.records
    assert record.model == "gpt-4o-2024-08-06" and record.usage is not None
    assert record.usage.input_tokens == 2006 and record.usage.cached_input_tokens == 1920
    assert record.usage.output_tokens == 300


def test_a_response_without_body_chunks_is_opened_at_finish(pipe: Pipeline) -> None:
    events: list[str] = []
    target = Watched(pipe.target(), events)
    capture = pipe.capture(target=target)
    capture.response_start(200, JSON)
    capture.finish(True)
    assert events == ["open"]
    assert pipe.records == []
    assert pipe.counters["skipped.invalid_json"] == 1


def test_the_record_carries_the_request_attribution(pipe: Pipeline) -> None:
    respond(pipe.capture(), OPENAI_CHAT, route="/v1/{rest:path}")
    [record] = pipe.records
    assert (record.provider, record.api) == ("openai", "chat_completions")
    assert (record.tenant, record.request_id, record.method) == ("acme", "req-1", "POST")
    assert record.route == "/v1/{rest:path}" and record.status_code == 200
    assert record.streamed is False and record.partial is False
    assert record.latency_ms is not None and record.latency_ms > 0
    assert record.cost_usd is None  # priced later, by the worker


def test_without_a_route_template_the_path_is_the_route_capped(pipe: Pipeline) -> None:
    long_path = "/proxy/" + "x" * MAX_ROUTE + CHAT
    respond(pipe.capture(long_path, context=pipe.context(long_path, headers=[])), OPENAI_CHAT)
    [record] = pipe.records
    assert record.route == long_path[:MAX_ROUTE]
    # No attribution headers: no tenant, a generated request id.
    assert record.tenant is None and record.request_id and len(record.request_id) == 32


def test_overhead_and_extraction_are_timed_once(pipe: Pipeline) -> None:
    capture = pipe.capture()
    respond(capture, OPENAI_CHAT)
    capture.finish(True)
    timings = pipe.timings
    assert len(timings["request.overhead"]) == 1 and len(timings["extract.duration"]) == 1
    assert timings["request.overhead"][0] >= timings["extract.duration"][0] > 0


# -- skips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 429, 500, 529])
def test_error_statuses_are_skipped_and_counted(pipe: Pipeline, status: int) -> None:
    events: list[str] = []
    capture = pipe.capture(target=Watched(pipe.target(), events))
    respond(capture, b'{"error": {"message": "slow down"}, "usage": '
                     b'{"prompt_tokens": 1, "completion_tokens": 1}}', JSON, status)
    # The endpoint's reader is what says an error status is no billed call; nothing is fed.
    assert events == ["open"] and pipe.records == []
    assert capture.status == status
    assert pipe.counters["skipped.error_status"] == 1
    assert "extract.duration" not in pipe.timings


def test_a_399_is_still_read(pipe: Pipeline) -> None:
    respond(pipe.capture(), OPENAI_CHAT, JSON, 399)
    assert len(pipe.records) == 1 and pipe.records[0].status_code == 399
    assert "skipped.error_status" not in pipe.counters


def test_a_body_over_max_body_bytes_is_skipped(make_pipe: MakePipe) -> None:
    pipe = make_pipe(max_body_bytes=len(OPENAI_CHAT) - 1)
    respond(pipe.capture(), chunks(OPENAI_CHAT, 100))
    assert pipe.records == []
    assert pipe.counters["skipped.body_too_large"] == 1


def test_a_body_of_exactly_max_body_bytes_is_read(make_pipe: MakePipe) -> None:
    pipe = make_pipe(max_body_bytes=len(OPENAI_CHAT))
    respond(pipe.capture(), chunks(OPENAI_CHAT, 100))
    assert len(pipe.records) == 1 and "skipped.body_too_large" not in pipe.counters


def test_streams_are_not_held_to_the_body_cap(make_pipe: MakePipe) -> None:
    pipe = make_pipe(max_body_bytes=100)
    respond(pipe.capture(), chunks(OPENAI_STREAM, 64), SSE)
    [record] = pipe.records
    assert record.streamed and record.usage is not None
    assert (record.usage.input_tokens, record.usage.output_tokens) == (1355, 87)
    assert "skipped.body_too_large" not in pipe.counters


def test_a_response_the_target_does_not_read_is_counted(pipe: Pipeline) -> None:
    respond(pipe.capture(), b"<html>not a provider</html>", [("content-type", "text/html")])
    assert pipe.records == []
    assert pipe.counters["skipped.not_provider_response"] == 1


# -- decompression --------------------------------------------------------------------------


def test_gzip_bodies_are_decompressed_for_reading(pipe: Pipeline) -> None:
    compressed = gzip.compress(OPENAI_CHAT)
    respond(pipe.capture(), chunks(compressed, 17), [*JSON, ("Content-Encoding", "gzip")])
    [record] = pipe.records
    assert record.usage is not None and record.usage.input_tokens == 2006
    assert record.usage.output_tokens == 300


def test_a_gzip_stream_is_decompressed_across_chunks(pipe: Pipeline) -> None:
    compressed = gzip.compress(OPENAI_STREAM)
    respond(pipe.capture(), chunks(compressed, 5), [*SSE, ("content-encoding", "gzip")])
    [record] = pipe.records
    assert record.streamed and record.usage is not None
    assert (record.usage.input_tokens, record.usage.cached_input_tokens,
            record.usage.output_tokens) == (1355, 1152, 87)


def test_a_body_that_decompresses_past_the_cap_is_skipped(make_pipe: MakePipe) -> None:
    pipe = make_pipe(max_body_bytes=10_000)
    bomb = gzip.compress(OPENAI_CHAT[:-2] + b" " * 1_000_000 + b"}\n")
    assert len(bomb) < 10_000
    respond(pipe.capture(), chunks(bomb, 512), [*JSON, ("content-encoding", "gzip")])
    assert pipe.records == []
    assert pipe.counters["skipped.decompressed_too_large"] == 1
    assert "skipped.internal_error" not in pipe.counters


def test_corrupt_gzip_is_skipped_and_counted(pipe: Pipeline) -> None:
    respond(pipe.capture(), [b"\x1f\x8bthis is not gzip at all", OPENAI_CHAT],
            [*JSON, ("content-encoding", "gzip")])
    assert pipe.records == []
    assert pipe.counters["skipped.decompress_failed"] == 1


def test_an_unknown_encoding_is_skipped_and_counted(pipe: Pipeline) -> None:
    respond(pipe.capture(), OPENAI_CHAT, [*JSON, ("content-encoding", "zstd-from-the-future")])
    assert pipe.records == []
    assert pipe.counters["skipped.unsupported_encoding"] == 1


# -- request bodies -------------------------------------------------------------------------


def test_the_request_body_is_kept_for_targets_that_need_it(pipe: Pipeline) -> None:
    events: list[str] = []
    target = Watched(pipe.target("/v2/chat"), events)
    capture = pipe.capture("/v2/chat", target=target)
    assert capture.needs_request_body
    request = b'{"model": "command-a-03-2025", "messages": []}'
    for piece in chunks(request, 7):
        capture.request_body(piece)
    capture.request_body(b"")
    respond(capture, COHERE_CHAT)
    assert target.exchanges[0].request_body == request
    [record] = pipe.records
    # Cohere's response names no model: it comes from the request body.
    assert record.provider == "cohere" and record.model == "command-a-03-2025"
    assert record.usage is not None and record.usage.input_tokens == 31


def test_the_request_body_is_ignored_for_targets_that_do_not_need_it(pipe: Pipeline) -> None:
    events: list[str] = []
    target = Watched(pipe.target(), events)
    capture = pipe.capture(target=target)
    assert not capture.needs_request_body
    capture.request_body(b'{"model": "gpt-4o"}')
    respond(capture, OPENAI_CHAT)
    assert target.exchanges[0].request_body is None
    assert len(pipe.records) == 1


def test_a_request_body_over_the_limit_is_dropped_and_counted(pipe: Pipeline) -> None:
    events: list[str] = []
    target = Watched(pipe.target("/v2/chat"), events)
    capture = pipe.capture("/v2/chat", target=target)
    capture.request_body(b'{"model": "command-a-03-2025", "pad": "')
    capture.request_body(b"x" * MAX_REQUEST_BODY)
    assert not capture.needs_request_body
    capture.request_body(b'"}')  # nothing more is held once dropped
    respond(capture, COHERE_CHAT)
    assert pipe.counters["skipped.request_too_large"] == 1
    assert target.exchanges[0].request_body is None
    [record] = pipe.records
    # The response is still read; only what the request body told is lost.
    assert record.model is None and record.usage is not None


def test_a_request_body_of_exactly_the_limit_is_kept(pipe: Pipeline) -> None:
    events: list[str] = []
    target = Watched(pipe.target("/v2/chat"), events)
    capture = pipe.capture("/v2/chat", target=target)
    capture.request_body(b"x" * (MAX_REQUEST_BODY - 1))
    capture.request_body(b"y")
    assert capture.needs_request_body
    respond(capture, COHERE_CHAT)
    body = target.exchanges[0].request_body
    assert body is not None and len(body) == MAX_REQUEST_BODY
    assert "skipped.request_too_large" not in pipe.counters


# -- our own bugs never reach the app -------------------------------------------------------


@pytest.mark.parametrize("fail_in", ["open", "feed", "finish"])
def test_a_raising_reader_costs_a_counted_error_and_never_raises(
        pipe: Pipeline, fail_in: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="cost_middleware")
    respond(pipe.capture(target=BrokenTarget(fail_in)), [OPENAI_CHAT[:100], OPENAI_CHAT[100:]])
    assert pipe.records == []
    assert pipe.counters["skipped.internal_error"] == 1
    where = {"open": "response_start", "feed": "response_body", "finish": "finish"}[fail_in]
    [message] = [r.getMessage() for r in caplog.records]
    assert f"internal error in {where}" in message
    # Neither the exception's text nor the body is logged.
    assert "a bug in" not in message and "rotate the key" not in message


def test_a_failed_reader_is_not_fed_again(pipe: Pipeline) -> None:
    respond(pipe.capture(target=BrokenTarget("feed")), chunks(OPENAI_CHAT, 10), complete=False)
    assert pipe.counters["skipped.internal_error"] == 1


def test_a_failing_record_call_is_counted_not_raised(pipe: Pipeline) -> None:
    def refuse(record: CostRecord) -> None:
        raise RuntimeError("queue bug")

    pipe.tracker.record = refuse  # type: ignore[method-assign]
    respond(pipe.capture(), OPENAI_CHAT)
    assert pipe.counters["skipped.internal_error"] == 1


# -- the end of an exchange -----------------------------------------------------------------


def test_finish_is_idempotent(pipe: Pipeline) -> None:
    capture = pipe.capture()
    respond(capture, OPENAI_CHAT)
    capture.finish(True)
    capture.finish(False, "/other")
    assert len(pipe.records) == 1 and pipe.records[0].partial is False


def test_a_cut_stream_is_recorded_partial_with_the_last_values_seen(pipe: Pipeline) -> None:
    path = "/v1/messages"
    respond(pipe.capture(path), ANTHROPIC_STREAM[: len(ANTHROPIC_STREAM) // 2], SSE, complete=False)
    [record] = pipe.records
    assert record.provider == "anthropic" and record.streamed and record.partial
    assert record.usage is not None
    # message_start carried the input; the final output count never arrived.
    assert record.usage.input_tokens == 6640 and record.usage.cached_input_tokens == 5430


def test_a_cut_stream_without_usage_yet_is_recorded_unpriced(pipe: Pipeline) -> None:
    respond(pipe.capture(), OPENAI_STREAM[: len(OPENAI_STREAM) // 2], SSE, complete=False)
    [record] = pipe.records
    assert record.partial and record.usage is None
    assert record.model == "gpt-4o-mini-2024-07-18"
    assert pipe.counters["usage.missing"] == 1


def test_a_complete_body_whose_exchange_was_cut_is_partial(pipe: Pipeline) -> None:
    respond(pipe.capture(), OPENAI_CHAT, complete=False)
    [record] = pipe.records
    assert record.partial and record.usage is not None


# -- a call seen by the httpx transport and again as the response ----------------------------


def test_a_client_call_forwarded_as_the_response_is_recorded_once(pipe: Pipeline) -> None:
    context = pipe.context()
    respond(pipe.capture(context=context, client_call=True), OPENAI_CHAT)
    respond(pipe.capture(context=context), OPENAI_CHAT)
    assert len(pipe.records) == 1
    assert pipe.counters["skipped.seen_by_client"] == 1


def test_other_calls_in_the_same_request_are_not_deduplicated(pipe: Pipeline) -> None:
    context = pipe.context()
    respond(pipe.capture(context=context, client_call=True), OPENAI_CHAT)
    other = OPENAI_CHAT.replace(b'"completion_tokens": 300', b'"completion_tokens": 301')
    other = other.replace(b'"total_tokens": 2306', b'"total_tokens": 2307')
    respond(pipe.capture(context=context), other)
    assert [r.usage.output_tokens for r in pipe.records if r.usage] == [300, 301]
    assert "skipped.seen_by_client" not in pipe.counters


def test_two_identical_client_calls_are_both_recorded(pipe: Pipeline) -> None:
    context = pipe.context()
    for _ in range(2):
        respond(pipe.capture(context=context, client_call=True), OPENAI_CHAT)
    assert len(pipe.records) == 2


def test_the_same_usage_in_another_request_is_recorded(pipe: Pipeline) -> None:
    respond(pipe.capture(context=pipe.context(), client_call=True), OPENAI_CHAT)
    respond(pipe.capture(context=pipe.context()), OPENAI_CHAT)
    assert len(pipe.records) == 2


def test_record_ids_are_32_hex_digits_led_by_the_milliseconds_they_were_made_at() -> None:
    before = int(time.time() * 1000)
    ids = [new_record_id() for _ in range(1000)]
    after = int(time.time() * 1000)
    assert len(set(ids)) == len(ids)
    for made in ids:
        assert len(made) == 32 and made == made.lower() and int(made, 16) >= 0
        assert before <= int(made[:12], 16) <= after
