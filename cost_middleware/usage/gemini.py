"""Gemini ``generateContent`` / ``streamGenerateContent``: the Gemini API and Vertex AI.

``promptTokenCount`` includes cached tokens; ``toolUsePromptTokenCount`` is not in it and is
billed as input; ``candidatesTokenCount`` excludes ``thoughtsTokenCount``, which is billed as
output. Every streamed ``usageMetadata`` is a running snapshot: the last one wins.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

from cost_middleware.body.events import Event
from cost_middleware.usage.fields import (
    InvalidUsage,
    count,
    label,
    loads,
    make_usage,
    mapping,
)
from cost_middleware.usage.model import Extraction, Usage
from cost_middleware.usage.readers import Call, ProbedStream

GEMINI = "google_gemini"
VERTEX = "vertex_gemini"
#: ``…/models/{model}:verb``; Vertex's paths have it after ``/publishers/google``.
MODELS = "/models/"
VERTEX_MODELS = "/publishers/google" + MODELS
#: Raw chunks kept from the end of a stream: the last snapshot is in the last one or two.
_KEEP = 4
_PROMPT_MODALITIES = {"TEXT": "input_text_tokens", "AUDIO": "input_audio_tokens",
                      "IMAGE": "input_image_tokens"}
_OUTPUT_MODALITIES = {"TEXT": "output_text_tokens", "AUDIO": "output_audio_tokens"}


def _modalities(usage: Mapping[str, Any], key: str, names: dict[str, str],
                extras: dict[str, Any]) -> None:
    """Per-modality subsets from a ``[{modality, tokenCount}]`` list."""
    details = usage.get(key)
    if details is None:
        return
    if type(details) is not list:
        raise InvalidUsage(key)
    totals = dict.fromkeys(names.values(), 0)
    for item in details:
        if type(item) is not dict:
            raise InvalidUsage(key)
        modality = item.get("modality")
        field = names.get(modality) if type(modality) is str else None
        if field is not None:
            totals[field] += count(item, "tokenCount") or 0
    extras.update(totals)


def _search_queries(candidates: Any) -> int | None:
    """Grounding search queries (billed per query on some models; informational here)."""
    if type(candidates) is not list:
        return None
    total: int | None = None
    for candidate in candidates:
        queries = mapping(mapping(candidate).get("groundingMetadata")).get("webSearchQueries")
        if type(queries) is list:
            total = (total or 0) + len(queries)
    return total


def generate_usage(usage: Any, candidates: Any) -> Usage | None:
    """``usageMetadata`` normalized; ``candidates`` gives the grounding query count."""
    if usage is None:
        return None
    if type(usage) is not dict:
        raise InvalidUsage("usageMetadata")
    prompt = count(usage, "promptTokenCount")
    answer = count(usage, "candidatesTokenCount")
    thoughts = count(usage, "thoughtsTokenCount")
    tool_prompt = count(usage, "toolUsePromptTokenCount")
    if prompt is None and answer is None and thoughts is None and tool_prompt is None:
        return None
    fields: dict[str, Any] = {"cached_input_tokens": count(usage, "cachedContentTokenCount") or 0}
    if thoughts is not None:
        fields["reasoning_tokens"] = thoughts
    _modalities(usage, "promptTokensDetails", _PROMPT_MODALITIES, fields)
    _modalities(usage, "candidatesTokensDetails", _OUTPUT_MODALITIES, fields)
    if tool_prompt is not None:
        fields["tool_use_prompt_tokens"] = tool_prompt
    if (queries := _search_queries(candidates)) is not None:
        fields["web_search_queries"] = queries
    return make_usage((prompt or 0) + (tool_prompt or 0), (answer or 0) + (thoughts or 0), fields)


def is_chunk(obj: Mapping[str, Any]) -> bool:
    return "candidates" in obj or "usageMetadata" in obj or "promptFeedback" in obj


def chunk_extraction(obj: Mapping[str, Any], call: Call, model: str | None) -> Extraction:
    """One ``GenerateContentResponse`` (the last with usage, in streams)."""
    usage = obj.get("usageMetadata")
    return call.extraction(
        label(obj.get("modelVersion")) or model,
        call.usage(generate_usage, usage, obj.get("candidates")),
        # Vertex: ON_DEMAND, ON_DEMAND_PRIORITY, ON_DEMAND_FLEX, PROVISIONED_THROUGHPUT.
        tier=label(mapping(usage).get("trafficType")),
    )


def generate_body(obj: Any, raw: bytes, call: Call) -> Extraction | None:
    """A whole ``GenerateContentResponse``."""
    if type(obj) is not dict or not is_chunk(obj):
        return None
    return chunk_extraction(obj, call, None)


def locate(call: Call) -> None:
    """The URL's model (``…/models/{model}:verb``), used when the body has no ``modelVersion``."""
    path = call.exchange.path
    start = path.rfind(MODELS)
    colon = path.rfind(":")
    if 0 <= start < colon:
        call.fallback_model = label(path[start + len(MODELS) : colon])


class GenerateStream(ProbedStream):
    """``GenerateContentResponse`` chunks, from SSE (``alt=sse``) or a streamed JSON array.

    The first chunk gives the model; raw chunks are kept in a short ring, and at the end the
    newest one with ``usageMetadata`` (a running snapshot) is parsed. After the first chunk
    only the ring matters: an SSE stream is then read from its raw tail.
    """

    __slots__ = ("recent",)

    TAIL_EVENTS = _KEEP

    def __init__(self, call: Call) -> None:
        super().__init__(call)
        self.recent: deque[Event] = deque(maxlen=_KEEP)

    def events(self, events: list[Event]) -> None:
        if self.shape is None:
            self.probe(events)
        self.recent.extend(events)

    def head_read(self) -> bool:
        return self.shape is not None

    def first(self, obj: dict[str, Any]) -> None:
        self.shape = is_chunk(obj)
        self.model = label(obj.get("modelVersion"))

    def settle(self) -> None:
        recent = self.recent
        # Only the final chunk has a finishReason (or, for a blocked prompt, a blockReason).
        self.terminal = any(
            b'"finishReason"' in data or b'"blockReason"' in data for _, data in recent
        )
        self.failed = bool(recent) and b'"error"' in recent[-1].data[:40]

    def result(self) -> Extraction | None:
        call = self.call
        if not self.shape:
            return call.extraction(None, None) if self.failed else None
        for _, data in reversed(self.recent):
            if b'"usageMetadata"' in data:
                obj = loads(data)
                if type(obj) is dict:
                    return chunk_extraction(obj, call, self.model)
        return call.extraction(self.model, None)
