"""OpenAI-shaped APIs: Chat Completions (and the many servers that copy it), legacy
Completions, Embeddings, and the Responses API.

``/v1/chat/completions`` is served by OpenAI, Mistral, Together, vLLM and any
OpenAI-compatible server, so the provider of a chat response is decided from the response
itself: markers only one vendor writes first, then model-name families, then
``openai_compatible``.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping
from typing import Any

from cost_middleware.body.events import Event
from cost_middleware.usage.fields import (
    EMPTY,
    InvalidUsage,
    count,
    exact_number,
    label,
    loads,
    make_usage,
    mapping,
    section,
    take,
)
from cost_middleware.usage.model import Extraction, Usage
from cost_middleware.usage.readers import (
    Call,
    EventStream,
    Stream,
    event_type,
    request_model,
)

AZURE = "azure_openai"
OPENAI = "openai"
COMPATIBLE = "openai_compatible"
GROQ = "groq"
OPENROUTER = "openrouter"
DEEPSEEK = "deepseek"
TOGETHER = "together"
#: Fireworks AI (OpenAI-shaped API only; known from the transport's host).
FIREWORKS = "fireworks"
VLLM = "vllm"
MISTRAL = "mistral"
#: Azure's classic paths: ``/openai/deployments/{deployment}/…``.
AZURE_DEPLOYMENTS = "/openai/deployments/"

#: ``*_tokens_details`` keys → ``Usage`` fields.
_PROMPT_DETAILS = {
    "cached_tokens": "cached_input_tokens", "cache_write_tokens": "cache_write_input_tokens",
    "audio_tokens": "input_audio_tokens", "text_tokens": "input_text_tokens",
    "image_tokens": "input_image_tokens",
}
_COMPLETION_DETAILS = {
    "reasoning_tokens": "reasoning_tokens", "audio_tokens": "output_audio_tokens",
    "text_tokens": "output_text_tokens", "accepted_prediction_tokens": "accepted_prediction_tokens",
    "rejected_prediction_tokens": "rejected_prediction_tokens",
}
_INPUT_DETAILS = {"cached_tokens": "cached_input_tokens",
                  "cache_write_tokens": "cache_write_input_tokens"}
_OUTPUT_DETAILS = {"reasoning_tokens": "reasoning_tokens"}

#: OpenAI's own model names; ``gpt-oss`` is open weights that other servers host.
_OPENAI_MODEL = re.compile(
    r"(?:gpt-(?!oss)|chatgpt-|o\d|text-embedding-|omni-moderation|text-moderation|davinci"
    r"|babbage|codex-|computer-use-)"
)
#: OpenAI's and Mistral's fine-tunes: ``ft:gpt-4o-mini-2024-07-18:org::id``.
FINE_TUNE = "ft:"
#: OpenAI's backend fingerprints (``fp_`` + hex); Ollama writes ``fp_ollama``.
_OPENAI_FINGERPRINT = re.compile(r"fp_[0-9a-f]{8,}")
_MISTRAL_MODEL = (
    "mistral-", "codestral", "magistral", "ministral", "pixtral", "devstral", "voxtral",
    "open-mistral", "open-mixtral", "open-codestral",
)
#: Vendor markers (the providers found in a response) in the order they win: each is
#: written by one vendor only.
_MARKER_ORDER = (GROQ, AZURE, OPENROUTER, DEEPSEEK, TOGETHER, VLLM)
#: Events parsed while looking for the model before giving up on it.
_MAX_MODEL_EVENTS = 8
#: Raw chunks kept from the end of a stream: usage is in the last one or two everywhere.
_KEEP = 8
_DONE = b"[DONE]"

_RESPONSES_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_RESPONSES_START = frozenset({"response.created", "response.in_progress"})
_RESPONSES_USED = _RESPONSES_TERMINAL | _RESPONSES_START | {"error"}


# --- usage ---------------------------------------------------------------------------------


def chat_usage(usage: Any, raw: bytes) -> Usage | None:
    """``CompletionUsage`` and its copies; ``raw`` is the JSON it came from (exact cost)."""
    if usage is None:
        return None
    if type(usage) is not dict:
        raise InvalidUsage("usage")
    prompt = count(usage, "prompt_tokens")
    completion = count(usage, "completion_tokens")
    if prompt is None and completion is None:
        return None
    fields: dict[str, Any] = {}
    if details := section(usage, "prompt_tokens_details"):
        take(details, _PROMPT_DETAILS, fields)
    if details := section(usage, "completion_tokens_details"):
        take(details, _COMPLETION_DETAILS, fields)
    # DeepSeek mirrors its hit count in ``cached_tokens``: one of them, never both.
    if (hit := count(usage, "prompt_cache_hit_tokens")) is not None:
        fields["cached_input_tokens"] = hit
    elif "cached_input_tokens" not in fields and (
        cached := count(usage, "num_cached_tokens")  # Mistral's newer schema
    ) is not None:
        fields["cached_input_tokens"] = cached
    if "cost" in usage:  # OpenRouter: the charged amount in USD
        fields["reported_cost_usd"] = exact_number(raw, "cost", usage["cost"])
    return make_usage(prompt or 0, completion or 0, fields)


def responses_usage(usage: Any, output: Any) -> Usage | None:
    """``ResponseUsage``, plus the hosted web searches listed in ``output``."""
    if usage is None:
        return None
    if type(usage) is not dict:
        raise InvalidUsage("usage")
    input_tokens = count(usage, "input_tokens")
    output_tokens = count(usage, "output_tokens")
    if input_tokens is None and output_tokens is None:
        return None
    fields: dict[str, Any] = {}
    if details := section(usage, "input_tokens_details"):
        take(details, _INPUT_DETAILS, fields)
    if details := section(usage, "output_tokens_details"):
        take(details, _OUTPUT_DETAILS, fields)
    if searches := _web_search_calls(output):
        fields["web_search_requests"] = searches
    return make_usage(input_tokens or 0, output_tokens or 0, fields)


def _web_search_calls(output: Any) -> int:
    """Hosted web-search calls are billed per call and are not in ``usage``."""
    if type(output) is not list:
        return 0
    return sum(1 for item in output if type(item) is dict and item.get("type") == "web_search_call")


# --- who served it -------------------------------------------------------------------------


def _mark(obj: Mapping[str, Any], found: set[str]) -> None:
    """Add the vendor markers one chat/completions object carries."""
    if "x_groq" in obj:
        found.add(GROQ)
    if "prompt_filter_results" in obj:
        found.add(AZURE)
    ident = obj.get("id")
    if type(obj.get("provider")) is str or (type(ident) is str and ident.startswith("gen-")):
        found.add(OPENROUTER)
    if "prompt_logprobs" in obj or "kv_transfer_params" in obj:
        found.add(VLLM)
    choices = obj.get("choices")
    if type(choices) is list:
        for choice in choices:
            if type(choice) is dict:
                if "content_filter_results" in choice:
                    found.add(AZURE)
                if "seed" in choice:
                    found.add(TOGETHER)
                if "stop_reason" in choice:
                    found.add(VLLM)
    usage = mapping(obj.get("usage"))
    if "queue_time" in usage:
        found.add(GROQ)
    if "prompt_cache_hit_tokens" in usage:
        found.add(DEEPSEEK)
    if "is_byok" in usage or "cost" in usage:
        found.add(OPENROUTER)
    fingerprint = obj.get("system_fingerprint")
    if type(obj.get("service_tier")) is str or (
        type(fingerprint) is str and _OPENAI_FINGERPRINT.fullmatch(fingerprint)
    ):
        found.add(OPENAI)


def _by_model(model: str | None) -> str | None:
    """The provider a bare (vendor-less) model name belongs to, if it says."""
    if not model or "/" in model:
        return None
    if model.startswith(FINE_TUNE):  # ``ft:{base}:…`` is served by the base model's vendor
        model = model[len(FINE_TUNE):]
    if model.startswith("deepseek-"):
        return DEEPSEEK
    if model.startswith(_MISTRAL_MODEL):
        return MISTRAL
    if _OPENAI_MODEL.match(model):
        return OPENAI
    return None


def classify(call: Call, found: set[str], model: str | None) -> str:
    """The provider of a chat/completions/embeddings response."""
    if call.provider == AZURE:  # the deployment path is Azure's alone
        return AZURE
    for provider in _MARKER_ORDER:
        if provider in found:
            return provider
    by_model = _by_model(model)
    if by_model is not None:
        return by_model
    if model and "/" in model and model.endswith("-Turbo"):
        return TOGETHER
    if OPENAI in found:
        return OPENAI
    return COMPATIBLE


def locate_azure(call: Call) -> None:
    """``/openai/deployments/{deployment}/…``: the deployment is the path segment."""
    path = call.exchange.path
    start = path.find(AZURE_DEPLOYMENTS)
    if start >= 0:
        call.deployment = label(path[start + len(AZURE_DEPLOYMENTS):].partition("/")[0])


def _azure_deployment(call: Call, provider: str) -> None:
    """Azure's ``/openai/v1`` API names the deployment only in the request's ``model``."""
    if provider == AZURE and call.deployment is None:
        call.deployment = request_model(call.exchange.request_body)


# --- chat completions, completions, embeddings ----------------------------------------------


def _chat_shape(obj: Mapping[str, Any]) -> bool:
    return "choices" in obj or "usage" in obj or "data" in obj or "object" in obj


def _usage_object(obj: Mapping[str, Any]) -> Any:
    """The top-level ``usage``, else Groq's ``x_groq.usage`` (streams)."""
    usage = obj.get("usage")
    if usage is None:
        usage = mapping(obj.get("x_groq")).get("usage")
    return usage


def chat_body(obj: Any, raw: bytes, call: Call) -> Extraction | None:
    """A whole chat.completion, text_completion or embedding list."""
    if type(obj) is not dict or not _chat_shape(obj):
        return None
    found: set[str] = set()
    _mark(obj, found)
    model = label(obj.get("model"))
    usage = call.usage(chat_usage, _usage_object(obj), raw)
    provider = classify(call, found, model)
    _azure_deployment(call, provider)
    upstream = label(obj.get("provider")) if provider == OPENROUTER else None
    return call.extraction(
        model, usage, provider=provider, upstream=upstream, tier=label(obj.get("service_tier"))
    )


class ChatStream(Stream):
    """``chat.completion.chunk`` events (also completions streams).

    Per event only the first chunks are parsed (until the model is known: Azure's first chunk
    has none) and the raw bytes are kept in a short ring. Every server puts usage in one of
    its last chunks, as a cumulative snapshot (vLLM sends one per chunk; Groq may send
    ``x_groq.usage`` and then the same numbers in an ``include_usage`` chunk), so the newest
    chunk with usage is the answer, found at the end, and nothing is summed. Once the probing
    is over only the ring matters: an SSE stream is then read from its raw tail.
    """

    __slots__ = ("found", "model", "probes", "recent", "shape", "tier", "upstream")

    TAIL_EVENTS = _KEEP

    def __init__(self, call: Call) -> None:
        super().__init__(call)
        self.model: str | None = None
        self.tier: str | None = None
        self.upstream: str | None = None
        self.found: set[str] = set()
        #: None until the first JSON chunk; then whether it looked like a chat chunk.
        self.shape: bool | None = None
        self.probes = 0
        self.recent: deque[Event] = deque(maxlen=_KEEP)

    def events(self, events: list[Event]) -> None:
        if self.probes < _MAX_MODEL_EVENTS:
            for _, data in events:
                self._probe(data)
                if self.probes >= _MAX_MODEL_EVENTS:
                    break
        self.recent.extend(events)

    def head_read(self) -> bool:
        return self.probes >= _MAX_MODEL_EVENTS

    def _probe(self, data: bytes) -> None:
        obj = loads(data)
        if type(obj) is not dict:
            return
        self.probes += 1
        if self.shape is None:
            self.shape = _chat_shape(obj)
        if not self.shape:
            self.probes = _MAX_MODEL_EVENTS
            return
        _mark(obj, self.found)
        self.tier = self.tier or label(obj.get("service_tier"))
        self.upstream = self.upstream or label(obj.get("provider"))
        self.model = label(obj.get("model"))
        if self.model is not None:
            self.probes = _MAX_MODEL_EVENTS

    def settle(self) -> None:
        recent = self.recent
        if recent and recent[-1].data == _DONE:
            self.terminal = True
        for _, data in reversed(recent):
            if data != _DONE:
                # A server error ends an OpenAI-style stream as ``data: {"error": …}``.
                self.failed = data.startswith(b'{"error"')
                break

    def result(self) -> Extraction | None:
        call = self.call
        if not self.shape:
            # A stream that only reported an error is still the provider's (and unbilled).
            return call.extraction(None, None) if self.failed else None
        usage = None
        for _, data in reversed(self.recent):
            if b'"usage"' not in data:
                continue
            obj = loads(data)
            source = _usage_object(obj) if type(obj) is dict else None
            if source is not None:
                _mark(obj, self.found)
                usage = call.usage(chat_usage, source, data)
                self.model = self.model or label(obj.get("model"))
                break
        provider = classify(call, self.found, self.model)
        if provider == COMPATIBLE and any(b'"stop_reason"' in data for _, data in self.recent):
            provider = VLLM  # vLLM's finish chunk; no other server writes stop_reason
        _azure_deployment(call, provider)
        upstream = self.upstream if provider == OPENROUTER else None
        return call.extraction(
            self.model, usage, provider=provider, upstream=upstream, tier=self.tier
        )


# --- Responses API -------------------------------------------------------------------------


def _responses_provider(call: Call, model: str | None) -> str:
    if call.provider == AZURE:
        return AZURE
    return OPENAI if _by_model(model) == OPENAI else COMPATIBLE


def _response_extraction(
    response: Mapping[str, Any], call: Call, model: str | None = None, tier: str | None = None
) -> Extraction:
    """A ``response`` object; ``model``/``tier`` stand in where it names none (streams)."""
    model = label(response.get("model")) or model
    usage = call.usage(responses_usage, response.get("usage"), response.get("output"))
    return call.extraction(
        model,
        usage,
        provider=_responses_provider(call, model),
        tier=label(response.get("service_tier")) or tier,
    )


def responses_body(obj: Any, raw: bytes, call: Call) -> Extraction | None:
    """A whole ``response`` object."""
    if type(obj) is not dict or not (
        obj.get("object") == "response" or "output" in obj or "usage" in obj
    ):
        return None
    return _response_extraction(obj, call)


class ResponsesStream(EventStream):
    """Responses API events: usage only in the terminal ``response.completed``,
    ``response.incomplete`` or ``response.failed`` event."""

    __slots__ = ("final", "model", "seen", "tier")

    def __init__(self, call: Call) -> None:
        super().__init__(call)
        self.model: str | None = None
        self.tier: str | None = None
        self.final: bytes | None = None
        self.seen = False

    def events(self, events: list[Event]) -> None:
        # Output deltas are most of a stream: they are skipped by name, unread, and once the
        # stream is known the decoder drops them.
        for name, data in events:
            if name is None or name in _RESPONSES_USED:
                self.event(name, data)
            elif not self.seen and name.startswith("response."):
                self.seen = True
        if self.seen:
            self.keep = _RESPONSES_USED

    def event(self, name: str | None, data: bytes) -> None:
        kind = name if name is not None else event_type(data)
        if kind is None:
            return
        if kind in _RESPONSES_TERMINAL:
            self.final = data
            self.terminal = self.seen = True
        elif kind in _RESPONSES_START:
            self.seen = True
            if self.model is None:
                response = mapping(mapping(loads(data)).get("response"))
                self.model = label(response.get("model"))
                self.tier = label(response.get("service_tier"))
        elif kind == "error":
            self.failed = True
        elif kind.startswith("response."):
            self.seen = True

    def result(self) -> Extraction | None:
        if not self.seen and not self.failed:
            return None
        response = mapping(mapping(loads(self.final)).get("response")) if self.final else EMPTY
        return _response_extraction(response, self.call, self.model, self.tier)
