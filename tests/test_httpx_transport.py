"""Provider calls made with httpx or httpx2 inside a request are recorded against that request."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import httpx2
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cost_middleware import CostMiddleware, CostRecord, Settings
from cost_middleware.engine.tracker import CostTracker
from cost_middleware.httpx_transport import AsyncCostTransport, CostTransport
from cost_middleware.ops.fake_provider import fake_provider_app, openai_chat_stream

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def settings(tmp_path: Path) -> Settings:
    return Settings(statsd_enabled=False, database_url=f"sqlite:///{tmp_path / 'x.db'}",
                    spool_dir=str(tmp_path / "spool"))


def collect(tracker: CostTracker) -> list[CostRecord]:
    records: list[CostRecord] = []
    tracker.record = records.append  # type: ignore[method-assign]
    return records


def app_with_client(client: httpx.AsyncClient) -> Starlette:
    async def ask(request: Request) -> JSONResponse:
        reply = await client.post("http://provider/v1/chat/completions", json=CHAT)
        return JSONResponse({"answer": reply.json()["choices"][0]["message"]["content"]})

    async def stream(request: Request) -> JSONResponse:
        body = dict(CHAT, stream=True, stream_options={"include_usage": True})
        words = 0
        async with client.stream("POST", "http://provider/v1/chat/completions",
                                 json=body) as reply:
            async for line in reply.aiter_lines():
                words += line.startswith("data: {")
        return JSONResponse({"events": words})

    async def gateway(request: Request) -> Response:
        reply = await client.post("http://provider/v1/chat/completions",
                                  content=await request.body())
        return Response(reply.content, media_type="application/json")

    return Starlette(routes=[Route("/ask", ask, methods=["POST"]),
                             Route("/stream", stream, methods=["POST"]),
                             Route("/v1/chat/completions", gateway, methods=["POST"])])


def run(mw: CostMiddleware, path: str, body: bytes = b"{}") -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=mw)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
            return await c.post(path, content=body,
                                headers={"x-tenant-id": "acme", "x-request-id": "req-9"})

    return asyncio.run(go())


def provider_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=AsyncCostTransport(
        httpx.ASGITransport(app=fake_provider_app)))


def test_sdk_call_is_attributed_to_the_request(tmp_path: Path) -> None:
    mw = CostMiddleware(app_with_client(provider_client()), settings(tmp_path))
    records = collect(mw.tracker)
    reply = run(mw, "/ask")
    assert reply.status_code == 200 and "answer" in reply.json()
    assert len(records) == 1
    r = records[0]
    assert (r.provider, r.model, r.tenant, r.request_id, r.route) == (
        "openai", "gpt-4o-mini", "acme", "req-9", "/ask")
    assert r.usage is not None and r.usage.input_tokens > 0 and not r.streamed


def test_streamed_sdk_call_is_read_as_it_is_consumed(tmp_path: Path) -> None:
    mw = CostMiddleware(app_with_client(provider_client()), settings(tmp_path))
    records = collect(mw.tracker)
    reply = run(mw, "/stream")
    assert reply.json()["events"] > 5
    assert len(records) == 1 and records[0].streamed and records[0].usage is not None
    assert records[0].partial is False


def test_a_forwarded_provider_response_is_recorded_once(tmp_path: Path) -> None:
    counting = settings(tmp_path).with_overrides(statsd_enabled=True, statsd_host="127.0.0.1")
    mw = CostMiddleware(app_with_client(provider_client()), counting)
    records = collect(mw.tracker)
    reply = run(mw, "/v1/chat/completions", orjson.dumps(CHAT))
    assert reply.json()["object"] == "chat.completion"
    assert len(records) == 1
    assert mw.tracker.metrics.snapshot()["counters"].get("skipped.seen_by_client") == 1
    mw.tracker.metrics.close()


def test_outside_a_request_the_given_tracker_records(tmp_path: Path) -> None:
    tracker = CostTracker(settings(tmp_path))
    records = collect(tracker)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method != "POST":
            return httpx.Response(200, json={"data": []})
        body: Any = orjson.loads(request.content)
        from cost_middleware.ops.fake_provider import anthropic_messages

        return httpx.Response(200, content=anthropic_messages(body["model"], body),
                              headers={"content-type": "application/json"})

    with httpx.Client(transport=CostTransport(httpx.MockTransport(handler),
                                              tracker=tracker)) as client:
        client.post("https://api.anthropic.test/v1/messages",
                    json={"model": "claude-haiku-4-5", "messages": []})
        client.get("https://api.anthropic.test/v1/models")
    assert len(records) == 1
    assert records[0].provider == "anthropic" and records[0].tenant is None
    tracker.close()


def test_without_a_request_or_tracker_nothing_happens() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"ok": True})

    with httpx.Client(transport=CostTransport(httpx.MockTransport(handler))) as client:
        assert client.post("https://x.test/v1/chat/completions", json={}).json() == {"ok": True}


def test_a_failed_call_propagates_and_ends_its_capture(tmp_path: Path) -> None:
    """Connection errors reach the caller unchanged, sync and async; nothing is recorded and
    no internal error is counted."""
    tracker = CostTracker(Settings(statsd_enabled=True, database_url=f"sqlite:///{tmp_path}/x.db",
                                   spool_dir=str(tmp_path / "spool")))
    records = collect(tracker)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    url = "https://api.openai.test/v1/chat/completions"
    with httpx.Client(transport=CostTransport(httpx.MockTransport(refuse),
                                              tracker=tracker)) as client:
        try:
            client.post(url, json=CHAT)
        except httpx.ConnectError as error:
            assert "refused" in str(error)
        else:
            raise AssertionError("the error was swallowed")

    async def refuse_async(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async def go() -> None:
        transport = AsyncCostTransport(httpx.MockTransport(refuse_async), tracker=tracker)
        async with httpx.AsyncClient(transport=transport) as client:
            try:
                await client.post(url, json=CHAT)
            except httpx.ConnectError:
                return
            raise AssertionError("the error was swallowed")

    asyncio.run(go())
    assert records == []
    assert "skipped.internal_error" not in tracker.metrics.snapshot()["counters"]
    tracker.close()


LIBRARIES = pytest.mark.parametrize("http", [httpx, httpx2], ids=["httpx", "httpx2"])
STREAM = dict(CHAT, stream=True, stream_options={"include_usage": True})


def sending(http: ModuleType, reads: list[bytes], sync: bool, *, drop: bool = False) -> Any:
    """A ``http.MockTransport`` whose provider stream arrives in these network reads (then,
    with ``drop``, the connection drops)."""
    def body() -> Any:
        if sync:
            def chunks() -> Iterator[bytes]:
                yield from reads
                if drop:
                    raise http.ReadError("connection reset")

            return chunks()

        async def achunks() -> AsyncIterator[bytes]:
            for read in reads:
                yield read
            if drop:
                raise http.ReadError("connection reset")

        return achunks()

    return http.MockTransport(lambda request: http.Response(
        200, headers={"content-type": "text/event-stream"}, content=body()))


@LIBRARIES
def test_either_library_s_client_takes_the_transport(http: ModuleType, tmp_path: Path) -> None:
    """The same classes serve an httpx and an httpx2 client, sync and async; a client that
    stops reading at ``[DONE]`` (as SDKs do) still has the usage that came in that read."""
    events = list(openai_chat_stream("gpt-4o-mini", STREAM))
    reads = [b"".join(events[:-2]), b"".join(events[-2:])]
    url = "https://api.openai.test/v1/chat/completions"
    tracker = CostTracker(settings(tmp_path))
    records = collect(tracker)

    transport = CostTransport(sending(http, reads, True), tracker=tracker)
    with http.Client(transport=transport) as client, client.stream("POST", url,
                                                                   json=STREAM) as reply:
        for line in reply.iter_lines():
            if line == "data: [DONE]":
                break

    async def go() -> None:
        transport = AsyncCostTransport(sending(http, reads, False), tracker=tracker)
        async with http.AsyncClient(transport=transport) as client, client.stream(
                "POST", url, json=STREAM) as reply:
            async for line in reply.aiter_lines():
                if line == "data: [DONE]":
                    break

    asyncio.run(go())
    tracker.close()
    assert [(r.model, r.streamed, r.usage and (r.usage.input_tokens, r.usage.output_tokens))
            for r in records] == [("gpt-4o-mini", True, (1384, 601))] * 2


@LIBRARIES
def test_a_transport_that_never_sent_closes(http: ModuleType) -> None:
    """Without an inner transport, none is made before the first request."""
    with http.Client(transport=CostTransport()):
        pass

    async def go() -> None:
        async with http.AsyncClient(transport=AsyncCostTransport()):
            pass

    asyncio.run(go())


def test_without_httpx_or_httpx2_the_import_names_the_extras(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("httpx", "httpx2"):
        monkeypatch.setitem(sys.modules, name, None)  # None: not installed, to every import
    monkeypatch.delitem(sys.modules, "cost_middleware.httpx_transport")
    with pytest.raises(ImportError, match=r"cost-middleware\[httpx2\]'.*cost-middleware\[httpx\]'"):
        importlib.import_module("cost_middleware.httpx_transport")


def stream_partial(transport: Any, async_transport: Any, http: ModuleType, lines: int | None,
                   tmp_path: Path) -> list[tuple[bool, bool]]:
    """(partial, has usage) of a stream read sync then async, its reader closing it after
    ``lines`` lines (None: reading on to the end, or to the error)."""
    url = "https://api.openai.test/v1/chat/completions"
    tracker = CostTracker(settings(tmp_path))
    records = collect(tracker)
    with (http.Client(transport=CostTransport(transport, tracker=tracker)) as client,
          contextlib.suppress(http.ReadError), client.stream("POST", url, json=STREAM) as r):
        if lines != 0:
            for seen, _ in enumerate(r.iter_lines(), 1):
                if seen == lines:
                    break

    async def go() -> None:
        transport = AsyncCostTransport(async_transport, tracker=tracker)
        async with http.AsyncClient(transport=transport) as client:
            with contextlib.suppress(http.ReadError):
                async with client.stream("POST", url, json=STREAM) as r:
                    if lines != 0:
                        seen = 0
                        async for _ in r.aiter_lines():
                            seen += 1
                            if seen == lines:
                                break

    asyncio.run(go())
    tracker.close()
    return [(r.partial, r.usage is not None) for r in records]


#: The fake provider's stream: each event its own read, ``[DONE]`` last.
EVENTS = list(openai_chat_stream("gpt-4o-mini", STREAM))
#: Lines up to and including ``data: [DONE]`` (an empty line follows each event).
UNTIL_DONE = 2 * len(EVENTS) - 1


@LIBRARIES
def test_a_stream_its_reader_stops_after_the_last_event_is_complete(http: ModuleType,
                                                                   tmp_path: Path) -> None:
    """An SDK that stops at ``[DONE]``, before the body's end, leaves a record not partial."""
    got = stream_partial(sending(http, EVENTS, True), sending(http, EVENTS, False), http,
                         UNTIL_DONE, tmp_path)
    assert got == [(False, True)] * 2


@LIBRARIES
def test_a_stream_its_reader_stops_before_the_last_event_is_partial(http: ModuleType,
                                                                   tmp_path: Path) -> None:
    got = stream_partial(sending(http, EVENTS, True), sending(http, EVENTS, False), http, 3,
                         tmp_path)
    assert got == [(True, False)] * 2


@LIBRARIES
def test_a_stream_closed_unread_is_partial(http: ModuleType, tmp_path: Path) -> None:
    """Closed before its first read, the call still leaves a row: partial, without usage."""
    got = stream_partial(sending(http, EVENTS, True), sending(http, EVENTS, False), http, 0,
                         tmp_path)
    assert got == [(True, False)] * 2


@LIBRARIES
def test_a_stream_cut_by_the_network_is_partial_even_after_the_last_event(
        http: ModuleType, tmp_path: Path) -> None:
    got = stream_partial(sending(http, EVENTS, True, drop=True),
                         sending(http, EVENTS, False, drop=True), http, None, tmp_path)
    assert got == [(True, True)] * 2
