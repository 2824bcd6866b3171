"""AWS Bedrock Runtime: Converse, ConverseStream, InvokeModel, InvokeModelWithResponseStream.

The model is only in the URL path (``/model/{modelId}/…``, percent-encoded; an inference
profile such as ``us.anthropic…`` or an ARN). Converse ``inputTokens`` excludes cache reads
and writes. InvokeModel returns the model's native body (Anthropic's for Claude) and the
counts again in ``X-Amzn-Bedrock-*-Token-Count`` headers, the only source for other models.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from cost_middleware.usage.anthropic import (
    MessagesStream,
    is_message,
    messages_usage,
    service_tier,
)
from cost_middleware.usage.fields import (
    EMPTY,
    MAX_TOKENS,
    InvalidUsage,
    cache_counts,
    cache_split,
    count,
    label,
    loads,
    make_usage,
    mapping,
)
from cost_middleware.usage.model import Extraction, Usage
from cost_middleware.usage.readers import Call, EventStream

BEDROCK = "aws_bedrock"
#: ``…/model/{modelId}/{verb}``.
MODEL_SEGMENT = "/model/"
_HEADER_INPUT = "x-amzn-bedrock-input-token-count"
_HEADER_OUTPUT = "x-amzn-bedrock-output-token-count"
_HEADER_CACHE_READ = "x-amzn-bedrock-cache-read-input-token-count"
_HEADER_CACHE_WRITE = "x-amzn-bedrock-cache-write-input-token-count"
_HEADER_TIER = "x-amzn-bedrock-service-tier"
_METRICS = "amazon-bedrock-invocationMetrics"
_METRICS_NEEDLE = _METRICS.encode()
#: Top-level keys of the native bodies InvokeModel returns (Claude, Llama, Titan, Mistral,
#: Cohere, Nova...); a body with none of them is not a model response.
_INVOKE_KEYS = frozenset({
    "type", "usage", "generation", "outputs", "results", "output", "completion", "completions",
    "generations", "text", "choices", "stop_reason", "stopReason",
})
CONVERSE_EVENTS = frozenset({
    "messageStart", "contentBlockStart", "contentBlockDelta", "contentBlockStop", "messageStop",
})
#: Event-stream frame names of exceptions and errors (see ``body.eventstream.EventStreamDecoder``).
_FAILURES = ("exception:", "error:")


def locate(call: Call) -> None:
    """The model id between ``/model/`` and the verb, percent-decoded (``%3A`` is ``:``).

    It wins over the ``model`` a Claude InvokeModel body names: the id (an inference profile's
    geography, an ARN) is what Bedrock bills by.
    """
    exchange = call.exchange
    # The raw path keeps an ARN's encoded slashes in one segment.
    path = exchange.raw_path or exchange.path
    end = path.rfind("/")
    start = path.rfind(MODEL_SEGMENT, 0, end)
    if start >= 0:
        call.model = label(unquote(path[start + len(MODEL_SEGMENT) : end]))


def _tier(obj: Mapping[str, Any], call: Call) -> str | None:
    tier = obj.get("serviceTier")
    if type(tier) is dict:
        tier = tier.get("type")
    return label(tier) or label(call.exchange.response_headers.get(_HEADER_TIER))


# --- Converse ------------------------------------------------------------------------------


_CONVERSE_COUNTS = ("inputTokens", "outputTokens", "cacheReadInputTokens",
                    "cacheWriteInputTokens")
_METRICS_COUNTS = ("inputTokenCount", "outputTokenCount", "cacheReadInputTokenCount",
                   "cacheWriteInputTokenCount")


def converse_usage(usage: Any) -> Usage | None:
    """A Converse ``TokenUsage``: ``inputTokens`` excludes cache reads and writes."""
    counts = cache_counts(usage, "usage", _CONVERSE_COUNTS)
    if counts is None:
        return None
    base, output, read, write = counts
    five_min = one_hour = None
    details = usage.get("cacheDetails")
    if details is not None:
        if type(details) is not list:
            raise InvalidUsage("cacheDetails")
        five_min = one_hour = 0
        for detail in details:
            if type(detail) is not dict:
                raise InvalidUsage("cacheDetails")
            tokens = count(detail, "inputTokens") or 0
            ttl = detail.get("ttl")
            if ttl == "5m":
                five_min += tokens
            elif ttl == "1h":
                one_hour += tokens
    fields: dict[str, Any] = {"cached_input_tokens": read, "cache_write_input_tokens": write}
    fields["cache_write_5m_input_tokens"], fields["cache_write_1h_input_tokens"] = cache_split(
        write, five_min, one_hour
    )
    return make_usage(base + read + write, output, fields)


def converse_body(obj: Any, raw: bytes, call: Call) -> Extraction | None:
    """A whole Converse response (it has no model field)."""
    if type(obj) is not dict or not ("output" in obj or "usage" in obj or "stopReason" in obj):
        return None
    return call.extraction(None, call.usage(converse_usage, obj.get("usage")),
                           tier=_tier(obj, call))


class ConverseStream(EventStream):
    """ConverseStream events: usage only in the final ``metadata`` event."""

    __slots__ = ("final", "seen")

    def __init__(self, call: Call) -> None:
        super().__init__(call)
        self.final: bytes | None = None
        self.seen = False

    def event(self, name: str | None, data: bytes) -> None:
        if name == "metadata":
            self.final = data
            self.terminal = self.seen = True
        elif name is None:
            return
        elif name.startswith(_FAILURES):
            self.failed = self.seen = True
        elif name in CONVERSE_EVENTS:
            self.seen = True

    def result(self) -> Extraction | None:
        if not self.seen:
            return None
        call = self.call
        obj = mapping(loads(self.final)) if self.final is not None else EMPTY
        return call.extraction(None, call.usage(converse_usage, obj.get("usage")),
                               tier=_tier(obj, call))


# --- InvokeModel ---------------------------------------------------------------------------


def _header_count(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    value = value.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 13 or int(value) > MAX_TOKENS:
        raise InvalidUsage(name)
    return int(value)


def _without_split(base: int | None, output: int | None, read: int, write: int) -> Usage:
    """Counts whose input excludes the cache, with no TTL split reported."""
    return make_usage((base or 0) + read + write, output or 0,
                      {"cached_input_tokens": read, "cache_write_input_tokens": write})


def header_usage(headers: Mapping[str, str]) -> Usage | None:
    """Usage from the ``X-Amzn-Bedrock-*-Token-Count`` headers (input excludes the cache)."""
    base = _header_count(headers, _HEADER_INPUT)
    output = _header_count(headers, _HEADER_OUTPUT)
    if base is None and output is None:
        return None
    read = _header_count(headers, _HEADER_CACHE_READ) or 0
    write = _header_count(headers, _HEADER_CACHE_WRITE) or 0
    return _without_split(base, output, read, write)


def metrics_usage(metrics: Any) -> Usage | None:
    """``amazon-bedrock-invocationMetrics`` at the end of an InvokeModel stream."""
    counts = cache_counts(metrics, _METRICS, _METRICS_COUNTS)
    return None if counts is None else _without_split(*counts)


def invoke_body(obj: Any, raw: bytes, call: Call) -> Extraction | None:
    """A native model body: Claude's is read like Anthropic's, others through the headers."""
    if type(obj) is not dict:
        return None
    headers = call.exchange.response_headers
    if is_message(obj):
        usage = obj.get("usage")
        return call.extraction(None, call.usage(messages_usage, usage),
                               tier=_tier(obj, call) or service_tier(usage))
    result = call.usage(header_usage, headers)
    if result is None and call.skip_reason is None and _INVOKE_KEYS.isdisjoint(obj):
        return None
    return call.extraction(None, result, tier=_tier(obj, call))


def _chunk_payload(data: bytes) -> bytes | None:
    """The model event inside a ``chunk`` event: ``{"bytes": "<base64>"}``."""
    encoded = mapping(loads(data)).get("bytes")
    if type(encoded) is not str:
        return None
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None


class InvokeStream(EventStream):
    """InvokeModelWithResponseStream: model events base64-encoded in ``chunk`` events.

    Claude's events are read like Anthropic's stream; the last chunk also carries
    ``amazon-bedrock-invocationMetrics`` (the same totals), the only usage for other models.
    """

    __slots__ = ("claude", "metrics", "seen")

    def __init__(self, call: Call) -> None:
        super().__init__(call)
        self.claude = MessagesStream(call)
        self.metrics: bytes | None = None
        self.seen = False

    def event(self, name: str | None, data: bytes) -> None:
        if name == "chunk":
            payload = _chunk_payload(data)
            if payload is None:
                return
            self.seen = True
            if _METRICS_NEEDLE in payload:
                self.metrics = payload
                self.terminal = True
            self.claude.event(None, payload)
            self.terminal = self.terminal or self.claude.terminal
        elif name is not None and name.startswith(_FAILURES):
            self.failed = self.seen = True

    def result(self) -> Extraction | None:
        if not self.seen:
            return None
        call = self.call
        if self.claude.usage is None and self.metrics is not None:
            metrics = mapping(loads(self.metrics)).get(_METRICS)
            return call.extraction(None, call.usage(metrics_usage, metrics),
                                   tier=_tier(EMPTY, call))
        if self.claude.seen:
            return self.claude.result()
        return call.extraction(None, None, tier=_tier(EMPTY, call))
