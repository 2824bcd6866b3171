"""A Flask LLM gateway: forwards OpenAI-style calls upstream and streams the answer back.

    uvicorn examples.fake_provider:app --port 9100 &
    UPSTREAM_URL=http://127.0.0.1:9100 flask --app examples.flask_app run --port 8002
    curl -s localhost:8002/v1/chat/completions -H 'x-tenant-id: acme' \
         -d '{"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true}}'
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
from flask import Flask, Response, request

from cost_middleware import WSGICostMiddleware

UPSTREAM = os.environ.get("UPSTREAM_URL", "http://127.0.0.1:9100")
client = httpx.Client(base_url=UPSTREAM, timeout=60)

app = Flask(__name__)
app.wsgi_app = WSGICostMiddleware(app.wsgi_app)  # type: ignore[method-assign]  # the one line


@app.post("/v1/chat/completions")
def chat() -> Response:
    upstream = client.send(
        client.build_request("POST", "/v1/chat/completions", content=request.get_data(),
                             headers={"content-type": "application/json"}),
        stream=True,
    )

    def body() -> Iterator[bytes]:
        try:
            yield from upstream.iter_raw()
        finally:
            upstream.close()

    return Response(body(), status=upstream.status_code,
                    content_type=upstream.headers.get("content-type"))
