"""Request line → provider endpoint. Runs on every request of the host app.

A miss must cost far less than a microsecond, so one ``str.endswith`` over the few last
segments providers use comes first; only paths passing it have their last segment (or, for
Google's ``{model}:verb`` segments, the verb) looked up and checked exactly. Paths match by
suffix, so a provider API mounted under a prefix (``/proxy/openai/v1/chat/completions``) is
found too. Globs the user lists (``COST_MIDDLEWARE_PATHS``, and the routes of
``COST_MIDDLEWARE_ROUTE_PROVIDERS``) are one compiled pattern, tried last.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable

from cost_middleware.usage import registry as r
from cost_middleware.usage.anthropic import VERTEX_MODELS as _VERTEX_ANTHROPIC_MODELS
from cost_middleware.usage.base import Target
from cost_middleware.usage.bedrock import MODEL_SEGMENT as _BEDROCK_MODEL
from cost_middleware.usage.gemini import MODELS as _GEMINI_MODELS
from cost_middleware.usage.gemini import VERTEX_MODELS as _VERTEX_GEMINI_MODELS
from cost_middleware.usage.hosts import host_provider
from cost_middleware.usage.openai import AZURE_DEPLOYMENTS as _AZURE_DEPLOYMENTS
from cost_middleware.usage.readers import Endpoint

Route = Callable[[str], Endpoint | None]

_CHAT = "/chat/completions"


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
    return lambda path: endpoint if path.rfind(_BEDROCK_MODEL, 0, path.rfind("/")) >= 0 else None


def _google(vertex: Endpoint, gemini: Endpoint) -> Route:
    def route(path: str) -> Endpoint | None:
        if _VERTEX_GEMINI_MODELS in path:
            return vertex
        return gemini if _GEMINI_MODELS in path else None

    return route


def _vertex_anthropic(path: str) -> Endpoint | None:
    return r.VERTEX_ANTHROPIC if _VERTEX_ANTHROPIC_MODELS in path else None


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


class Declared:
    """An endpoint whose provider is known from outside the response: the operator declared
    the route's (``COST_MIDDLEWARE_ROUTE_PROVIDERS``), or the transport's host names it. The
    record shows that provider; the endpoint still reads the response, in its family."""

    __slots__ = ("api", "endpoint", "needs_request_body", "open", "provider")

    def __init__(self, endpoint: Target, provider: str) -> None:
        self.endpoint = endpoint
        self.provider = provider
        self.api = endpoint.api
        self.needs_request_body = endpoint.needs_request_body
        # The endpoint's own bound method: opening costs no extra call.
        self.open = endpoint.open


def _globs(globs: list[str], named: int) -> re.Pattern[str]:
    """fnmatch-style globs, case-sensitive like paths, folded into one pattern; each of the
    first ``named`` is group ``g{index}``, so that a match's ``lastgroup`` says which."""
    return re.compile("|".join(
        f"(?P<g{i}>{fnmatch.translate(g)})" if i < named else fnmatch.translate(g)
        for i, g in enumerate(globs)))


class Detector:
    """Decides from the request line alone whether a response is worth reading.

    ``route_providers`` (``(glob, provider)``, first match wins) declare the provider of app
    routes, a gateway's upstream: a built-in path keeps its family, any other matching path is
    read by shape, and either way the record shows the declared provider.
    """

    __slots__ = ("_calls", "_declared", "_extra", "_provider_of", "_routes")

    def __init__(self, extra_globs: tuple[str, ...] = (),
                 route_providers: tuple[tuple[str, str], ...] = ()) -> None:
        routes = [glob for glob, _ in route_providers]
        # Declared routes first, so that a path in both lists is the declared route's.
        globs = routes + list(extra_globs)
        self._extra: Callable[[str], re.Match[str] | None] | None = (
            _globs(globs, len(routes)).match if globs else None)
        self._routes = _globs(routes, len(routes)).match if routes else None
        #: Group name → the provider its route declared.
        self._provider_of: dict[str | None, str] = {
            f"g{i}": provider for i, (_, provider) in enumerate(route_providers)}
        #: Provider → endpoint → that endpoint declared so (few of each: built on first use).
        self._declared: dict[str, dict[Target, Declared]] = {}
        # Outgoing calls are matched without the declarations (see ``match_call``).
        self._calls = Detector(extra_globs) if routes else self

    def match(self, method: str, path: str) -> Target | None:
        if method != "POST":
            return None
        if path.endswith(_ENDINGS):
            segment = path[path.rfind("/") + 1 :]
            route = _BY_SEGMENT.get(segment)
            if route is None:
                route = _BY_VERB.get(segment[segment.rfind(":") + 1 :])
            if route is not None and (target := route(path)) is not None:
                routes = self._routes
                if routes is not None and (found := routes(path)) is not None:
                    return self._declare(target, self._provider_of[found.lastgroup])
                return target
        extra = self._extra
        if extra is not None and (found := extra(path)) is not None:
            provider = self._provider_of.get(found.lastgroup)
            return r.SNIFFED if provider is None else self._declare(r.SNIFFED, provider)
        return None

    def match_call(self, method: str, host: str, path: str, route: str | None) -> Target | None:
        """The endpoint of an outgoing call (the httpx transport) to ``host`` made while
        serving the app route ``route`` (None: outside a request).

        A declaration is the route's, whatever path its upstream has (``/together/*``
        forwards to ``/v1/…``), and never relabels the calls other routes make with the same
        path. Without one, a path naming no vendor gets the vendor of ``host``
        (:data:`~cost_middleware.usage.hosts.HOSTS`): the app's own configuration, unlike a
        request's ``Host`` header, which :meth:`match` never reads.
        """
        target = self._calls.match(method, path)
        if target is None:
            return None
        routes = self._routes
        if routes is not None and route is not None and (found := routes(route)) is not None:
            return self._declare(target, self._provider_of[found.lastgroup])
        if target in r.VENDORLESS and (vendor := host_provider(host)) is not None:
            return self._declare(target, vendor)
        return target

    def _declare(self, target: Target, provider: str) -> Declared:
        """``target`` with ``provider`` declared: one object per pair, kept."""
        by_target = self._declared.get(provider)
        if by_target is None:
            by_target = self._declared[provider] = {}
        declared = by_target.get(target)
        if declared is None:
            declared = by_target[target] = Declared(target, provider)
        return declared
