"""The family table: each provider family's APIs, and the body parser and stream that read them.

Built-in endpoints (:mod:`~cost_middleware.usage.registry`) and shape sniffing
(:mod:`~cost_middleware.usage.sniff`) both take their readers from here, so an API is read
the same way whichever of them found it.
"""

from __future__ import annotations

from typing import NamedTuple

from cost_middleware.usage import anthropic, bedrock, cohere, gemini, ollama, openai
from cost_middleware.usage.readers import BodyParser, StreamFactory


class Family(NamedTuple):
    """One API of a family and its readers."""

    #: The provider of the API's responses until the path or the response names another.
    provider: str
    api: str
    body: BodyParser
    stream: StreamFactory


def _apis(provider: str, body: BodyParser, stream: StreamFactory,
          *apis: str) -> dict[str, Family]:
    return {api: Family(provider, api, body, stream) for api in apis}


#: Family → API → readers.
FAMILIES: dict[str, dict[str, Family]] = {
    "openai": {
        **_apis(openai.COMPATIBLE, openai.chat_body, openai.ChatStream,
                "chat_completions", "completions", "embeddings"),
        **_apis(openai.OPENAI, openai.responses_body, openai.ResponsesStream, "responses"),
    },
    "anthropic": _apis(anthropic.ANTHROPIC, anthropic.messages_body, anthropic.MessagesStream,
                       "messages"),
    "gemini": _apis(gemini.GEMINI, gemini.generate_body, gemini.GenerateStream,
                    "generate_content", "stream_generate_content"),
    "bedrock": {
        **_apis(bedrock.BEDROCK, bedrock.converse_body, bedrock.ConverseStream,
                "converse", "converse_stream"),
        **_apis(bedrock.BEDROCK, bedrock.invoke_body, bedrock.InvokeStream,
                "invoke_model", "invoke_model_with_response_stream"),
    },
    "cohere": _apis(cohere.COHERE, cohere.chat_body, cohere.ChatStream, "chat_v2"),
    "ollama": _apis(ollama.OLLAMA, ollama.body, ollama.NDJSONStream,
                    "ollama_chat", "ollama_generate", "ollama_embed"),
}
