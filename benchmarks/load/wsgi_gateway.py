"""The Flask gateway served by gunicorn (sync workers) in the load test.

    LOADTEST_MIDDLEWARE=1 PYTHONPATH=benchmarks gunicorn -w 2 load.wsgi_gateway:app

With ``LOADTEST_MIDDLEWARE=1`` ``app.wsgi_app`` is wrapped in ``WSGICostMiddleware``
(settings from the environment); otherwise it is the bare app. With
``LOADTEST_UPSTREAM=http://host:port`` it forwards each request to that server over HTTP (an
``httpx.Client`` per worker process) and passes the answer back, streams as they arrive.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator
from contextlib import closing

import httpx
from flask import Flask, Response, request

from cost_middleware import WSGICostMiddleware
from load.payloads import answer, count_handled, is_stream, middleware_wanted, upstream, write_count

UPSTREAM_URL = upstream()
app = Flask(__name__)
# gunicorn workers exit through the interpreter's normal shutdown, which runs atexit.
atexit.register(write_count)
if middleware_wanted():
    # The ignore: cost_middleware._types.StartResponse is narrower than wsgiref's (exc_info).
    app.wsgi_app = WSGICostMiddleware(app.wsgi_app)  # type: ignore[assignment, arg-type]

_clients: dict[int, httpx.Client] = {}


def _client() -> httpx.Client:
    # One per worker process, made after gunicorn forked it.
    client = _clients.get(os.getpid())
    if client is None:
        client = _clients[os.getpid()] = httpx.Client(timeout=30.0)
    return client


@app.post("/v1/chat/completions")
def chat() -> Response:
    body = request.get_data()
    if UPSTREAM_URL is not None:
        return _forward(_client(), UPSTREAM_URL, body)
    ctype, payload = answer(body)
    return Response(payload, content_type=ctype)


def _forward(client: httpx.Client, url: str, body: bytes) -> Response:
    count_handled()
    headers = {"content-type": "application/json"}
    if not is_stream(body):
        answered = client.post(url, content=body, headers=headers)
        return Response(answered.content, status=answered.status_code,
                        content_type=answered.headers.get("content-type"))
    streamed = client.send(client.build_request("POST", url, content=body, headers=headers),
                           stream=True)
    return Response(_relay(streamed), status=streamed.status_code,
                    content_type=streamed.headers.get("content-type"))


def _relay(streamed: httpx.Response) -> Iterator[bytes]:
    with closing(streamed):  # when the stream ends or the server drops the iterator
        yield from streamed.iter_raw()
