"""Request line → provider endpoint. Runs on every request of the host app.

A miss must cost far less than a microsecond, so one ``str.endswith`` over the few last
segments providers use comes first; only paths passing it have their last segment (or, for
Google's ``{model}:verb`` segments, the verb) looked up and checked exactly. Paths match by
suffix, so a provider API mounted under a prefix (``/proxy/openai/v1/chat/completions``) is
found too.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable

from cost_middleware.usage import registry as r
from cost_middleware.usage.base import Target
from cost_middleware.usage.readers import Endpoint

Route = Callable[[str], Endpoint | None]

_CHAT = "/chat/completions"
_AZURE_DEPLOYMENTS = "/openai/deployments/"


def _chat_completions(path: str) -> Endpoint | None:
    head = path[: -len(_CHAT)]
    if _AZURE_DEPLOYMENTS in head:
        return r.AZURE_CHAT
    if head.endswith("/openai/v1"):
        return r.GROQ_CHAT
    if head.endswith("/api/v1"):
        return r.OPENROUTER_CHAT
    if head.endswith("/v1"):
        return r.OPENAI_CHAT
    # DeepSeek's base URL has no /v1 (many OpenAI-compatible servers' neither).
    return r.DEEPSEEK_CHAT


def _completions(path: str) -> Endpoint | None:
    if path.endswith(_CHAT):
        return _chat_completions(path)
    if _AZURE_DEPLOYMENTS in path:
        return r.AZURE_COMPLETIONS
    return r.OPENAI_COMPLETIONS if path.endswith("/v1/completions") else None


def _embeddings(path: str) -> Endpoint | None:
    if _AZURE_DEPLOYMENTS in path:
        return r.AZURE_EMBEDDINGS
    return r.OPENAI_EMBEDDINGS if path.endswith("/v1/embeddings") else None


def _responses(path: str) -> Endpoint | None:
    if path.endswith("/v1/responses"):
        return r.OPENAI_RESPONSES
    # Azure's ``/openai/responses?api-version=…``.
    return r.AZURE_RESPONSES if path.endswith("/openai/responses") else None


def _chat(path: str) -> Endpoint | None:
    if path.endswith("/v2/chat"):
        return r.COHERE_CHAT
    return r.OLLAMA_CHAT if path.endswith("/api/chat") else None


def _suffix(suffix: str, endpoint: Endpoint) -> Route:
    return lambda path: endpoint if path.endswith(suffix) else None


def _bedrock(endpoint: Endpoint) -> Route:
    """``/model/{modelId}/{verb}``: the model id may hold (decoded) slashes of an ARN."""
    return lambda path: endpoint if path.rfind("/model/", 0, path.rfind("/")) >= 0 else None


def _google(vertex: Endpoint, gemini: Endpoint) -> Route:
    def route(path: str) -> Endpoint | None:
        if "/publishers/google/models/" in path:
            return vertex
        return gemini if "/models/" in path else None

    return route


def _vertex_anthropic(path: str) -> Endpoint | None:
    return r.VERTEX_ANTHROPIC if "/publishers/anthropic/models/" in path else None


#: Last path segment → exact check.
_BY_SEGMENT: dict[str, Route] = {
    "completions": _completions,
    "embeddings": _embeddings,
    "responses": _responses,
    "messages": _suffix("/v1/messages", r.ANTHROPIC_MESSAGES),
    "chat": _chat,
    "generate": _suffix("/api/generate", r.OLLAMA_GENERATE),
    "embed": _suffix("/api/embed", r.OLLAMA_EMBED),
    "converse": _bedrock(r.BEDROCK_CONVERSE),
    "converse-stream": _bedrock(r.BEDROCK_CONVERSE_STREAM),
    "invoke": _bedrock(r.BEDROCK_INVOKE),
    "invoke-with-response-stream": _bedrock(r.BEDROCK_INVOKE_STREAM),
}
#: Google's custom verbs: ``…/models/{model}:verb``.
_BY_VERB: dict[str, Route] = {
    "generateContent": _google(r.VERTEX_GEMINI_GENERATE, r.GEMINI_GENERATE),
    "streamGenerateContent": _google(r.VERTEX_GEMINI_STREAM, r.GEMINI_STREAM),
    "rawPredict": _vertex_anthropic,
    "streamRawPredict": _vertex_anthropic,
}
#: Every provider path ends with one of these (one C-level check rejects the rest).
_ENDINGS = (*_BY_SEGMENT, *_BY_VERB)


class Detector:
    """Decides from the request line alone whether a response is worth reading."""

    __slots__ = ("_extra",)

    def __init__(self, extra_globs: tuple[str, ...] = ()) -> None:
        # fnmatch-style globs, case-sensitive like paths, folded into one compiled pattern.
        self._extra: Callable[[str], object] | None = (
            re.compile("|".join(fnmatch.translate(g) for g in extra_globs)).match
            if extra_globs else None
        )

    def match(self, method: str, path: str) -> Target | None:
        if method != "POST":
            return None
        if path.endswith(_ENDINGS):
            segment = path[path.rfind("/") + 1 :]
            route = _BY_SEGMENT.get(segment)
            if route is None:
                route = _BY_VERB.get(segment[segment.rfind(":") + 1 :])
            if route is not None and (target := route(path)) is not None:
                return target
        if self._extra is not None and self._extra(path):
            return r.SNIFFED
        return None
