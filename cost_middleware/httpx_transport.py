"""Capture provider calls made with httpx or httpx2 (the openai and anthropic SDKs use one).

Wrap the client's transport and every provider response it receives is read as it streams to
the SDK, and recorded against the current request (tenant, request id, route), even when the
app answers with a shape of its own::

    client = openai.AsyncOpenAI(
        http_client=openai.DefaultAsyncHttpxClient(transport=AsyncCostTransport()))

One transport serves an ``httpx`` or an ``httpx2`` client (current SDKs use ``httpx2``, older
ones ``httpx``; the two share one API in two class hierarchies): its first request tells it which,
and without an inner ``transport`` it then sends through that library's own ``HTTPTransport``.
Outside a request, pass ``tracker=`` (e.g. ``middleware.tracker``) to record unattributed calls.
A gateway that forwards a provider's response unchanged needs no transport: the middleware
reads the response on its way out; when both see the same call it is recorded once. The host a
call goes to names the vendor where its path names none (:mod:`cost_middleware.usage.hosts`),
and a call made while serving a route of ``COST_MIDDLEWARE_ROUTE_PROVIDERS`` shows the route's
provider (:meth:`~cost_middleware.usage.detect.Detector.match_call`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from functools import cache
from importlib import import_module
from importlib.util import find_spec
from time import perf_counter
from typing import TYPE_CHECKING, Any, NamedTuple

from cost_middleware.capture import Capture
from cost_middleware.context import RequestContext, current_request
from cost_middleware.engine.tracker import CostTracker

# httpx2's bases when it is installed: the SDKs use it, and anthropic refuses a transport that is
# an httpx object. An httpx client never checks its transport's class, so these serve it too.
if find_spec("httpx2") is not None:
    from httpx2 import AsyncBaseTransport as _AsyncBase
    from httpx2 import BaseTransport as _Base
elif find_spec("httpx") is not None:
    from httpx import AsyncBaseTransport as _AsyncBase  # type: ignore[assignment]
    from httpx import BaseTransport as _Base  # type: ignore[assignment]
else:
    raise ImportError("cost_middleware.httpx_transport needs httpx2 (the openai and anthropic "
                      "SDKs' HTTP client) or httpx: pip install 'cost-middleware[httpx2]' "
                      "or 'cost-middleware[httpx]'")

if TYPE_CHECKING:
    # Typed as httpx2's objects; httpx's have the same attributes and methods.
    import httpx
    import httpx2

#: The libraries whose requests and responses the transports handle.
_LIBRARIES = frozenset({"httpx", "httpx2"})


class _Library(NamedTuple):
    """What one library's classes are: its errors, our streams on its bases, its transports."""

    request_not_read: type[Exception]
    response_not_read: type[Exception]
    stream: Callable[[Any, Capture], httpx2.SyncByteStream]
    async_stream: Callable[[Any, Capture], httpx2.AsyncByteStream]
    transport: Callable[[], Any]
    async_transport: Callable[[], Any]


@cache
def _library(name: str) -> _Library:
    http = import_module(name)
    # Its clients assert that a response stream is one of their own stream classes.
    stream = type("ObservedStream", (_ObservedStream, http.SyncByteStream), {})
    async_stream = type("AsyncObservedStream", (_AsyncObservedStream, http.AsyncByteStream), {})
    return _Library(http.RequestNotRead, http.ResponseNotRead, stream, async_stream,
                    http.HTTPTransport, http.AsyncHTTPTransport)


def _library_of(request: httpx2.Request) -> _Library:
    """The library a request comes from: the package its class, or a base, was defined in."""
    for cls in type(request).__mro__:
        name = cls.__module__.partition(".")[0]
        if name in _LIBRARIES:
            return _library(name)
    raise TypeError(f"{type(request).__qualname__} is neither an httpx nor an httpx2 request")


def _open(request: httpx2.Request, tracker: CostTracker | None,
          library: _Library) -> Capture | None:
    """A capture for this outgoing request, or None when it is not a provider call we read."""
    context = current_request.get()
    owner = context.tracker if context is not None else tracker
    if owner is None or owner.closed or not owner.settings.enabled:
        return None
    path = request.url.path
    target = owner.detector.match_call(request.method, request.url.host, path,
                                       context.path if context is not None else None)
    if target is None:
        return None
    if context is None:
        context = RequestContext(owner, request.method, path, {}, perf_counter())
    blocked = owner.budget_gate.check(context, target.provider)
    if blocked is not None:
        owner.metrics.incr("budget.blocked")
        raise blocked.error(time.time())  # before the call is sent: nothing is spent
    capture = owner.guard.call("capture", Capture, context, target, path,
                               request.url.query.decode("latin-1"),
                               request.url.raw_path.decode("latin-1").split("?", 1)[0],
                               client_call=True)
    if capture is not None and capture.needs_request_body:
        # A streamed upload cannot be read here: the model then comes from the response.
        with contextlib.suppress(library.request_not_read):
            capture.request_body(request.content)
    return capture


def _start(capture: Capture, response: httpx2.Response, library: _Library) -> bool:
    """Note the response; True when its body is already in memory and was read now."""
    capture.response_start(response.status_code, response.headers.multi_items())
    try:
        body = response.content  # a response built from bytes (mock transports) is pre-read
    except library.response_not_read:
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


def _observed(response: httpx2.Response, capture: Capture | None, library: _Library,
              stream: Callable[[Any, Capture], httpx2.SyncByteStream | httpx2.AsyncByteStream],
              ) -> httpx2.Response:
    if capture is not None and not _start(capture, response, library):
        response.stream = stream(response.stream, capture)
    return response


class _Sender:
    """What both transports hold: the inner transport, the tracker, the library spoken."""

    def __init__(self, transport: Any, tracker: CostTracker | None) -> None:
        self._inner = transport
        self._tracker = tracker
        self._library: _Library | None = None
        self._binding = threading.Lock()

    def _bind(self, request: httpx2.Request) -> _Library:
        """Learn the library from the first request; without an inner transport, make its own."""
        with self._binding:  # a sync client's first requests may come from many threads at once
            if self._library is None:
                library = _library_of(request)
                if self._inner is None:
                    self._inner = self._default_transport(library)
                self._library = library
            return self._library

    def _default_transport(self, library: _Library) -> Any:
        raise NotImplementedError


class CostTransport(_Sender, _Base):
    """A sync transport for an httpx or httpx2 client, recording the provider calls it sends.

    ``transport`` (of the client's library) sends them; by default that library's own.
    """

    def __init__(self, transport: httpx2.BaseTransport | httpx.BaseTransport | None = None, *,
                 tracker: CostTracker | None = None) -> None:
        super().__init__(transport, tracker)

    def _default_transport(self, library: _Library) -> Any:
        return library.transport()

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        library = self._library or self._bind(request)
        capture = _open(request, self._tracker, library)
        with _finished_if_failed(capture):
            response: httpx2.Response = self._inner.handle_request(request)
        return _observed(response, capture, library, library.stream)

    def close(self) -> None:
        if self._inner is not None:  # None: given none, it never sent a request
            self._inner.close()


class AsyncCostTransport(_Sender, _AsyncBase):
    """The asyncio flavour of :class:`CostTransport`."""

    def __init__(self,
                 transport: httpx2.AsyncBaseTransport | httpx.AsyncBaseTransport | None = None,
                 *, tracker: CostTracker | None = None) -> None:
        super().__init__(transport, tracker)

    def _default_transport(self, library: _Library) -> Any:
        return library.async_transport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        library = self._library or self._bind(request)
        capture = _open(request, self._tracker, library)
        with _finished_if_failed(capture):
            response: httpx2.Response = await self._inner.handle_async_request(request)
        return _observed(response, capture, library, library.async_stream)

    async def aclose(self) -> None:
        if self._inner is not None:  # None: given none, it never sent a request
            await self._inner.aclose()


class _Observer:
    """What both stream wrappers hold: the inner stream, the capture, how far it was read.

    A stream closed before its end was either cut (reading it raised: the network, a timeout)
    or stopped by its reader, which had what it wanted (SDKs stop at ``[DONE]``).
    The wrappers are mixins: :func:`_library` puts each on its library's stream base class.
    """

    def __init__(self, stream: Any, capture: Capture) -> None:
        self._stream = stream
        self._capture = capture
        self._complete = False
        #: Reading the inner stream raised.
        self._cut = False
        #: The chunk handed out last, until its reader asks for the next one.
        self._held: bytes | None = None

    def _observe_held(self) -> None:
        """Observe the chunk whose reader stopped there (it closed, or iterates anew).

        A chunk is observed when the reader asks for the next, so that it is forwarded first;
        the one a reader holds when it stops may carry the usage (SDKs stop at ``[DONE]``).
        """
        held = self._held
        if held is not None:
            self._held = None
            self._capture.response_body(held)

    def _finish(self) -> None:
        """End the capture once the stream is closed: cut if reading it raised, else read to
        its end or stopped by its reader."""
        self._observe_held()
        self._capture.finish(self._complete, stopped=not self._cut)


class _ObservedStream(_Observer):
    def __iter__(self) -> Iterator[bytes]:
        self._observe_held()
        try:
            for chunk in self._stream:
                self._held = chunk
                yield chunk
                self._held = None
                self._capture.response_body(chunk)
        except Exception:
            self._cut = True
            raise
        self._complete = True

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._finish()


class _AsyncObservedStream(_Observer):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        self._observe_held()
        try:
            async for chunk in self._stream:
                self._held = chunk
                yield chunk
                self._held = None
                self._capture.response_body(chunk)
        except Exception:
            self._cut = True
            raise
        self._complete = True

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._finish()
