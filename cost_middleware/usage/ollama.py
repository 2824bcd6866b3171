"""Ollama's native API: ``/api/chat``, ``/api/generate`` (NDJSON streams by default) and
``/api/embed``.

Counts are only in the final object (``done: true``). Ollama omits zero counts (``omitempty``),
e.g. ``prompt_eval_count`` when the whole prompt came from its KV cache, so a missing count
in that object is 0, not unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cost_middleware.body.events import Event
from cost_middleware.usage.fields import count, label, loads, make_usage
from cost_middleware.usage.model import Extraction, Usage
from cost_middleware.usage.readers import Call, ProbedStream

OLLAMA = "ollama"

def final_usage(obj: Mapping[str, Any]) -> Usage:
    """The counts of a final object: ``prompt_eval_count`` in, ``eval_count`` out."""
    return make_usage(count(obj, "prompt_eval_count") or 0, count(obj, "eval_count") or 0, {})


def is_object(obj: Mapping[str, Any]) -> bool:
    return type(obj.get("model")) is str and ("done" in obj or "embeddings" in obj)


def _extraction(obj: Mapping[str, Any], call: Call, model: str | None) -> Extraction:
    final = obj.get("done") is True or "embeddings" in obj
    usage = call.usage(final_usage, obj) if final else None
    return call.extraction(label(obj.get("model")) or model, usage)


def body(obj: Any, raw: bytes, call: Call) -> Extraction | None:
    if type(obj) is not dict or not is_object(obj):
        return None
    return _extraction(obj, call, None)


class NDJSONStream(ProbedStream):
    """One JSON object per line; only the last (``done: true``) has counts."""

    __slots__ = ("last",)

    def __init__(self, call: Call) -> None:
        super().__init__(call)
        self.last = b""

    def events(self, events: list[Event]) -> None:
        if self.shape is None:
            self.probe(events)
        self.last = events[-1].data

    def first(self, obj: dict[str, Any]) -> None:
        self.shape = is_object(obj)
        self.model = label(obj.get("model"))
        self.failed = "error" in obj

    def settle(self) -> None:
        last = self.last
        self.terminal = b'"done":true' in last or b'"done": true' in last
        self.failed = self.failed or last.startswith(b'{"error"')

    def result(self) -> Extraction | None:
        call = self.call
        if not self.shape:
            return call.extraction(None, None) if self.failed else None
        obj = loads(self.last) if self.terminal else None
        if type(obj) is dict:
            return _extraction(obj, call, self.model)
        return call.extraction(self.model, None)
