"""The Flask gateway served by gunicorn (sync workers) in the load test.

    LOADTEST_MIDDLEWARE=1 PYTHONPATH=benchmarks gunicorn -w 2 load.wsgi_gateway:app

With ``LOADTEST_MIDDLEWARE=1`` ``app.wsgi_app`` is wrapped in ``WSGICostMiddleware``
(settings from the environment); otherwise it is the bare app.
"""

from __future__ import annotations

import atexit

from flask import Flask, Response, request

from cost_middleware import WSGICostMiddleware
from load.payloads import answer, middleware_wanted, write_count

app = Flask(__name__)
# gunicorn workers exit through the interpreter's normal shutdown, which runs atexit.
atexit.register(write_count)
if middleware_wanted():
    # The ignore: cost_middleware._types.StartResponse is narrower than wsgiref's (exc_info).
    app.wsgi_app = WSGICostMiddleware(app.wsgi_app)  # type: ignore[assignment, arg-type]


@app.post("/v1/chat/completions")
def chat() -> Response:
    ctype, payload = answer(request.get_data())
    return Response(payload, content_type=ctype)
