"""The Starlette gateway served by uvicorn in the load test.

    LOADTEST_MIDDLEWARE=1 PYTHONPATH=benchmarks uvicorn load.asgi_gateway:app

With ``LOADTEST_MIDDLEWARE=1`` the app is wrapped in ``CostMiddleware`` (settings from the
environment); otherwise it is the bare app. With ``LOADTEST_UPSTREAM=http://host:port`` it
forwards each request to that server over HTTP (one shared ``httpx.AsyncClient``) and passes
the answer back, streams as they arrive; otherwise it answers from the in-process fake
provider.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from cost_middleware import CostMiddleware
from load.payloads import answer, count_handled, is_stream, middleware_wanted, upstream, write_count

UPSTREAM_URL = upstream()
_client: httpx.AsyncClient | None = None


async def _events(events: Iterator[bytes]) -> AsyncIterator[bytes]:
    # An async iterator: Starlette would move every step of a sync one to a thread.
    for event in events:
        yield event


async def chat(request: Request) -> Response:
    body = await request.body()
    if _client is not None and UPSTREAM_URL is not None:
        return await _forward(_client, UPSTREAM_URL, body)
    ctype, payload = answer(body)
    if isinstance(payload, bytes):
        return Response(payload, media_type=ctype)
    return StreamingResponse(_events(payload), media_type=ctype)


async def _forward(client: httpx.AsyncClient, url: str, body: bytes) -> Response:
    count_handled()
    headers = {"content-type": "application/json"}
    if not is_stream(body):
        answered = await client.post(url, content=body, headers=headers)
        return Response(answered.content, status_code=answered.status_code,
                        media_type=answered.headers.get("content-type"))
    streamed = await client.send(client.build_request("POST", url, content=body,
                                                      headers=headers), stream=True)
    return StreamingResponse(streamed.aiter_raw(), status_code=streamed.status_code,
                             media_type=streamed.headers.get("content-type"),
                             background=BackgroundTask(streamed.aclose))


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    global _client
    if UPSTREAM_URL is not None:
        _client = httpx.AsyncClient(limits=httpx.Limits(max_connections=64), timeout=30.0)
    # Not atexit: uvicorn re-raises SIGTERM after its graceful shutdown, so atexit never runs.
    yield
    if _client is not None:
        await _client.aclose()
    write_count()


app = Starlette(
    routes=[Route("/v1/chat/completions", chat, methods=["POST"])],
    lifespan=lifespan,
    middleware=[Middleware(CostMiddleware)] if middleware_wanted() else [],
)
