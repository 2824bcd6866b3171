"""The Starlette gateway served by uvicorn in the load test.

    LOADTEST_MIDDLEWARE=1 PYTHONPATH=benchmarks uvicorn load.asgi_gateway:app

With ``LOADTEST_MIDDLEWARE=1`` the app is wrapped in ``CostMiddleware`` (settings from the
environment); otherwise it is the bare app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from cost_middleware import CostMiddleware
from load.payloads import answer, middleware_wanted, write_count


async def _events(events: Iterator[bytes]) -> AsyncIterator[bytes]:
    # An async iterator: Starlette would move every step of a sync one to a thread.
    for event in events:
        yield event


async def chat(request: Request) -> Response:
    ctype, payload = answer(await request.body())
    if isinstance(payload, bytes):
        return Response(payload, media_type=ctype)
    return StreamingResponse(_events(payload), media_type=ctype)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # Not atexit: uvicorn re-raises SIGTERM after its graceful shutdown, so atexit never runs.
    yield
    write_count()


app = Starlette(
    routes=[Route("/v1/chat/completions", chat, methods=["POST"])],
    lifespan=lifespan,
    middleware=[Middleware(CostMiddleware)] if middleware_wanted() else [],
)
