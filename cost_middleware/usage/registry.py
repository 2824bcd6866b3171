"""Every endpoint we read, as a ready :class:`Endpoint` (the detector's targets).

Endpoints are built once; ``open`` does the per-response work. The provider named here is
the path's provider; for OpenAI-shaped paths the response may name another one (see
:mod:`cost_middleware.usage.openai`), and it is the provider of error responses.
"""

from __future__ import annotations

from cost_middleware.usage import anthropic, bedrock, cohere, gemini, ollama, openai, sniff
from cost_middleware.usage.readers import Endpoint, Locator


def _chat(provider: str, api: str, locate: Locator | None = None,
          needs_request_body: bool = False) -> Endpoint:
    return Endpoint(provider, api, openai.chat_body, openai.ChatStream, locate=locate,
                    needs_request_body=needs_request_body)


OPENAI_CHAT = _chat("openai", "chat_completions")
AZURE_CHAT = _chat("azure_openai", "chat_completions", openai.locate_azure)
#: ``/openai/v1/chat/completions`` is Groq's path and Azure's v1 API, whose deployment is
#: only in the request body.
GROQ_CHAT = _chat("groq", "chat_completions", needs_request_body=True)
OPENROUTER_CHAT = _chat("openrouter", "chat_completions")
DEEPSEEK_CHAT = _chat("deepseek", "chat_completions")
OPENAI_COMPLETIONS = _chat("openai", "completions")
AZURE_COMPLETIONS = _chat("azure_openai", "completions", openai.locate_azure)
OPENAI_EMBEDDINGS = _chat("openai", "embeddings")
AZURE_EMBEDDINGS = _chat("azure_openai", "embeddings", openai.locate_azure)

OPENAI_RESPONSES = Endpoint("openai", "responses", openai.responses_body, openai.ResponsesStream)
AZURE_RESPONSES = Endpoint("azure_openai", "responses", openai.responses_body,
                           openai.ResponsesStream)

ANTHROPIC_MESSAGES = Endpoint("anthropic", "messages", anthropic.messages_body,
                              anthropic.MessagesStream)
VERTEX_ANTHROPIC = Endpoint("vertex_anthropic", "messages", anthropic.messages_body,
                            anthropic.MessagesStream, locate=anthropic.locate_vertex)

GEMINI_GENERATE = Endpoint("google_gemini", "generate_content", gemini.generate_body,
                           gemini.GenerateStream, locate=gemini.locate)
GEMINI_STREAM = Endpoint("google_gemini", "stream_generate_content", gemini.generate_body,
                         gemini.GenerateStream, locate=gemini.locate, json_array=True)
VERTEX_GEMINI_GENERATE = Endpoint("vertex_gemini", "generate_content", gemini.generate_body,
                                  gemini.GenerateStream, locate=gemini.locate)
VERTEX_GEMINI_STREAM = Endpoint("vertex_gemini", "stream_generate_content", gemini.generate_body,
                                gemini.GenerateStream, locate=gemini.locate, json_array=True)

BEDROCK_CONVERSE = Endpoint("aws_bedrock", "converse", bedrock.converse_body,
                            bedrock.ConverseStream, locate=bedrock.locate)
BEDROCK_CONVERSE_STREAM = Endpoint("aws_bedrock", "converse_stream", bedrock.converse_body,
                                   bedrock.ConverseStream, locate=bedrock.locate)
BEDROCK_INVOKE = Endpoint("aws_bedrock", "invoke_model", bedrock.invoke_body,
                          bedrock.InvokeStream, locate=bedrock.locate)
BEDROCK_INVOKE_STREAM = Endpoint("aws_bedrock", "invoke_model_with_response_stream",
                                 bedrock.invoke_body, bedrock.InvokeStream, locate=bedrock.locate)

COHERE_CHAT = Endpoint("cohere", "chat_v2", cohere.chat_body, cohere.ChatStream,
                       locate=cohere.locate, needs_request_body=True)

OLLAMA_CHAT = Endpoint("ollama", "ollama_chat", ollama.body, ollama.NDJSONStream)
OLLAMA_GENERATE = Endpoint("ollama", "ollama_generate", ollama.body, ollama.NDJSONStream)
OLLAMA_EMBED = Endpoint("ollama", "ollama_embed", ollama.body, ollama.NDJSONStream)

#: Paths from ``COST_MIDDLEWARE_PATHS``: the response's shape picks the family. The request
#: body is kept for the one family that needs it (Cohere's model).
SNIFFED = Endpoint(sniff.UNKNOWN, sniff.UNKNOWN, sniff.body, sniff.SniffStream,
                   needs_request_body=True)
