"""A FastAPI app with its own endpoint that calls a provider and reports the usage it got.

    uvicorn examples.fake_provider:app --port 9100 &
    UPSTREAM_URL=http://127.0.0.1:9100 uvicorn examples.fastapi_app:app --port 8001
    curl -s localhost:8001/summarize -H 'x-tenant-id: acme' -H 'content-type: application/json' \
         -d '{"text": "a long document"}'

The response of /summarize is the app's own shape, so the middleware cannot read usage from it;
the endpoint hands the provider's usage to ``record_usage``, which attributes it to this request
(tenant, request id, route). Provider-shaped routes (``/v1/messages`` here) are read directly.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response

from cost_middleware import CostMiddleware, Usage, record_usage

UPSTREAM = os.environ.get("UPSTREAM_URL", "http://127.0.0.1:9100")
client = httpx.AsyncClient(base_url=UPSTREAM, timeout=60)

app = FastAPI()
app.add_middleware(CostMiddleware)  # the one line


@app.post("/summarize")
async def summarize(payload: dict[str, Any]) -> dict[str, Any]:
    reply = await client.post("/v1/messages", json={
        "model": "claude-haiku-4-5", "max_tokens": 256,
        "messages": [{"role": "user", "content": f"Summarize: {payload.get('text', '')}"}],
    })
    data = reply.json()
    u = data["usage"]
    cache_read = u.get("cache_read_input_tokens", 0)
    cache_write = u.get("cache_creation_input_tokens", 0)
    record_usage(
        Usage(input_tokens=u["input_tokens"] + cache_read + cache_write,
              cached_input_tokens=cache_read, cache_write_input_tokens=cache_write,
              cache_write_5m_input_tokens=cache_write, cache_write_1h_input_tokens=0,
              output_tokens=u["output_tokens"]),
        provider="anthropic", model=data["model"], api="messages",
    )
    return {"summary": data["content"][0]["text"]}


@app.post("/v1/messages")
async def messages(request: Request) -> Response:
    reply = await client.post("/v1/messages", content=await request.body(),
                              headers={"content-type": "application/json"})
    return Response(reply.content, status_code=reply.status_code,
                    media_type=reply.headers.get("content-type"))
