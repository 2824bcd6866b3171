"""Apps the bad-configuration tests serve under uvicorn, gunicorn and Flask's own server.

Each is wrapped the way the README shows: the ASGI app adds the middleware to Starlette
(built lazily, on the first scope), the Flask factory wraps ``wsgi_app`` while the server
loads it. Both answer a provider route and a route of their own with a status of its own, so
a test can tell the app's answers from ours.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cost_middleware import CostMiddleware, WSGICostMiddleware
from cost_middleware.ops.fake_provider import respond

if TYPE_CHECKING:
    from flask import Flask

#: The app's own answer on ``/teapot``: any status but 500 shows who answered.
OWN_STATUS = 418


def _provider(body: bytes, path: str) -> tuple[int, str, bytes]:
    status, ctype, payload = respond(path, orjson.loads(body or b"null"))
    assert isinstance(payload, bytes)  # the tests ask for JSON, not streams
    return status, ctype.decode(), payload


async def _chat(request: Request) -> Response:
    status, ctype, payload = _provider(await request.body(), request.url.path)
    return Response(payload, status_code=status, media_type=ctype)


async def _teapot(request: Request) -> Response:
    return Response(b"short and stout", status_code=OWN_STATUS)


asgi_app = Starlette(routes=[Route("/v1/chat/completions", _chat, methods=["POST"]),
                             Route("/teapot", _teapot, methods=["GET"])])
asgi_app.add_middleware(CostMiddleware)


def create_flask_app() -> Flask:
    """A Flask app factory, as ``gunicorn 'bad_config_apps:create_flask_app()'`` loads it."""
    from flask import Flask, request
    from flask import Response as FlaskResponse

    app = Flask(__name__)

    @app.post("/v1/chat/completions")
    def chat() -> Any:
        status, ctype, payload = _provider(request.get_data(), request.path)
        return FlaskResponse(payload, status=status, content_type=ctype)

    @app.get("/teapot")
    def teapot() -> Any:
        return FlaskResponse(b"short and stout", status=OWN_STATUS)

    app.wsgi_app = WSGICostMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    return app
