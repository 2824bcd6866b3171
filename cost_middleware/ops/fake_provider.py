"""A local stand-in for AI providers: realistic response bodies and an ASGI app serving them.

Used by the demo, the examples and tests, and useful in users' own tests. It answers
OpenAI Chat Completions, Anthropic Messages and Gemini ``generateContent`` requests, as JSON or
as a stream when the request asks for one, with token counts derived from the request.
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Iterator
from typing import Any

import orjson

from cost_middleware._types import Receive, Scope, Send

WORDS = ("the", "cost", "of", "each", "request", "is", "known", "to", "the", "token")


def _counts(body: dict[str, Any]) -> tuple[int, int, int]:
    """Deterministic (input, cached, output) counts from the request, like a real tokenizer."""
    text = orjson.dumps(body.get("messages") or body.get("contents") or body.get("input") or "")
    seed = zlib.crc32(text)
    rng = random.Random(seed)
    input_tokens = 200 + len(text) // 4 + rng.randrange(0, 3000)
    cached = (input_tokens // 1024) * 1024 if rng.random() < 0.4 else 0
    output = 20 + rng.randrange(0, 800)
    return input_tokens, cached, output


def openai_chat(model: str, body: dict[str, Any]) -> bytes:
    inp, cached, out = _counts(body)
    return orjson.dumps({
        "id": f"chatcmpl-{random.getrandbits(64):x}", "object": "chat.completion",
        "created": int(time.time()), "model": model, "system_fingerprint": "fp_demo",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": " ".join(WORDS)}}],
        "usage": {"prompt_tokens": inp, "completion_tokens": out, "total_tokens": inp + out,
                  "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}},
    })


def openai_chat_stream(model: str, body: dict[str, Any], events: int = 20) -> Iterator[bytes]:
    inp, cached, out = _counts(body)
    cid = f"chatcmpl-{random.getrandbits(64):x}"
    base = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "system_fingerprint": "fp_demo"}
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    for i in range(events):
        delta = {"content": WORDS[i % len(WORDS)] + " "} if i else {"role": "assistant"}
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        if include_usage:
            chunk["usage"] = None
        yield b"data: " + orjson.dumps(chunk) + b"\n\n"
    yield b"data: " + orjson.dumps(
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}) + b"\n\n"
    if include_usage:
        yield b"data: " + orjson.dumps({**base, "choices": [], "usage": {
            "prompt_tokens": inp, "completion_tokens": out, "total_tokens": inp + out,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": 0}}}) + b"\n\n"
    yield b"data: [DONE]\n\n"


def _anthropic_usage(body: dict[str, Any]) -> dict[str, Any]:
    inp, cached, out = _counts(body)
    write = 0 if cached else (inp // 2048) * 1024
    return {"input_tokens": inp - cached - write, "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": write,
            "cache_creation": {"ephemeral_5m_input_tokens": write, "ephemeral_1h_input_tokens": 0},
            "output_tokens": out, "service_tier": "standard"}


def anthropic_messages(model: str, body: dict[str, Any]) -> bytes:
    return orjson.dumps({
        "id": f"msg_{random.getrandbits(64):x}", "type": "message", "role": "assistant",
        "model": model, "content": [{"type": "text", "text": " ".join(WORDS)}],
        "stop_reason": "end_turn", "stop_sequence": None, "usage": _anthropic_usage(body),
    })


def anthropic_messages_stream(model: str, body: dict[str, Any], events: int = 20
                              ) -> Iterator[bytes]:
    usage = _anthropic_usage(body)
    start_usage = {**usage, "output_tokens": 1}

    def event(name: str, data: dict[str, Any]) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    yield event("message_start", {"type": "message_start", "message": {
        "id": f"msg_{random.getrandbits(64):x}", "type": "message", "role": "assistant",
        "model": model, "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": start_usage}})
    yield event("content_block_start", {"type": "content_block_start", "index": 0,
                                        "content_block": {"type": "text", "text": ""}})
    for i in range(events):
        yield event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                            "delta": {"type": "text_delta",
                                                      "text": WORDS[i % len(WORDS)] + " "}})
    yield event("content_block_stop", {"type": "content_block_stop", "index": 0})
    yield event("message_delta", {"type": "message_delta",
                                  "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                  "usage": {"output_tokens": usage["output_tokens"]}})
    yield event("message_stop", {"type": "message_stop"})


def gemini_generate(model: str, body: dict[str, Any]) -> bytes:
    inp, cached, out = _counts(body)
    thoughts = out // 3
    return orjson.dumps({
        "candidates": [{"content": {"role": "model", "parts": [{"text": " ".join(WORDS)}]},
                        "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": inp, "cachedContentTokenCount": cached,
                          "candidatesTokenCount": out - thoughts, "thoughtsTokenCount": thoughts,
                          "totalTokenCount": inp + out},
        "modelVersion": model, "responseId": f"{random.getrandbits(64):x}",
    })


class FakeProviderApp:
    """ASGI app answering provider requests at their usual paths (any prefix)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        raw = bytearray()
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body", False):
                break
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            body = None
        status, ctype, payload = respond(scope["path"], body)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype)]})
        if isinstance(payload, bytes):
            await send({"type": "http.response.body", "body": payload})
            return
        for chunk in payload:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def respond(path: str, body: Any) -> tuple[int, bytes, bytes | Iterator[bytes]]:
    """Status, content type and body (bytes, or an iterator of chunks) for one request."""
    json_type = b"application/json"
    if not isinstance(body, dict):
        return 400, json_type, b'{"error": {"message": "invalid JSON body"}}'
    stream = bool(body.get("stream"))
    if path.endswith("/chat/completions"):
        model = str(body.get("model") or "gpt-4o-mini")
        if stream:
            return 200, b"text/event-stream", openai_chat_stream(model, body)
        return 200, json_type, openai_chat(model, body)
    if path.endswith("/v1/messages"):
        model = str(body.get("model") or "claude-haiku-4-5")
        if stream:
            return 200, b"text/event-stream", anthropic_messages_stream(model, body)
        return 200, json_type, anthropic_messages(model, body)
    if path.endswith(":generateContent"):
        model = path.rsplit("/", 1)[-1].split(":", 1)[0]
        return 200, json_type, gemini_generate(model, body)
    return 404, json_type, b'{"error": {"message": "not found"}}'


fake_provider_app = FakeProviderApp()
