"""Responses at paths the user listed (``COST_MIDDLEWARE_PATHS``): their shape picks the family.

Built-in paths already say which family answers; a custom path (an app's own proxy route)
does not, so the body, or the first recognizable stream event, decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cost_middleware.body.events import Event
from cost_middleware.usage import anthropic, bedrock, cohere, gemini, ollama
from cost_middleware.usage.families import FAMILIES, Family
from cost_middleware.usage.fields import label, loads, mapping
from cost_middleware.usage.model import Extraction
from cost_middleware.usage.readers import Call, Stream

UNKNOWN = "unknown"
#: Events looked at before deciding that a stream is none of ours.
_MAX_PROBES = 8

_OPENAI = FAMILIES["openai"]
_CHAT, _COMPLETIONS, _EMBEDDINGS, _RESPONSES = (
    _OPENAI["chat_completions"], _OPENAI["completions"], _OPENAI["embeddings"],
    _OPENAI["responses"],
)
_ANTHROPIC = FAMILIES["anthropic"]["messages"]
_GEMINI = FAMILIES["gemini"]["generate_content"]
_GEMINI_STREAM = FAMILIES["gemini"]["stream_generate_content"]
_COHERE = FAMILIES["cohere"]["chat_v2"]
_BEDROCK = FAMILIES["bedrock"]
_CONVERSE = _BEDROCK["converse"]
_CONVERSE_STREAM = _BEDROCK["converse_stream"]
_INVOKE_STREAM = _BEDROCK["invoke_model_with_response_stream"]
_OLLAMA = FAMILIES["ollama"]
_OLLAMA_CHAT = _OLLAMA["ollama_chat"]
#: The key an Ollama object has → its API (chat when none).
_OLLAMA_BY_KEY = {"message": _OLLAMA_CHAT, "response": _OLLAMA["ollama_generate"],
                  "embeddings": _OLLAMA["ollama_embed"]}


def _by_event_name(name: str) -> Family | None:
    if name in anthropic.EVENTS:
        return _ANTHROPIC
    if name.startswith("response."):
        return _RESPONSES
    if name in cohere.EVENTS:
        return _COHERE
    if name == "chunk":
        return _INVOKE_STREAM
    if name in bedrock.CONVERSE_EVENTS or name == "metadata":
        return _CONVERSE_STREAM
    return None


def _by_shape(obj: Mapping[str, Any], stream: bool) -> Family | None:
    kind = obj.get("type")
    if kind == "message":
        return _ANTHROPIC
    if type(kind) is str and (family := _by_event_name(kind)) is not None:
        return family
    if obj.get("object") == "response":
        return _RESPONSES
    if gemini.is_chunk(obj):
        return _GEMINI_STREAM if stream else _GEMINI
    shape = obj.get("object")
    if shape == "text_completion":
        return _COMPLETIONS
    if shape == "list":
        return _EMBEDDINGS
    if "choices" in obj or shape in ("chat.completion", "chat.completion.chunk"):
        return _CHAT
    if ollama.is_object(obj):
        return next((v for k, v in _OLLAMA_BY_KEY.items() if k in obj), _OLLAMA_CHAT)
    if "stopReason" in obj or "inputTokens" in mapping(obj.get("usage")):
        return _CONVERSE
    if "finish_reason" in obj and "message" in obj:
        return _COHERE
    return None


def _adopt(call: Call, family: Family) -> None:
    call.provider, call.api = family.provider, family.api
    if family is _COHERE:
        cohere.locate(call)


def body(obj: Any, raw: bytes, call: Call) -> Extraction | None:
    if type(obj) is list:
        return _gemini_array(obj, call)
    if type(obj) is not dict:
        return None
    family = _by_shape(obj, stream=False)
    if family is None:
        return None
    _adopt(call, family)
    return family.body(obj, raw, call)


def _gemini_array(items: list[Any], call: Call) -> Extraction | None:
    """A whole streamed Gemini array (``streamGenerateContent`` without ``alt=sse``)."""
    chunks = [item for item in items if type(item) is dict]
    if not chunks or not gemini.is_chunk(chunks[0]):
        return None
    _adopt(call, _GEMINI_STREAM)
    call.streamed = True
    with_usage = [chunk for chunk in chunks if "usageMetadata" in chunk]
    last = with_usage[-1] if with_usage else chunks[-1]
    return gemini.chunk_extraction(last, call, label(chunks[0].get("modelVersion")))


class SniffStream(Stream):
    """Picks the family's stream at the first event it recognizes, then forwards to it."""

    __slots__ = ("inner", "probes")

    def __init__(self, call: Call) -> None:
        super().__init__(call)
        self.inner: Stream | None = None
        self.probes = 0

    def events(self, events: list[Event]) -> None:
        inner = self.inner
        if inner is None:
            for index, (name, data) in enumerate(events):
                if self.probes >= _MAX_PROBES:
                    return
                self.probes += 1
                family = _by_event_name(name) if name is not None else None
                if family is None:
                    family = _by_shape(mapping(loads(data)), stream=True)
                if family is not None:
                    _adopt(self.call, family)
                    inner = self.inner = family.stream(self.call)
                    events = events[index:]
                    break
            else:
                return
        inner.events(events)
        self.keep = inner.keep

    def settle(self) -> None:
        inner = self.inner
        if inner is not None:
            inner.settle()
            self.terminal, self.failed = inner.terminal, inner.failed

    def result(self) -> Extraction | None:
        return self.inner.result() if self.inner is not None else None
