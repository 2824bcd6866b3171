"""Anthropic Messages: the API itself, Claude on Vertex (rawPredict) and the bodies Bedrock
InvokeModel returns for Claude.

Anthropic's ``input_tokens`` excludes cache reads and writes; the normalized input adds them
back. In streams, ``message_start`` carries the first snapshot and ``message_delta`` carries
cumulative values that replace it; the cache-write TTL split exists only in ``message_start``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cost_middleware.body.events import Event
from cost_middleware.usage.fields import (
    EMPTY,
    cache_counts,
    cache_split,
    count,
    label,
    loads,
    make_usage,
    mapping,
    section,
)
from cost_middleware.usage.model import Extraction, Usage
from cost_middleware.usage.readers import INVALID_USAGE, Call, EventStream, event_type

ANTHROPIC = "anthropic"
VERTEX = "vertex_anthropic"
#: Stream event names (``error`` aside).
EVENTS = frozenset({
    "message_start", "message_delta", "message_stop", "content_block_start",
    "content_block_delta", "content_block_stop", "ping",
})
#: The events that carry usage or end the stream.
_USAGE_EVENTS = frozenset({"message_start", "message_delta", "message_stop", "error"})
#: Vertex: ``…/publishers/anthropic/models/{model}:rawPredict``.
VERTEX_MODELS = "/publishers/anthropic/models/"


_COUNTS = ("input_tokens", "output_tokens", "cache_read_input_tokens",
           "cache_creation_input_tokens")


def messages_usage(usage: Any) -> Usage | None:
    """An Anthropic ``Usage`` object, normalized."""
    counts = cache_counts(usage, "usage", _COUNTS)
    if counts is None:
        return None
    base, output, read, write = counts
    ttl = section(usage, "cache_creation") or EMPTY
    fields: dict[str, Any] = {"cached_input_tokens": read, "cache_write_input_tokens": write}
    fields["cache_write_5m_input_tokens"], fields["cache_write_1h_input_tokens"] = cache_split(
        write, count(ttl, "ephemeral_5m_input_tokens"), count(ttl, "ephemeral_1h_input_tokens")
    )
    thinking = count(section(usage, "output_tokens_details") or EMPTY, "thinking_tokens")
    if thinking is not None:
        fields["reasoning_tokens"] = thinking
    tools = section(usage, "server_tool_use") or EMPTY
    if (searches := count(tools, "web_search_requests")) is not None:
        fields["web_search_requests"] = searches
    return make_usage(base + read + write, output, fields)


def service_tier(usage: Any) -> str | None:
    """The tier an Anthropic ``Usage`` object was served at."""
    return label(mapping(usage).get("service_tier"))


def messages_body(obj: Any, raw: bytes, call: Call) -> Extraction | None:
    """A whole ``message`` (or an ``error`` envelope, which has no usage)."""
    if type(obj) is not dict:
        return None
    kind = obj.get("type")
    if kind == "error":
        return call.extraction(None, None)
    if kind != "message" and "usage" not in obj:
        return None
    usage = obj.get("usage")
    return call.extraction(
        label(obj.get("model")), call.usage(messages_usage, usage), tier=service_tier(usage)
    )


def is_message(obj: Mapping[str, Any]) -> bool:
    """An Anthropic message body (Bedrock InvokeModel returns it for Claude)."""
    return obj.get("type") == "message" and "usage" in obj


def locate_vertex(call: Call) -> None:
    """The URL's model (``claude-…@date``), used only when the body names none.

    The body's ``claude-…-date`` is the same model under Anthropic's own id, the one price
    rows and the other channels use, so it wins.
    """
    path = call.exchange.path
    start = path.find(VERTEX_MODELS)
    if start >= 0:
        name = path[start + len(VERTEX_MODELS):]
        call.fallback_model = label(name[: name.rfind(":")] if ":" in name else name)


class MessagesStream(EventStream):
    """Anthropic stream events; event names come from SSE or, failing that, from ``type``."""

    __slots__ = ("invalid", "model", "seen", "tier", "usage")

    def __init__(self, call: Call) -> None:
        super().__init__(call)
        self.model: str | None = None
        self.tier: str | None = None
        #: The usage snapshot: ``message_start``'s, updated by every ``message_delta``.
        self.usage: dict[str, Any] | None = None
        self.seen = False
        #: A ``message_start``/``message_delta`` whose usage was not an object.
        self.invalid = False
        self.keep = _USAGE_EVENTS

    def events(self, events: list[Event]) -> None:
        # Content deltas are most of a stream: they are skipped by name, unread (SSE decoders
        # drop them already).
        for name, data in events:
            if name is None or name in _USAGE_EVENTS:
                self.event(name, data)

    def event(self, name: str | None, data: bytes) -> None:
        kind = name if name is not None else event_type(data)
        if kind == "message_start":
            self._start(data)
        elif kind == "message_delta":
            self._delta(data)
        elif kind == "message_stop":
            self.terminal = self.seen = True
        elif kind == "error":
            self.failed = self.seen = True

    def _start(self, data: bytes) -> None:
        message = mapping(loads(data)).get("message")
        if type(message) is not dict:
            return
        self.seen = True
        self.model = self.model or label(message.get("model"))
        usage = message.get("usage")
        if type(usage) is dict:
            self.usage = dict(usage)
            self.tier = service_tier(usage)
        elif usage is not None:
            self.invalid = True

    def _delta(self, data: bytes) -> None:
        obj = loads(data)
        if type(obj) is not dict:
            return
        self.seen = True
        usage = obj.get("usage")
        if usage is None:
            return
        if type(usage) is not dict:
            self.invalid = True
            return
        merged = self.usage if self.usage is not None else {}
        for key, value in usage.items():
            # Null means "not reported in this delta"; the TTL split is only in message_start.
            if value is not None and key != "cache_creation":
                merged[key] = value
        self.usage = merged

    def result(self) -> Extraction | None:
        if not self.seen:
            return None
        call = self.call
        if self.invalid:
            call.skip_reason = INVALID_USAGE
            return call.extraction(self.model, None, tier=self.tier)
        return call.extraction(self.model, call.usage(messages_usage, self.usage), tier=self.tier)
