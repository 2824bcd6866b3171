"""Every endpoint we read, as a ready :class:`Endpoint` (the detector's targets).

Each is an API of the family table (:mod:`~cost_middleware.usage.families`) with what its
path adds: the provider, a locator, options. Endpoints are built once; ``open`` does the
per-response work. The provider named here is the path's provider; for OpenAI-shaped paths
the response may name another one (see :mod:`cost_middleware.usage.openai`), and it is the
provider of error responses.
"""

from __future__ import annotations

from cost_middleware.usage import anthropic, bedrock, cohere, gemini, openai, sniff
from cost_middleware.usage.families import FAMILIES, Family
from cost_middleware.usage.readers import Endpoint, Locator


def _endpoint(family: Family, provider: str | None = None, locate: Locator | None = None,
              needs_request_body: bool = False, json_array: bool = False) -> Endpoint:
    """``family``'s endpoint; ``provider`` when the path names another than the family's."""
    return Endpoint(provider or family.provider, family.api, family.body, family.stream,
                    locate=locate, needs_request_body=needs_request_body,
                    json_array=json_array)


_OPENAI = FAMILIES["openai"]
_CHAT, _COMPLETIONS, _EMBEDDINGS = (
    _OPENAI["chat_completions"], _OPENAI["completions"], _OPENAI["embeddings"]
)
OPENAI_CHAT = _endpoint(_CHAT, openai.OPENAI)
AZURE_CHAT = _endpoint(_CHAT, openai.AZURE, openai.locate_azure)
#: ``/openai/v1/chat/completions`` is Groq's path and Azure's v1 API, whose deployment is
#: only in the request body.
GROQ_CHAT = _endpoint(_CHAT, openai.GROQ, needs_request_body=True)
OPENROUTER_CHAT = _endpoint(_CHAT, openai.OPENROUTER)
DEEPSEEK_CHAT = _endpoint(_CHAT, openai.DEEPSEEK)
OPENAI_COMPLETIONS = _endpoint(_COMPLETIONS, openai.OPENAI)
AZURE_COMPLETIONS = _endpoint(_COMPLETIONS, openai.AZURE, openai.locate_azure)
OPENAI_EMBEDDINGS = _endpoint(_EMBEDDINGS, openai.OPENAI)
AZURE_EMBEDDINGS = _endpoint(_EMBEDDINGS, openai.AZURE, openai.locate_azure)

OPENAI_RESPONSES = _endpoint(_OPENAI["responses"])
AZURE_RESPONSES = _endpoint(_OPENAI["responses"], openai.AZURE)

_MESSAGES = FAMILIES["anthropic"]["messages"]
ANTHROPIC_MESSAGES = _endpoint(_MESSAGES)
VERTEX_ANTHROPIC = _endpoint(_MESSAGES, anthropic.VERTEX, anthropic.locate_vertex)

_GEMINI = FAMILIES["gemini"]
_GENERATE, _STREAM = _GEMINI["generate_content"], _GEMINI["stream_generate_content"]
GEMINI_GENERATE = _endpoint(_GENERATE, locate=gemini.locate)
GEMINI_STREAM = _endpoint(_STREAM, locate=gemini.locate, json_array=True)
VERTEX_GEMINI_GENERATE = _endpoint(_GENERATE, gemini.VERTEX, gemini.locate)
VERTEX_GEMINI_STREAM = _endpoint(_STREAM, gemini.VERTEX, gemini.locate, json_array=True)

_BEDROCK = FAMILIES["bedrock"]
BEDROCK_CONVERSE = _endpoint(_BEDROCK["converse"], locate=bedrock.locate)
BEDROCK_CONVERSE_STREAM = _endpoint(_BEDROCK["converse_stream"], locate=bedrock.locate)
BEDROCK_INVOKE = _endpoint(_BEDROCK["invoke_model"], locate=bedrock.locate)
BEDROCK_INVOKE_STREAM = _endpoint(_BEDROCK["invoke_model_with_response_stream"],
                                  locate=bedrock.locate)

COHERE_CHAT = _endpoint(FAMILIES["cohere"]["chat_v2"], locate=cohere.locate,
                        needs_request_body=True)

_OLLAMA = FAMILIES["ollama"]
OLLAMA_CHAT = _endpoint(_OLLAMA["ollama_chat"])
OLLAMA_GENERATE = _endpoint(_OLLAMA["ollama_generate"])
OLLAMA_EMBED = _endpoint(_OLLAMA["ollama_embed"])

#: Paths from ``COST_MIDDLEWARE_PATHS``: the response's shape picks the family. The request
#: body is kept for the one family that needs it (Cohere's model).
SNIFFED = Endpoint(sniff.UNKNOWN, sniff.UNKNOWN, sniff.body, sniff.SniffStream,
                   needs_request_body=True)

#: Endpoints whose path names no vendor: OpenAI-shaped paths that many servers answer at (the
#: response's markers guess the provider) and custom paths. An outgoing call's host may name it.
VENDORLESS: frozenset[Endpoint] = frozenset({
    OPENAI_CHAT, GROQ_CHAT, OPENROUTER_CHAT, DEEPSEEK_CHAT, OPENAI_COMPLETIONS,
    OPENAI_EMBEDDINGS, OPENAI_RESPONSES, SNIFFED,
})
