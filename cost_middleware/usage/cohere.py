"""Cohere Chat v2 (``POST /v2/chat``).

The response names no model: it comes from the request body. Billing is on
``usage.billed_units``; ``usage.tokens`` are raw counts including the prompt template.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cost_middleware.body.events import Event
from cost_middleware.usage.fields import (
    EMPTY,
    InvalidUsage,
    count,
    loads,
    make_usage,
    mapping,
    section,
)
from cost_middleware.usage.model import Extraction, Usage
from cost_middleware.usage.readers import Call, EventStream, event_type, request_model

COHERE = "cohere"
EVENTS = frozenset({
    "message-start", "content-start", "content-delta", "content-end", "tool-plan-delta",
    "tool-call-start", "tool-call-delta", "tool-call-end", "citation-start", "citation-end",
    "message-end",
})


def chat_usage(usage: Any) -> Usage | None:
    """A v2 ``Usage``: billed units are what is paid for."""
    if usage is None:
        return None
    if type(usage) is not dict:
        raise InvalidUsage("usage")
    billed = section(usage, "billed_units") or EMPTY
    raw = section(usage, "tokens") or EMPTY
    billed_in = count(billed, "input_tokens")
    billed_out = count(billed, "output_tokens")
    raw_in = count(raw, "input_tokens")
    raw_out = count(raw, "output_tokens")
    if billed_in is None and billed_out is None:
        return None
    # How cache hits relate to billed units is undocumented: keep them only where they fit.
    cached = count(usage, "cached_tokens") or 0
    fields: dict[str, Any] = {"cached_input_tokens": cached if cached <= (billed_in or 0) else 0}
    if raw_in is not None:
        fields["raw_input_tokens"] = raw_in
    if raw_out is not None:
        fields["raw_output_tokens"] = raw_out
    return make_usage(billed_in or 0, billed_out or 0, fields)


def locate(call: Call) -> None:
    call.model = request_model(call.exchange.request_body)


def _shape(obj: Mapping[str, Any]) -> bool:
    return "message" in obj or "usage" in obj or "finish_reason" in obj


def chat_body(obj: Any, raw: bytes, call: Call) -> Extraction | None:
    if type(obj) is not dict or not _shape(obj):
        return None
    return call.extraction(None, call.usage(chat_usage, obj.get("usage")))


_END = frozenset({"message-end"})


class ChatStream(EventStream):
    """v2 stream events: usage only in ``message-end`` (``delta.usage``)."""

    __slots__ = ("final", "seen")

    def __init__(self, call: Call) -> None:
        super().__init__(call)
        self.final: bytes | None = None
        self.seen = False

    def events(self, events: list[Event]) -> None:
        # Content deltas are most of a stream: once the stream is known, only its end matters
        # (and the decoder drops the rest).
        for name, data in events:
            if name is None or name == "message-end" or not self.seen:
                self.event(name, data)
        if self.seen:
            self.keep = _END

    def event(self, name: str | None, data: bytes) -> None:
        kind = name if name is not None else event_type(data)
        if kind == "message-end":
            self.final = data
            self.terminal = self.seen = True
        elif kind in EVENTS:
            self.seen = True

    def result(self) -> Extraction | None:
        if not self.seen:
            return None
        call = self.call
        delta = mapping(mapping(loads(self.final)).get("delta")) if self.final else EMPTY
        return call.extraction(None, call.usage(chat_usage, delta.get("usage")))
