"""Capture provider calls made with httpx (the openai and anthropic SDKs use it).

Wrap the client's transport and every provider response it receives is read as it streams to
the SDK, and recorded against the current request (tenant, request id, route), even when the
app answers with a shape of its own::

    client = openai.AsyncOpenAI(http_client=httpx.AsyncClient(transport=AsyncCostTransport()))

Outside a request, pass ``tracker=`` (e.g. ``middleware.tracker``) to record unattributed calls.
A gateway that forwards a provider's response unchanged needs no transport: the middleware
reads the response on its way out; when both see the same call it is recorded once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from time import perf_counter

import httpx

from cost_middleware.capture import Capture
from cost_middleware.context import RequestContext, current_request
from cost_middleware.engine.tracker import CostTracker


def _open(request: httpx.Request, tracker: CostTracker | None) -> Capture | None:
    """A capture for this outgoing request, or None when it is not a provider call we read."""
    context = current_request.get()
    owner = context.tracker if context is not None else tracker
    if owner is None or owner.closed or not owner.settings.enabled:
        return None
    path = request.url.path
    target = owner.detector.match(request.method, path)
    if target is None:
        return None
    if context is None:
        context = RequestContext(owner, request.method, path, {}, perf_counter())
    capture = owner.guard.call("capture", Capture, context, target, path,
                               request.url.query.decode("latin-1"),
                               request.url.raw_path.decode("latin-1").split("?", 1)[0],
                               client_call=True)
    if capture is not None and capture.needs_request_body:
        # A streamed upload cannot be read here: the model then comes from the response.
        with contextlib.suppress(httpx.RequestNotRead):
            capture.request_body(request.content)
    return capture


def _start(capture: Capture, response: httpx.Response) -> bool:
    """Note the response; True when its body is already in memory and was read now."""
    capture.response_start(response.status_code, response.headers.multi_items())
    try:
        body = response.content  # a response built from bytes (mock transports) is pre-read
    except httpx.ResponseNotRead:
        return False
    capture.response_body(body)
    capture.finish(True)
    return True


@contextlib.contextmanager
def _finished_if_failed(capture: Capture | None) -> Iterator[None]:
    """A request that raised (connection refused, timeout) ends its capture, cut short."""
    try:
        yield
    except BaseException:
        if capture is not None:
            capture.finish(False)
        raise


def _observed(response: httpx.Response, capture: Capture | None,
              stream: type[_ObservedStream | _AsyncObservedStream]) -> httpx.Response:
    if capture is not None and not _start(capture, response):
        response.stream = stream(response.stream, capture)
    return response


class CostTransport(httpx.BaseTransport):
    """A sync httpx transport that records the provider calls passing through it."""

    def __init__(self, transport: httpx.BaseTransport | None = None, *,
                 tracker: CostTracker | None = None) -> None:
        self._inner = transport if transport is not None else httpx.HTTPTransport()
        self._tracker = tracker

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        capture = _open(request, self._tracker)
        with _finished_if_failed(capture):
            response = self._inner.handle_request(request)
        return _observed(response, capture, _ObservedStream)

    def close(self) -> None:
        self._inner.close()


class AsyncCostTransport(httpx.AsyncBaseTransport):
    """The asyncio flavour of :class:`CostTransport`."""

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None, *,
                 tracker: CostTracker | None = None) -> None:
        self._inner = transport if transport is not None else httpx.AsyncHTTPTransport()
        self._tracker = tracker

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        capture = _open(request, self._tracker)
        with _finished_if_failed(capture):
            response = await self._inner.handle_async_request(request)
        return _observed(response, capture, _AsyncObservedStream)

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Observer:
    """What both stream wrappers hold: the inner stream, the capture, whether it ended."""

    def __init__(self, stream: httpx.SyncByteStream | httpx.AsyncByteStream,
                 capture: Capture) -> None:
        self._stream = stream
        self._capture = capture
        self._complete = False


class _ObservedStream(_Observer, httpx.SyncByteStream):
    def __iter__(self) -> Iterator[bytes]:
        if not isinstance(self._stream, httpx.SyncByteStream):
            raise TypeError("a sync transport returned an async response stream")
        for chunk in self._stream:
            yield chunk
            self._capture.response_body(chunk)
        self._complete = True

    def close(self) -> None:
        try:
            if isinstance(self._stream, httpx.SyncByteStream):
                self._stream.close()
        finally:
            self._capture.finish(self._complete)


class _AsyncObservedStream(_Observer, httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        if not isinstance(self._stream, httpx.AsyncByteStream):
            raise TypeError("an async transport returned a sync response stream")
        async for chunk in self._stream:
            yield chunk
            self._capture.response_body(chunk)
        self._complete = True

    async def aclose(self) -> None:
        try:
            if isinstance(self._stream, httpx.AsyncByteStream):
                await self._stream.aclose()
        finally:
            self._capture.finish(self._complete)
