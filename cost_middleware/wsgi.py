"""WSGI middleware: wraps the app's iterable without buffering, records after the last chunk."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from time import perf_counter
from typing import Any

from cost_middleware._types import ExcInfo, StartResponse, WSGIApp, WSGIEnviron
from cost_middleware.capture import Capture
from cost_middleware.config import Settings
from cost_middleware.context import RequestContext, current_request
from cost_middleware.engine.tracker import CostTracker


class WSGICostMiddleware:
    """``app.wsgi_app = WSGICostMiddleware(app.wsgi_app)``. ``.tracker`` is the engine.

    When an earlier process left records in the spool (a database outage, then a restart),
    the engine's worker starts here and replays them at once, not at the first request; a
    server that forks workers from a preloaded app starts one in each worker too. The
    engine is flushed by :meth:`close` (or ``tracker.close()``), and at interpreter exit.
    An invalid environment variable raises :class:`~cost_middleware.ConfigError` here: the
    wrapper is built when the app module is imported, so the server fails to start.
    """

    def __init__(
        self, app: WSGIApp, settings: Settings | None = None, *, tracker: CostTracker | None = None
    ) -> None:
        self.app = app
        self.tracker = tracker if tracker is not None else CostTracker(settings)
        self.settings = self.tracker.settings
        #: The response header the request id is echoed under (None: not echoed).
        self._echo_header = (self.settings.request_id_header
                             if self.settings.echo_request_id else None)
        if self.settings.enabled:
            self.tracker.batcher.start_if_spooled()

    def close(self) -> None:
        self.tracker.close()

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        if not self.settings.enabled:
            return self.app(environ, start_response)
        started = perf_counter()
        tracker = self.tracker
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "") or "/"
        context = RequestContext(tracker, method, environ.get("SCRIPT_NAME", "") + path, environ,
                                 started)
        target = tracker.detector.match(method, path)
        capture = None
        if target is not None:
            blocked = tracker.budget_gate.check(context, target.provider)
            if blocked is not None:
                # Answered before the app runs: counted, not recorded as a provider call.
                tracker.metrics.incr("budget.blocked")
                start_response("429 Too Many Requests", blocked.headers(time.time()))
                return [blocked.body()]
            raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
            capture = tracker.guard.call(
                "capture", Capture, context, target, path, environ.get("QUERY_STRING", ""),
                raw.split("?", 1)[0] if isinstance(raw, str) else None,
            )
        token = current_request.set(context)
        try:
            if capture is None:
                return self.app(environ, start_response)
            if capture.needs_request_body and "wsgi.input" in environ:
                environ["wsgi.input"] = _TeeInput(environ["wsgi.input"], capture)
            iterable = self.app(environ, _observe_start(start_response, capture, context,
                                                        self._echo_header))
        except BaseException:
            if capture is not None:
                capture.finish(False)
            raise
        finally:
            current_request.reset(token)
        return _observe_body(iterable, capture, context)


def _observe_start(start_response: StartResponse, capture: Capture, context: RequestContext,
                   echo_header: str | None) -> StartResponse:
    def start(
        status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None, /
    ) -> Callable[[bytes], object]:
        sent = headers
        if echo_header is not None:
            sent = context.with_request_id(headers, echo_header) or headers
        write = start_response(status, sent, exc_info)
        code = int(status[:3]) if status[:3].isdigit() else 0
        capture.response_start(code, headers)

        def write_observed(data: bytes) -> object:
            # Legacy write() bypasses the iterable; observe it too.
            result = write(data)
            capture.response_body(data)
            return result

        return write_observed

    return start


def _observe_body(
    iterable: Iterable[bytes], capture: Capture, context: RequestContext
) -> Iterator[bytes]:
    complete = False
    try:
        iterator = iter(iterable)
        while True:
            token = current_request.set(context)
            try:
                chunk = next(iterator)
            except StopIteration:
                break
            finally:
                current_request.reset(token)
            # Yield first: the server writes the chunk before we look at it. The app produced
            # it even if the write fails (client gone), so it is observed either way.
            try:
                yield chunk
            finally:
                capture.response_body(chunk)
        complete = True
    finally:
        try:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()
        finally:
            capture.finish(complete)


class _TeeInput:
    """``wsgi.input`` that shows the capture what the app reads, unchanged."""

    def __init__(self, stream: Any, capture: Capture) -> None:
        self._stream = stream
        self._capture = capture

    def read(self, *args: Any) -> bytes:
        data: bytes = self._stream.read(*args)
        self._capture.request_body(data)
        return data

    def readline(self, *args: Any) -> bytes:
        data: bytes = self._stream.readline(*args)
        self._capture.request_body(data)
        return data

    def readlines(self, *args: Any) -> list[bytes]:
        lines: list[bytes] = self._stream.readlines(*args)
        for line in lines:
            self._capture.request_body(line)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        for line in self._stream:
            self._capture.request_body(line)
            yield line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
