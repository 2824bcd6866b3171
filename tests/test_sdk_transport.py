"""The official openai and anthropic SDKs, sync and async, send through our transport.

They call a local fake provider that uvicorn serves on 127.0.0.1, from inside a request of an app
wrapped with the middleware (the record is attributed to that request) and outside any request
(``tracker=``). Every call records its exact usage, and the SDK gets the bytes and the objects
it gets without the transport.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
import uvicorn
from conftest import CORPUS_FIXTURES, ROOT, free_port
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from test_httpx_transport import collect, sending, settings

from cost_middleware import CostMiddleware, CostRecord, Usage, WSGICostMiddleware
from cost_middleware._types import Receive, Scope, Send
from cost_middleware.engine.tracker import CostTracker
from cost_middleware.httpx_transport import AsyncCostTransport, CostTransport
from cost_middleware.ops.fake_provider import (
    anthropic_messages_stream,
    fake_provider_app,
    openai_chat_stream,
)

PROMPT = [{"role": "user", "content": "What did this answer cost?"}]
#: The fake provider derives its counts from the prompt: these are PROMPT's.
CHAT_USAGE = Usage(input_tokens=3130, output_tokens=536, reasoning_tokens=0,
                   input_audio_tokens=0, output_audio_tokens=0)
CHAT_STREAM_USAGE = Usage(input_tokens=3130, output_tokens=536, reasoning_tokens=0)
MESSAGES_USAGE = Usage(input_tokens=3130, output_tokens=536, cache_write_input_tokens=1024,
                       cache_write_5m_input_tokens=1024, cache_write_1h_input_tokens=0)
#: The Responses API stream of the corpus (the fake provider has no ``/v1/responses``).
RESPONSES_STREAM = (CORPUS_FIXTURES / "openai_responses_stream.sse").read_bytes()
RESPONSES_USAGE = Usage(input_tokens=842, output_tokens=356, reasoning_tokens=192)

HEADERS = {"x-tenant-id": "acme", "x-request-id": "req-9"}


@dataclass(frozen=True)
class Case:
    """One SDK call and the record it must leave."""

    name: str
    sdk: str
    method: str
    kwargs: dict[str, Any]
    path: str
    expected: dict[str, Any]

    @property
    def streamed(self) -> bool:
        return bool(self.kwargs.get("stream"))


def expect(provider: str, api: str, model: str, streamed: bool, usage: Usage) -> dict[str, Any]:
    return {"provider": provider, "api": api, "model": model, "streamed": streamed,
            "partial": False, "status_code": 200, "usage": usage}


CASES = [
    Case("openai-chat", "openai", "chat.completions.create",
         {"model": "gpt-4o-mini", "messages": PROMPT}, "/v1/chat/completions",
         expect("openai", "chat_completions", "gpt-4o-mini", False, CHAT_USAGE)),
    Case("openai-chat-stream", "openai", "chat.completions.create",
         {"model": "gpt-4o-mini", "messages": PROMPT, "stream": True,
          "stream_options": {"include_usage": True}}, "/v1/chat/completions",
         expect("openai", "chat_completions", "gpt-4o-mini", True, CHAT_STREAM_USAGE)),
    Case("openai-responses-stream", "openai", "responses.create",
         {"model": "gpt-5-mini", "input": "What did this answer cost?", "stream": True},
         "/v1/responses",
         expect("openai", "responses", "gpt-5-mini-2025-08-07", True, RESPONSES_USAGE)),
    Case("anthropic-messages", "anthropic", "messages.create",
         {"model": "claude-haiku-4-5", "max_tokens": 1024, "messages": PROMPT}, "/v1/messages",
         expect("anthropic", "messages", "claude-haiku-4-5", False, MESSAGES_USAGE)),
    Case("anthropic-messages-stream", "anthropic", "messages.create",
         {"model": "claude-haiku-4-5", "max_tokens": 1024, "messages": PROMPT, "stream": True},
         "/v1/messages",
         expect("anthropic", "messages", "claude-haiku-4-5", True, MESSAGES_USAGE)),
]


# -- the provider ---------------------------------------------------------------------------

@dataclass
class Sent:
    """One response as the provider sent it."""

    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""


async def responses_stream(scope: Scope, receive: Receive, send: Send) -> None:
    """The corpus' Responses API stream, one event per write."""
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    *events, rest = RESPONSES_STREAM.split(b"\n\n")
    for event in events:
        await send({"type": "http.response.body", "body": event + b"\n\n", "more_body": True})
    await send({"type": "http.response.body", "body": rest})


class Provider:
    """The fake provider's ASGI app, keeping the last response it sent."""

    def __init__(self) -> None:
        self.url = ""
        self.last = Sent()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Kept before it is sent: the client may have it all before this app returns.
        sent = self.last = Sent()

        async def tee(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                sent.status, sent.headers = message["status"], list(message["headers"])
            else:
                sent.body += message.get("body", b"")
            await send(message)

        served = responses_stream if scope["path"].endswith("/v1/responses") else fake_provider_app
        await served(scope, receive, tee)


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    app = Provider()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           ws="none", log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the provider did not start"
        time.sleep(0.01)
    app.url = f"http://127.0.0.1:{port}"
    yield app
    server.should_exit = True
    thread.join(20)


# -- the SDKs -------------------------------------------------------------------------------

def sdk_client(case: Case, transport: Any, url: str, sync: bool, http: Any = None) -> Any:
    """The case's SDK client sending through ``transport`` in an ``http`` client: by default
    the SDK's own, as its docs show."""
    sdk: Any = openai if case.sdk == "openai" else anthropic
    if http is None:
        http = sdk.DefaultHttpxClient if sync else sdk.DefaultAsyncHttpxClient
    if case.sdk == "openai":
        make, base_url = (openai.OpenAI if sync else openai.AsyncOpenAI), url + "/v1"
    else:
        make, base_url = (anthropic.Anthropic if sync else anthropic.AsyncAnthropic), url
    return make(api_key="test", base_url=base_url, max_retries=0,
                http_client=http(transport=transport))


def call(client: Any, case: Case) -> Any:
    """What the SDK returns: the parsed object, or every event of a stream."""
    with client:
        result = attrgetter(case.method)(client)(**case.kwargs)
        if not case.streamed:
            return result
        with result as events:
            return list(events)


async def acall(client: Any, case: Case) -> Any:
    async with client:
        result = await attrgetter(case.method)(client)(**case.kwargs)
        if not case.streamed:
            return result
        async with result as events:
            return [event async for event in events]


def replayed(sent: Sent) -> httpx2.MockTransport:
    """A transport answering with what the provider sent: what the SDK gets without ours."""
    return httpx2.MockTransport(
        lambda request: httpx2.Response(sent.status, headers=sent.headers, content=sent.body))


def without_transport(case: Case, sent: Sent, sync: bool) -> Any:
    client = sdk_client(case, replayed(sent), "http://replay.test", sync)
    return call(client, case) if sync else asyncio.run(acall(client, case))


# -- where the call is made -----------------------------------------------------------------

def in_flask_request(tmp_path: Path, work: Callable[[], Any]) -> tuple[Any, list[CostRecord]]:
    """``work`` run by a Flask view behind WSGICostMiddleware."""
    results: list[Any] = []
    app = Flask(__name__)

    @app.post("/ask")
    def ask() -> dict[str, bool]:
        results.append(work())
        return {"ok": True}

    middleware = WSGICostMiddleware(app.wsgi_app, settings(tmp_path))
    app.wsgi_app = middleware  # type: ignore[method-assign]
    records = collect(middleware.tracker)
    assert app.test_client().post("/ask", headers=HEADERS).status_code == 200
    middleware.tracker.close()
    return results[0], records


def in_starlette_request(tmp_path: Path, work: Callable[[], Awaitable[Any]]
                         ) -> tuple[Any, list[CostRecord]]:
    """``work`` awaited by a Starlette endpoint behind CostMiddleware."""
    results: list[Any] = []

    async def ask(request: Request) -> JSONResponse:
        results.append(await work())
        return JSONResponse({"ok": True})

    middleware = CostMiddleware(Starlette(routes=[Route("/ask", ask, methods=["POST"])]),
                                settings(tmp_path))
    records = collect(middleware.tracker)

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=middleware),
                                     base_url="http://app") as client:
            return await client.post("/ask", headers=HEADERS)

    assert asyncio.run(go()).status_code == 200
    middleware.tracker.close()
    return results[0], records


def run(case: Case, url: str, tmp_path: Path, sync: bool, in_request: bool
        ) -> tuple[Any, list[CostRecord]]:
    """The case's SDK call through our transport, and the records it left."""
    if in_request:
        if sync:
            return in_flask_request(
                tmp_path, lambda: call(sdk_client(case, CostTransport(), url, True), case))
        return in_starlette_request(
            tmp_path, lambda: acall(sdk_client(case, AsyncCostTransport(), url, False), case))
    tracker = CostTracker(settings(tmp_path))
    records = collect(tracker)
    if sync:
        got = call(sdk_client(case, CostTransport(tracker=tracker), url, True), case)
    else:
        got = asyncio.run(
            acall(sdk_client(case, AsyncCostTransport(tracker=tracker), url, False), case))
    tracker.close()
    return got, records


def attribution(case: Case, in_request: bool) -> dict[str, Any]:
    if in_request:
        return {"tenant": "acme", "request_id": "req-9", "route": "/ask", "method": "POST"}
    return {"tenant": None, "route": case.path, "method": "POST"}


def fields(record: CostRecord, names: dict[str, Any]) -> dict[str, Any]:
    return {name: getattr(record, name) for name in names}


# -- the tests ------------------------------------------------------------------------------

@pytest.mark.parametrize("in_request", [True, False], ids=["in-request", "tracker"])
@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_an_sdk_call_is_recorded_exactly_and_the_sdk_gets_what_it_would(
        case: Case, sync: bool, in_request: bool, provider: Provider, tmp_path: Path) -> None:
    got, records = run(case, provider.url, tmp_path, sync, in_request)
    assert got == without_transport(case, provider.last, sync)
    expected = {**case.expected, **attribution(case, in_request)}
    assert [fields(record, expected) for record in records] == [expected]


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_sdk_reads_the_bytes_the_provider_sent(case: Case, sync: bool, provider: Provider,
                                                   tmp_path: Path) -> None:
    tracker = CostTracker(settings(tmp_path))
    records = collect(tracker)
    owner, _, name = case.method.rpartition(".")
    raw = f"{owner}.with_streaming_response.{name}"

    def read() -> bytes:
        client = sdk_client(case, CostTransport(tracker=tracker), provider.url, True)
        with client, attrgetter(raw)(client)(**case.kwargs) as response:
            return b"".join(response.iter_bytes())

    async def aread() -> bytes:
        client = sdk_client(case, AsyncCostTransport(tracker=tracker), provider.url, False)
        async with client, attrgetter(raw)(client)(**case.kwargs) as response:
            return b"".join([chunk async for chunk in response.iter_bytes()])

    body = read() if sync else asyncio.run(aread())
    tracker.close()
    assert body == provider.last.body and provider.last.status == 200
    assert [fields(record, case.expected) for record in records] == [case.expected]


OPENAI_CASES = [case for case in CASES if case.sdk == "openai"]


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
@pytest.mark.parametrize("case", OPENAI_CASES, ids=[case.name for case in OPENAI_CASES])
def test_openai_in_an_httpx_client_as_the_former_readme_showed(
        case: Case, sync: bool, provider: Provider, tmp_path: Path) -> None:
    """The openai SDK still takes an httpx client: the transport then sends with httpx."""
    tracker = CostTracker(settings(tmp_path))
    records = collect(tracker)
    if sync:
        client = sdk_client(case, CostTransport(tracker=tracker), provider.url, sync, httpx.Client)
        got = call(client, case)
    else:
        client = sdk_client(case, AsyncCostTransport(tracker=tracker), provider.url, sync,
                            httpx.AsyncClient)
        got = asyncio.run(acall(client, case))
    tracker.close()
    assert got == without_transport(case, provider.last, sync)
    assert [fields(record, case.expected) for record in records] == [case.expected]


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
def test_the_usage_in_the_read_an_sdk_stops_at_is_recorded(sync: bool, tmp_path: Path) -> None:
    """The usage and ``[DONE]`` often come in one network read: the openai SDK stops there."""
    case = OPENAI_CASES[1]
    events = list(openai_chat_stream("gpt-4o-mini", case.kwargs))
    provider = sending(httpx2, [b"".join(events[:-2]), b"".join(events[-2:])], sync)
    tracker = CostTracker(settings(tmp_path))
    records = collect(tracker)
    if sync:
        call(sdk_client(case, CostTransport(provider, tracker=tracker), "http://x.test", sync),
             case)
    else:
        asyncio.run(acall(sdk_client(case, AsyncCostTransport(provider, tracker=tracker),
                                     "http://x.test", sync), case))
    tracker.close()
    assert [(record.usage, record.streamed) for record in records] == [(CHAT_STREAM_USAGE, True)]


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
def test_a_stream_the_sdk_closes_early_is_recorded_as_partial(sync: bool,
                                                              tmp_path: Path) -> None:
    """Closed after its first event, a Messages stream leaves the usage seen so far."""
    case = CASES[-1]
    provider = sending(httpx2, list(anthropic_messages_stream("claude-haiku-4-5", case.kwargs)),
                       sync)
    tracker = CostTracker(settings(tmp_path))
    records = collect(tracker)

    def first() -> Any:
        client = sdk_client(case, CostTransport(provider, tracker=tracker), "http://x.test", True)
        with client, attrgetter(case.method)(client)(**case.kwargs) as stream:
            return next(iter(stream))

    async def afirst() -> Any:
        client = sdk_client(case, AsyncCostTransport(provider, tracker=tracker), "http://x.test",
                            False)
        async with client, await attrgetter(case.method)(client)(**case.kwargs) as stream:
            return await anext(aiter(stream))

    event = first() if sync else asyncio.run(afirst())
    tracker.close()
    assert event.type == "message_start"
    expected = {**case.expected, "partial": True,
                "usage": Usage(input_tokens=3130, output_tokens=1, cache_write_input_tokens=1024,
                               cache_write_5m_input_tokens=1024, cache_write_1h_input_tokens=0)}
    assert [fields(record, expected) for record in records] == [expected]


def readme_snippet() -> str:
    """The README's SDK snippet, verbatim."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("give the SDK's client our transport", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_snippet_runs(provider: Provider, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Its clients, pointed at the fake provider the SDKs' own way, record inside a request."""
    for name, value in {"OPENAI_API_KEY": "test", "OPENAI_BASE_URL": provider.url + "/v1",
                        "ANTHROPIC_API_KEY": "test", "ANTHROPIC_BASE_URL": provider.url}.items():
        monkeypatch.setenv(name, value)
    snippet: dict[str, Any] = {}
    exec(readme_snippet(), snippet)

    async def ask() -> list[Any]:
        chat = await snippet["client"].chat.completions.create(model="gpt-4o-mini",
                                                               messages=PROMPT)
        message = await snippet["claude"].messages.create(model="claude-haiku-4-5",
                                                          max_tokens=1024, messages=PROMPT)
        await snippet["client"].close()
        await snippet["claude"].close()
        return [chat.model, message.model]

    got, records = in_starlette_request(tmp_path, ask)
    assert got == ["gpt-4o-mini", "claude-haiku-4-5"]
    chat, message = (expect("openai", "chat_completions", "gpt-4o-mini", False, CHAT_USAGE),
                     expect("anthropic", "messages", "claude-haiku-4-5", False, MESSAGES_USAGE))
    where = attribution(CASES[0], in_request=True)
    assert [fields(record, {**chat, **where}) for record in records] == [
        {**chat, **where}, {**message, **where}]
