"""What the load-test gateways answer, shared by the ASGI and the WSGI one.

The gateway calls the in-process fake provider (``cost_middleware.ops.fake_provider``) instead of
an upstream over the network, so the figures measure the server and the middleware, not a
second hop. Every handled request is counted; each server process writes its count to
``$LOADTEST_COUNT_DIR/<pid>.count`` when it shuts down (:func:`write_count`), so the driver can
compare rows with requests the app really handled (wrk drops the ones in flight when it stops).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import orjson

from cost_middleware.ops.fake_provider import openai_chat, openai_chat_stream

MODEL = "gpt-4o-mini"
#: Content events in a streamed answer (the stream carries 3 more: finish, usage, [DONE]).
STREAM_EVENTS = 60
#: The JSON answer is padded to about this size, like a real completion.
JSON_BYTES = 2048
JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream"
COUNT_DIR = "LOADTEST_COUNT_DIR"
MIDDLEWARE = "LOADTEST_MIDDLEWARE"
#: Set: the gateway forwards each request to this fake-provider server over HTTP (httpx)
#: instead of answering in process, as a gateway in front of a real provider does.
UPSTREAM = "LOADTEST_UPSTREAM"

_handled = itertools.count()


def request_body(stream: bool) -> bytes:
    """The chat request wrk sends (a stream asks for usage in its last event)."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "system", "content": "You are terse."},
                     {"role": "user", "content": "Summarise the cost of this request."}],
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def count_handled() -> None:
    next(_handled)


def answer(raw: bytes) -> tuple[str, bytes | Iterator[bytes]]:
    """Content type and body (bytes, or an iterator of SSE events) for one request."""
    count_handled()
    body = orjson.loads(raw)
    model = str(body.get("model") or MODEL)
    if body.get("stream"):
        return SSE_TYPE, openai_chat_stream(model, body, events=STREAM_EVENTS)
    plain = openai_chat(model, body)
    completion = orjson.loads(plain)
    message = completion["choices"][0]["message"]
    text = message["content"]
    wanted = len(text) + max(0, JSON_BYTES - len(plain))
    message["content"] = ((text + " ") * (wanted // (len(text) + 1) + 1))[:wanted]
    return JSON_TYPE, orjson.dumps(completion)


def middleware_wanted() -> bool:
    return os.environ.get(MIDDLEWARE) == "1"


def upstream() -> str | None:
    """The upstream's chat-completions URL when the gateway forwards, else None."""
    base = os.environ.get(UPSTREAM)
    return f"{base}/v1/chat/completions" if base else None


def is_stream(raw: bytes) -> bool:
    return bool(orjson.loads(raw).get("stream"))


def write_count() -> None:
    """Leave this process's count for the driver (called once, at shutdown)."""
    folder = os.environ.get(COUNT_DIR)
    if folder:
        handled = next(_handled)  # the counter's next value is the number handled so far
        with open(os.path.join(folder, f"{os.getpid()}.count"), "w") as f:
            f.write(str(handled))

