"""An LLM gateway in Starlette: forwards provider calls upstream and streams the answer back.

    uvicorn examples.fake_provider:app --port 9100 &
    UPSTREAM_URL=http://127.0.0.1:9100 uvicorn examples.starlette_app:app --port 8000
    curl -s localhost:8000/v1/chat/completions -H 'x-tenant-id: acme' \
         -d '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from cost_middleware import CostMiddleware

UPSTREAM = os.environ.get("UPSTREAM_URL", "http://127.0.0.1:9100")
client = httpx.AsyncClient(base_url=UPSTREAM, timeout=60)


async def forward(request: Request) -> StreamingResponse:
    upstream = await client.send(
        client.build_request("POST", request.url.path, content=await request.body(),
                             headers={"content-type": "application/json"}),
        stream=True,
    )

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:
            await upstream.aclose()

    return StreamingResponse(body(), status_code=upstream.status_code,
                             media_type=upstream.headers.get("content-type"))


app = Starlette(
    routes=[Route("/v1/chat/completions", forward, methods=["POST"]),
            Route("/v1/messages", forward, methods=["POST"])],
    middleware=[Middleware(CostMiddleware)],  # the one line
)
