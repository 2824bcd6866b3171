"""Apps the server fault tests run under uvicorn and gunicorn: fake provider answers, wrapped."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Flask, Response, request

from cost_middleware import CostMiddleware, WSGICostMiddleware
from cost_middleware.ops.fake_provider import FakeProviderApp, respond

asgi_app = CostMiddleware(FakeProviderApp())

flask_app = Flask(__name__)


@flask_app.post("/v1/chat/completions")
def chat() -> Response:
    body: Any = orjson.loads(request.get_data() or b"null")
    status, ctype, payload = respond(request.path, body)
    return Response(payload, status=status, content_type=ctype.decode())


flask_app.wsgi_app = WSGICostMiddleware(flask_app.wsgi_app)  # type: ignore[method-assign]
