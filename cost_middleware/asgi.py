"""Pure ASGI middleware: forwards every message unchanged and at once, observes a copy."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from time import perf_counter

from cost_middleware._types import ASGIApp, Message, Receive, Scope, Send
from cost_middleware.budgets.gate import Blocked
from cost_middleware.capture import Capture
from cost_middleware.config import ConfigError, Settings
from cost_middleware.context import RequestContext, current_request
from cost_middleware.engine.tracker import CostTracker
from cost_middleware.usage.base import Target

log = logging.getLogger("cost_middleware")


class CostMiddleware:
    """``app.add_middleware(CostMiddleware)`` or ``CostMiddleware(app)``.

    Handles ``lifespan`` to start the engine and to flush it on shutdown, passing the app's
    own lifespan through. ``.tracker`` is the engine. When an earlier process left records in
    the spool, its worker also starts when the middleware is built, so that they are
    replayed at once even without lifespan (or with an inner app that refuses it), not at
    the first request.

    An invalid environment variable never breaks the app: frameworks build middleware lazily
    (Starlette on the first scope, again on every one while building raises), so raising
    here would turn every request into a 500. Instead the error is logged once,
    ``.config_error`` holds it, the server's lifespan start-up fails with it (the server
    exits), and without lifespan every request passes through untouched.
    """

    def __init__(
        self, app: ASGIApp, settings: Settings | None = None, *, tracker: CostTracker | None = None
    ) -> None:
        self.app = app
        self.config_error: ConfigError | None = None
        try:
            self.tracker = tracker if tracker is not None else CostTracker(settings)
        except ConfigError as exc:
            self.config_error = exc
            log.error("%s", _config_message(exc))
            # A tracker that records nothing, so code using ``.tracker`` keeps working.
            self.tracker = CostTracker(Settings(enabled=False, statsd_enabled=False))
        self.settings = self.tracker.settings
        #: The response header the request id is echoed under (None: not echoed).
        self._echo_header = (self.settings.request_id_header.encode("latin-1")
                             if self.settings.echo_request_id else None)
        #: Without lifespan events nothing flushes the queue at shutdown but atexit, and
        #: uvicorn re-raises SIGTERM after its graceful shutdown, which skips atexit.
        self._lifespan_seen = False
        if self.settings.enabled:
            self.tracker.batcher.start_if_spooled()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" and self.settings.enabled:
            started = perf_counter()
            if not self._lifespan_seen:
                self._warn_no_lifespan()
            tracker = self.tracker
            context = RequestContext(tracker, scope["method"], scope["path"], scope["headers"],
                                     started)
            token = current_request.set(context)
            try:
                target = tracker.detector.match(scope["method"], scope["path"])
                if target is None:
                    await self.app(scope, receive, send)
                elif (blocked := tracker.budget_gate.check(context, target.provider)) is not None:
                    await _refuse(send, blocked, tracker)
                else:
                    await self._inspect(scope, receive, send, context, target)
            finally:
                current_request.reset(token)
        elif kind == "lifespan" and self.settings.enabled:
            await self._lifespan(scope, receive, send)
        elif kind == "lifespan" and self.config_error is not None:
            await _fail_startup(receive, send, self.config_error)
        else:
            await self.app(scope, receive, send)

    async def _inspect(
        self, scope: Scope, receive: Receive, send: Send, context: RequestContext, target: Target
    ) -> None:
        tracker = context.tracker
        raw = scope.get("raw_path")
        capture = tracker.guard.call(
            "capture", Capture, context, target, scope["path"],
            scope.get("query_string", b"").decode("latin-1"),
            raw.decode("latin-1") if isinstance(raw, bytes) else None,
        )
        if capture is None:
            await self.app(scope, receive, send)
            return
        if capture.needs_request_body:
            receive = _tee_request(receive, capture)
        complete = False
        echo_header = self._echo_header
        finish_first = self.settings.otel_enabled

        async def send_observed(message: Message) -> None:
            nonlocal complete
            # Every message is observed even when sending fails (client gone): the app
            # produced it. Body chunks are the common case: checked first.
            kind = message["type"]
            if kind == "http.response.body":
                if finish_first and not message.get("more_body", False):
                    # The OTel ASGI instrumentation ends its server span as the last body
                    # message goes out: the record must reach the span before it does.
                    capture.response_body(message.get("body", b""))
                    complete = True
                    capture.finish(True, _route(scope))
                    await send(message)
                    return
                try:
                    await send(message)
                finally:
                    capture.response_body(message.get("body", b""))
                    if not message.get("more_body", False):
                        complete = True
                        capture.finish(True, _route(scope))
            elif kind == "http.response.start":
                headers = message.get("headers") or []
                if echo_header is not None:
                    echoed = context.with_request_id(headers, echo_header)
                    if echoed is not None:
                        # A copy: the app may reuse its message or its header list.
                        message = {**message, "headers": echoed}
                try:
                    await send(message)
                finally:
                    capture.response_start(message["status"], _StrHeaders(headers))
            else:
                await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            if not complete:
                # The app raised, the client went away, or the body never ended.
                capture.finish(False, _route(scope))

    def _warn_no_lifespan(self) -> None:
        self._lifespan_seen = True  # warn once
        log.warning(
            "cost_middleware: no ASGI lifespan startup was seen, so records still queued when "
            "the server stops are only flushed by atexit, which uvicorn skips on SIGTERM. Run "
            "the server with lifespan on (a mounted sub-app gets none: add the middleware to "
            "the outer app), or call middleware.tracker.close() at shutdown."
        )

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_observed() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._lifespan_seen = True
                if self.tracker.closed:
                    # A closed engine is never reused: a new lifespan gets a new one.
                    self.tracker = CostTracker(self.settings)
                self.tracker.start()
            return message

        async def send_observed(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                # Flushing waits on the database: keep it off the event loop.
                await asyncio.get_running_loop().run_in_executor(None, self.tracker.close)
            await send(message)

        await self.app(scope, receive_observed, send_observed)


def _config_message(error: ConfigError) -> str:
    return (f"cost_middleware: {error}. Set a valid value or unset {error.variable} (its "
            "default then applies) and restart. Until then nothing is recorded: the server's "
            "lifespan start-up fails, and without lifespan every request passes through "
            "untouched.")


async def _fail_startup(receive: Receive, send: Send, error: ConfigError) -> None:
    """Answer the server's start-up with the configuration error, so it stops there."""
    message = await receive()
    if message["type"] == "lifespan.startup":
        await send({"type": "lifespan.startup.failed", "message": _config_message(error)})


async def _refuse(send: Send, blocked: Blocked, tracker: CostTracker) -> None:
    """Answer a request a spent budget covers, before the app runs (counted, not recorded)."""
    tracker.metrics.incr("budget.blocked")
    now = time.time()
    headers = [(k.encode(), v.encode()) for k, v in blocked.headers(now)]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": blocked.body()})


def _tee_request(receive: Receive, capture: Capture) -> Receive:
    async def receive_observed() -> Message:
        message = await receive()
        if message["type"] == "http.request":
            capture.request_body(message.get("body", b""))
        return message

    return receive_observed


class _StrHeaders:
    """ASGI response headers as ``str`` pairs, decoded only when iterated."""

    __slots__ = ("_raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for k, v in self._raw:
            yield k.decode("latin-1"), v.decode("latin-1")


def _route(scope: Scope) -> str | None:
    """The route template the framework matched (Starlette/FastAPI set ``scope['route']``)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return scope.get("root_path", "") + path if scope.get("root_path") else path
    return None
