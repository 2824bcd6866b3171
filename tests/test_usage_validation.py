"""Rules of the readers beyond the fixture corpus: invalid counts, shapes, errors, edge cases."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

import pytest
from fixtures.make_eventstream import chunk, event

from cost_middleware.usage.base import Exchange, Reader
from cost_middleware.usage.detect import Detector
from cost_middleware.usage.fields import MAX_TOKENS
from cost_middleware.usage.model import Extraction

DETECTOR = Detector()
JSON = "application/json"
SSE = "text/event-stream"


def reader(path: str, content_type: str = JSON, status: int = 200,
           headers: dict[str, str] | None = None, request_body: Any = None,
           raw_path: str | None = None) -> Reader:
    target = DETECTOR.match("POST", unquote(path))
    assert target is not None, path
    body = json.dumps(request_body).encode() if request_body is not None else None
    exchange = Exchange("POST", unquote(path), "", body, status,
                        {"content-type": content_type, **(headers or {})}, raw_path or path)
    opened = target.open(exchange)
    assert opened is not None
    return opened


def extract(path: str, body: Any, content_type: str = JSON, complete: bool = True,
            **kwargs: Any) -> tuple[Extraction | None, str | None]:
    r = reader(path, content_type, **kwargs)
    r.feed(body if isinstance(body, bytes) else json.dumps(body).encode())
    return r.finish(complete), r.skip_reason


def sse(*events: Any, done: bool = False) -> bytes:
    out = b""
    for item in events:
        if isinstance(item, tuple):
            out += f"event: {item[0]}\n".encode() + b"data: " + json.dumps(item[1]).encode()
        else:
            out += b"data: " + json.dumps(item).encode()
        out += b"\n\n"
    return out + (b"data: [DONE]\n\n" if done else b"")


OPENAI_BODY = {"id": "c1", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
               "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5}}

# (path, body builder putting ``value`` where a count belongs, and request body if needed)
COUNT_SITES: list[tuple[str, Any]] = [
    ("/v1/chat/completions", lambda v: {**OPENAI_BODY, "usage": {"prompt_tokens": v,
                                                                "completion_tokens": 5}}),
    ("/v1/chat/completions", lambda v: {**OPENAI_BODY, "usage": {
        "prompt_tokens": 10, "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": v}}}),
    ("/v1/responses", lambda v: {"object": "response", "model": "o3", "output": [],
                                 "usage": {"input_tokens": 3, "output_tokens": v}}),
    ("/v1/messages", lambda v: {"type": "message", "model": "claude-x", "usage": {
        "input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": v}}),
    ("/v1beta/models/g:generateContent", lambda v: {"candidates": [], "usageMetadata": {
        "promptTokenCount": 3, "thoughtsTokenCount": v}}),
    ("/model/m/converse", lambda v: {"output": {}, "usage": {"inputTokens": v, "outputTokens": 2}}),
    ("/v2/chat", lambda v: {"message": {}, "usage": {"billed_units": {"input_tokens": v}}}),
    ("/api/chat", lambda v: {"model": "llama3", "done": True, "prompt_eval_count": 1,
                             "eval_count": v}),
]
BAD_COUNTS = ["12", 12.0, 1.5, -5, True, False, MAX_TOKENS + 1, 10**30, [3], {"n": 3}]


@pytest.mark.parametrize(("path", "build"), COUNT_SITES)
@pytest.mark.parametrize("value", BAD_COUNTS, ids=repr)
def test_invalid_counts_give_no_usage_and_a_skip_reason(path: str, build: Any,
                                                        value: Any) -> None:
    result, skip = extract(path, build(value))
    assert result is not None
    assert result.usage is None
    assert skip == "invalid_usage"


@pytest.mark.parametrize(("path", "build"), COUNT_SITES)
def test_the_same_sites_accept_a_valid_count(path: str, build: Any) -> None:
    result, skip = extract(path, build(7))
    assert result is not None and result.usage is not None and skip is None


def test_subsets_larger_than_their_totals_are_invalid() -> None:
    body = {**OPENAI_BODY, "usage": {"prompt_tokens": 10, "completion_tokens": 5,
                                     "prompt_tokens_details": {"cached_tokens": 11}}}
    assert extract("/v1/chat/completions", body) == (_same_model(body), "invalid_usage")
    body = {**OPENAI_BODY, "usage": {"prompt_tokens": 10, "completion_tokens": 5,
                                     "completion_tokens_details": {"reasoning_tokens": 6}}}
    assert extract("/v1/chat/completions", body)[1] == "invalid_usage"


def _same_model(body: dict[str, Any]) -> Extraction:
    return Extraction("openai", "chat_completions", body["model"], None)


@pytest.mark.parametrize("path", [
    "/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/messages",
    "/v1beta/models/g:generateContent", "/model/m/converse", "/model/m/invoke", "/v2/chat",
    "/api/chat", "/api/generate",
])
@pytest.mark.parametrize("body", [{"status": "ok"}, [1, 2], "ok", 3, None])
def test_json_that_is_not_a_provider_shape_is_skipped(path: str, body: Any) -> None:
    assert extract(path, body) == (None, "not_provider_shape")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1/responses",
                                  "/v1beta/models/g:streamGenerateContent", "/v2/chat"])
def test_an_app_stream_at_a_provider_path_is_skipped(path: str) -> None:
    body = sse({"status": "working"}, ("progress", {"step": 2}), {"status": "done"})
    assert extract(path, body, SSE) == (None, "not_provider_shape")


def test_ndjson_that_is_not_ollama_is_skipped() -> None:
    assert extract("/api/chat", b'{"reply": "hi"}\n{"reply": "there"}\n',
                   "application/x-ndjson") == (None, "not_provider_shape")


@pytest.mark.parametrize("status", [400, 401, 429, 500, 503, 529])
@pytest.mark.parametrize(("path", "provider", "api"), [
    ("/v1/chat/completions", "openai", "chat_completions"),
    ("/openai/v1/chat/completions", "groq", "chat_completions"),
    ("/v1/messages", "anthropic", "messages"),
    ("/v1beta/models/gemini-2.5-pro:streamGenerateContent", "google_gemini",
     "stream_generate_content"),
    ("/model/us.anthropic.claude-x-v1%3A0/converse", "aws_bedrock", "converse"),
    ("/v2/chat", "cohere", "chat_v2"),
])
def test_error_statuses_give_no_model_and_no_usage(status: int, path: str, provider: str,
                                                   api: str) -> None:
    # The body is ignored: even one that looks like usage is not read.
    result, skip = extract(path, OPENAI_BODY, status=status, request_body={"model": "c"})
    assert result == Extraction(provider, api, None, None)
    assert skip is None


def test_azure_error_keeps_the_deployment() -> None:
    result, _ = extract("/openai/deployments/prod-4o/chat/completions", {"error": {}},
                        status=429)
    assert result is not None and result.deployment == "prod-4o" and result.model is None


@pytest.mark.parametrize("content_type", ["text/html", "image/png", "application/octet-stream"])
def test_other_content_types_are_not_read(content_type: str) -> None:
    target = DETECTOR.match("POST", "/v1/chat/completions")
    assert target is not None
    exchange = Exchange("POST", "/v1/chat/completions", "", None, 200,
                        {"content-type": content_type})
    assert target.open(exchange) is None


def test_invalid_and_truncated_json_bodies() -> None:
    body = json.dumps(OPENAI_BODY).encode()
    assert extract("/v1/chat/completions", body[:-3]) == (None, "invalid_json")
    assert extract("/v1/chat/completions", body[:-3], complete=False) == (None, "truncated_body")


def test_usage_null_is_unknown_not_zero() -> None:
    result, skip = extract("/v1/chat/completions", {**OPENAI_BODY, "usage": None})
    assert result is not None and result.usage is None and skip is None
    result, skip = extract("/v1/chat/completions", {**OPENAI_BODY, "usage": {}})
    assert result is not None and result.usage is None and skip is None


# --- OpenAI family ---------------------------------------------------------------------------


def test_groq_usage_in_x_groq_and_include_usage_counts_once() -> None:
    base = {"id": "c", "object": "chat.completion.chunk", "model": "llama-3.3-70b-versatile"}
    usage = {"queue_time": 0.01, "prompt_tokens": 48, "completion_tokens": 64, "total_tokens": 112}
    body = sse({**base, "choices": [{"index": 0, "delta": {"content": "hi"}}],
                "x_groq": {"id": "req_1"}},
               {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                "x_groq": {"id": "req_1", "usage": usage}},
               {**base, "choices": [], "usage": usage}, done=True)
    result, _ = extract("/openai/v1/chat/completions", body, SSE)
    assert result is not None and result.provider == "groq"
    assert result.usage is not None
    assert (result.usage.input_tokens, result.usage.output_tokens) == (48, 64)


def test_openrouter_cost_is_the_exact_literal() -> None:
    raw = (b'{"id":"gen-1","provider":"Anthropic","model":"anthropic/claude-sonnet-4.5",'
           b'"object":"chat.completion","choices":[],"usage":{"prompt_tokens":1,'
           b'"completion_tokens":1,"cost":0.00684180000000000000001,'
           b'"cost_details":{"upstream_inference_cost":0.00684180000000000000001}}}')
    result, _ = extract("/api/v1/chat/completions", raw)
    assert result is not None and result.usage is not None
    assert result.usage.reported_cost_usd == Decimal("0.00684180000000000000001")
    assert result.upstream_provider == "Anthropic"


@pytest.mark.parametrize(("cost", "expected"), [
    (0, Decimal(0)), (1.5e-7, Decimal("1.5E-7")), (-1, None), ("0.01", None), (None, None),
])
def test_openrouter_cost_values(cost: Any, expected: Decimal | None) -> None:
    body = {"id": "gen-1", "model": "x/y", "choices": [],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "cost": cost}}
    result, _ = extract("/api/v1/chat/completions", body)
    assert result is not None and result.usage is not None
    assert result.usage.reported_cost_usd == expected


def test_deepseek_hit_count_is_not_added_twice() -> None:
    body = {"model": "deepseek-chat", "choices": [], "usage": {
        "prompt_tokens": 100, "completion_tokens": 5, "prompt_cache_hit_tokens": 60,
        "prompt_cache_miss_tokens": 40, "prompt_tokens_details": {"cached_tokens": 60}}}
    result, _ = extract("/chat/completions", body)
    assert result is not None and result.provider == "deepseek" and result.usage is not None
    assert (result.usage.input_tokens, result.usage.cached_input_tokens) == (100, 60)


@pytest.mark.parametrize(("model", "extra", "provider"), [
    ("gpt-4o-mini", {}, "openai"),
    ("o3-mini", {}, "openai"),
    ("text-embedding-3-large", {}, "openai"),
    ("acme-7b", {"service_tier": "default"}, "openai"),
    ("acme-7b", {"system_fingerprint": "fp_7e31a2c9d4"}, "openai"),
    ("llama3.2:3b", {"system_fingerprint": "fp_ollama"}, "openai_compatible"),
    ("gpt-oss-20b", {}, "openai_compatible"),
    ("mistral-large-latest", {}, "mistral"),
    ("codestral-2508", {}, "mistral"),
    ("magistral-medium-2507", {}, "mistral"),
    ("mistralai/Mistral-7B-Instruct-v0.3", {}, "openai_compatible"),
    ("meta-llama/Llama-3.3-70B-Instruct-Turbo", {}, "together"),
    ("Qwen/Qwen2.5-7B", {"prompt_logprobs": None, "kv_transfer_params": None}, "vllm"),
    ("deepseek-chat", {}, "deepseek"),
    ("x", {"x_groq": {"id": "r"}}, "groq"),
    ("gpt-4o", {"prompt_filter_results": []}, "azure_openai"),
])
def test_openai_compatible_provider_from_the_response(model: str, extra: dict[str, Any],
                                                      provider: str) -> None:
    body = {"id": "c", "object": "chat.completion", "model": model, "choices": [],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1}, **extra}
    result, _ = extract("/v1/chat/completions", body)
    assert result is not None and result.provider == provider


def test_openai_stream_error_event_is_partial() -> None:
    base = {"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o"}
    body = sse({**base, "choices": [{"index": 0, "delta": {"content": "a"}}]},
               {"error": {"message": "server error", "type": "server_error"}})
    result, _ = extract("/v1/chat/completions", body, SSE)
    assert result is not None and result.partial and result.usage is None
    assert result.model == "gpt-4o"


def test_stream_with_only_an_error_is_the_providers() -> None:
    result, _ = extract("/v1/chat/completions", sse({"error": {"message": "overloaded"}}), SSE)
    assert result == Extraction("openai", "chat_completions", None, None, streamed=True,
                                partial=True)


def test_responses_error_event_is_partial() -> None:
    created = {"type": "response.created", "response": {"model": "gpt-5", "usage": None}}
    body = sse(("response.created", created),
               ("error", {"type": "error", "code": "server_error", "message": "boom"}))
    result, _ = extract("/v1/responses", body, SSE)
    assert result is not None and result.partial and result.model == "gpt-5"
    assert result.usage is None


def test_responses_events_without_names_are_read_by_type() -> None:
    usage = {"input_tokens": 5, "output_tokens": 2,
             "output_tokens_details": {"reasoning_tokens": 1}}
    body = sse({"type": "response.created", "response": {"model": "gpt-5", "usage": None}},
               {"type": "response.completed", "response": {"model": "gpt-5", "usage": usage}})
    result, _ = extract("/v1/responses", body, SSE)
    assert result is not None and not result.partial and result.usage is not None
    assert result.usage.reasoning_tokens == 1


# --- Anthropic -------------------------------------------------------------------------------


def test_message_delta_nulls_do_not_erase_and_its_ttl_split_is_ignored() -> None:
    start = {"type": "message_start", "message": {"model": "claude-x", "usage": {
        "input_tokens": 10, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 1}}}
    delta = {"type": "message_delta", "delta": {}, "usage": {
        "input_tokens": None, "cache_creation_input_tokens": None, "output_tokens": 50,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 100}}}
    body = sse(("message_start", start), ("message_delta", delta),
               ("message_stop", {"type": "message_stop"}))
    result, _ = extract("/v1/messages", body, SSE)
    assert result is not None and result.usage is not None and not result.partial
    usage = result.usage
    assert (usage.input_tokens, usage.output_tokens) == (110, 50)
    assert (usage.cache_write_5m_input_tokens, usage.cache_write_1h_input_tokens) == (100, 0)


def test_cache_split_that_does_not_add_up_is_unknown() -> None:
    body = {"type": "message", "model": "claude-x", "usage": {
        "input_tokens": 1, "output_tokens": 1, "cache_creation_input_tokens": 10,
        "cache_creation": {"ephemeral_5m_input_tokens": 3, "ephemeral_1h_input_tokens": 3}}}
    result, _ = extract("/v1/messages", body)
    assert result is not None and result.usage is not None
    assert result.usage.cache_write_5m_input_tokens is None
    assert result.usage.cache_write_1h_input_tokens is None


def test_anthropic_error_envelope_at_200() -> None:
    result, skip = extract("/v1/messages", {"type": "error", "error": {"type": "x"}})
    assert result == Extraction("anthropic", "messages", None, None) and skip is None


def test_anthropic_stream_invalid_usage_object() -> None:
    start = {"type": "message_start", "message": {"model": "claude-x", "usage": "12"}}
    result, skip = extract("/v1/messages", sse(("message_start", start)), SSE)
    assert result is not None and result.model == "claude-x" and result.usage is None
    assert skip == "invalid_usage"


# --- Gemini ----------------------------------------------------------------------------------


def test_gemini_modalities_and_url_model_fallback() -> None:
    body = {"candidates": [], "usageMetadata": {
        "promptTokenCount": 50, "candidatesTokenCount": 10, "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": 20}, {"modality": "AUDIO", "tokenCount": 30},
            {"modality": ["odd"]}],
        "candidatesTokensDetails": [{"modality": "AUDIO", "tokenCount": 10}]}}
    result, _ = extract("/v1beta/models/gemini-2.5-flash:generateContent", body)
    assert result is not None and result.model == "gemini-2.5-flash" and result.usage is not None
    assert (result.usage.input_audio_tokens, result.usage.input_text_tokens) == (30, 20)
    assert result.usage.output_audio_tokens == 10 and result.usage.reasoning_tokens is None


def test_gemini_stream_error_chunk_is_partial() -> None:
    chunk = {"candidates": [{"content": {"parts": [{"text": "a"}]}}],
             "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 1},
             "modelVersion": "gemini-2.5-pro"}
    body = sse(chunk, {"error": {"code": 500, "message": "internal", "status": "INTERNAL"}})
    result, _ = extract("/v1beta/models/gemini-2.5-pro:streamGenerateContent", body, SSE)
    assert result is not None and result.partial and result.usage is not None
    assert result.usage.output_tokens == 1


def test_gemini_array_cut_before_its_end_is_partial() -> None:
    chunk = {"candidates": [{"content": {"parts": [{"text": "a"}]}}],
             "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 2},
             "modelVersion": "gemini-2.5-pro"}
    body = b"[" + json.dumps(chunk).encode() + b",\r\n" + json.dumps(chunk).encode()[:20]
    result, _ = extract("/v1beta/models/gemini-2.5-pro:streamGenerateContent", body, JSON,
                        complete=False)
    assert result is not None and result.partial and result.streamed
    assert result.usage is not None and result.usage.output_tokens == 2


# --- Bedrock ---------------------------------------------------------------------------------


def test_bedrock_arn_model_from_the_raw_path() -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-x-v1:0"
    raw = "/model/" + arn.replace(":", "%3A").replace("/", "%2F") + "/converse"
    body = {"output": {}, "usage": {"inputTokens": 1, "outputTokens": 2}}
    result, _ = extract(raw, body, raw_path=raw)
    assert result is not None and result.model == arn


def test_bedrock_model_from_the_decoded_path_when_there_is_no_raw_path() -> None:
    target = DETECTOR.match("POST", "/model/us.amazon.nova-pro-v1:0/converse")
    assert target is not None
    exchange = Exchange("POST", "/model/us.amazon.nova-pro-v1:0/converse", "", None, 200,
                        {"content-type": JSON})
    r = target.open(exchange)
    assert r is not None
    r.feed(b'{"output": {}, "usage": {"inputTokens": 1, "outputTokens": 2}}')
    result = r.finish(True)
    assert result is not None and result.model == "us.amazon.nova-pro-v1:0"


@pytest.mark.parametrize("value", ["x", "-1", "1.5", "99999999999999", " ", "١٢"])
def test_bedrock_bad_token_headers_are_invalid(value: str) -> None:
    result, skip = extract("/model/meta.llama3-v1%3A0/invoke", {"generation": "hi"},
                           headers={"x-amzn-bedrock-input-token-count": value,
                                    "x-amzn-bedrock-output-token-count": "3"})
    assert result is not None and result.usage is None and skip == "invalid_usage"


def test_bedrock_headers_with_cache_counts() -> None:
    result, _ = extract("/model/amazon.nova-pro-v1%3A0/invoke", {"output": {}},
                        headers={"x-amzn-bedrock-input-token-count": "10",
                                 "x-amzn-bedrock-output-token-count": "3",
                                 "x-amzn-bedrock-cache-read-input-token-count": "100",
                                 "x-amzn-bedrock-cache-write-input-token-count": "20"})
    assert result is not None and result.usage is not None
    usage = result.usage
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_input_tokens) == (
        130, 100, 20)
    assert usage.cache_write_5m_input_tokens is None


def test_bedrock_invoke_stream_of_another_model_uses_the_metrics() -> None:
    last = {"outputs": [{"text": "hi", "stop_reason": "stop"}],
            "amazon-bedrock-invocationMetrics": {"inputTokenCount": 7, "outputTokenCount": 2,
                                                 "invocationLatency": 100,
                                                 "firstByteLatency": 50}}
    body = chunk({"outputs": [{"text": "h"}]}) + chunk(last)
    result, _ = extract("/model/mistral.mistral-large-2407-v1%3A0/invoke-with-response-stream",
                        body, "application/vnd.amazon.eventstream")
    assert result is not None and not result.partial and result.usage is not None
    assert (result.usage.input_tokens, result.usage.output_tokens) == (7, 2)


def test_bedrock_stream_with_a_bad_crc_is_partial() -> None:
    good = chunk({"type": "message_start", "message": {
        "model": "claude-x", "usage": {"input_tokens": 4, "output_tokens": 1}}})
    bad = bytearray(chunk({"type": "message_stop"}))
    bad[-1] ^= 0xFF
    result, skip = extract("/model/m/invoke-with-response-stream", good + bytes(bad),
                           "application/vnd.amazon.eventstream")
    assert result is not None and result.partial and result.usage is not None
    assert result.usage.input_tokens == 4 and skip is None


# --- Cohere, Ollama ----------------------------------------------------------------------------


def test_cohere_without_a_request_body_has_no_model() -> None:
    body = {"message": {}, "usage": {"billed_units": {"input_tokens": 3, "output_tokens": 4}}}
    result, _ = extract("/v2/chat", body)
    assert result is not None and result.model is None and result.usage is not None


def test_cohere_cache_count_beyond_billed_input_is_not_a_subset() -> None:
    body = {"message": {}, "usage": {"billed_units": {"input_tokens": 3, "output_tokens": 4},
                                     "tokens": {"input_tokens": 500}, "cached_tokens": 400}}
    result, _ = extract("/v2/chat", body, request_body={"model": "command-a-03-2025"})
    assert result is not None and result.usage is not None
    assert result.usage.cached_input_tokens == 0 and result.usage.raw_input_tokens == 500


def test_ollama_not_done_has_no_usage_and_stream_error_is_partial() -> None:
    result, _ = extract("/api/generate", {"model": "llama3", "done": False, "response": "a"})
    assert result is not None and result.usage is None
    lines = b'{"model":"llama3","done":false}\n{"error":"model unloaded"}\n'
    result, _ = extract("/api/chat", lines, "application/x-ndjson")
    assert result is not None and result.partial and result.usage is None
    assert result.model == "llama3"


def test_request_body_is_read_only_where_needed() -> None:
    needs = {path for path in ("/v1/chat/completions", "/v1/messages", "/v2/chat",
                               "/openai/v1/chat/completions", "/api/chat",
                               "/v1beta/models/g:generateContent", "/model/m/converse")
             if (t := DETECTOR.match("POST", path)) is not None and t.needs_request_body}
    assert needs == {"/v2/chat", "/openai/v1/chat/completions"}


def test_invoke_stream_payloads_that_are_not_base64_are_ignored() -> None:
    stream = "application/vnd.amazon.eventstream"
    body = event("chunk", {"bytes": "%%%not base64%%%"}) + event("chunk", {"p": "x"})
    assert extract("/model/m/invoke-with-response-stream", body, stream) == (
        None, "not_provider_shape")
    body += event("chunk", {"bytes": base64.b64encode(b"[1]").decode()})
    result, _ = extract("/model/m/invoke-with-response-stream", body, stream)
    assert result is not None and result.model == "m" and result.usage is None
