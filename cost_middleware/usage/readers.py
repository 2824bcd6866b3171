"""The generic half of reading a response: framing by content type, then a provider family.

An :class:`Endpoint` is the :class:`~cost_middleware.usage.base.Target` the detector returns.
Its ``open`` builds a :class:`Call` (what the request line and headers told us) and picks a
reader: a whole JSON body goes to the family's ``body`` function, a stream's events go to the
family's :class:`Stream`. Families only see parsed shapes; framing, partial streams and skip
reasons are handled here, once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import orjson

from cost_middleware.body.events import BODY_TOO_LARGE, Event
from cost_middleware.body.eventstream import EventStreamDecoder
from cost_middleware.body.json_array import JSONArrayDecoder
from cost_middleware.body.ndjson import NDJSONDecoder
from cost_middleware.body.sse import LazySSEDecoder
from cost_middleware.body.sse_tail import SSETail
from cost_middleware.body.stitch import stitched
from cost_middleware.body.whole import BodyBuffer
from cost_middleware.usage.base import Exchange, Reader
from cost_middleware.usage.fields import InvalidUsage, label, loads, reparse
from cost_middleware.usage.model import Extraction, Usage

if TYPE_CHECKING:
    from cost_middleware.metrics import Metrics

NOT_PROVIDER_SHAPE = "not_provider_shape"
INVALID_USAGE = "invalid_usage"
INVALID_JSON = "invalid_json"
TRUNCATED_BODY = "truncated_body"

#: A backstop only: the capture layer enforces the configured body limit before this.
MAX_BODY_BYTES = 64 << 20

_JSON_TYPES = frozenset({"", "application/json", "text/json", "text/plain"})
_NDJSON_TYPES = frozenset({
    "application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines",
})
_SSE = "text/event-stream"
_EVENTSTREAM = "application/vnd.amazon.eventstream"


class Call:
    """What one exchange told us before its body, and what reading it decided."""

    __slots__ = (
        "api", "deployment", "exchange", "fallback_model", "model", "partial", "provider",
        "skip_reason", "streamed",
    )

    def __init__(self, provider: str, api: str, exchange: Exchange) -> None:
        self.provider = provider
        self.api = api
        self.exchange = exchange
        #: A model that wins over the body's (Bedrock path, Vertex Claude URL, Cohere request).
        self.model: str | None = None
        #: A model used only when the body names none (Gemini URL).
        self.fallback_model: str | None = None
        self.deployment: str | None = None
        self.streamed = False
        self.partial = False
        self.skip_reason: str | None = None

    def usage(self, build: Callable[..., Usage | None], *source: Any) -> Usage | None:
        """``build(*source)``; invalid counts give None and the ``invalid_usage`` skip."""
        try:
            return build(*source)
        except InvalidUsage:
            self.skip_reason = INVALID_USAGE
            return None

    def extraction(
        self,
        model: str | None,
        usage: Usage | None,
        *,
        provider: str | None = None,
        upstream: str | None = None,
        tier: str | None = None,
    ) -> Extraction:
        return Extraction(
            provider=provider or self.provider,
            api=self.api,
            model=self.model or model or self.fallback_model,
            usage=usage,
            streamed=self.streamed,
            partial=self.partial,
            deployment=self.deployment,
            upstream_provider=upstream,
            service_tier=tier,
        )


class Stream:
    """The state of one streamed response. A family subclasses it.

    ``events`` gets the events of each network read and must stay cheap: event names or a
    few bytes decide, and JSON is parsed only for the few events that carry what we need.
    ``settle`` and ``result`` run once, at the end.

    Two promises let an SSE stream skip work (see
    :class:`~cost_middleware.body.sse.LazySSEDecoder`): ``keep`` names the events ``events``
    still reads (it may only narrow), so that the decoder drops the others unread; and a class
    with ``TAIL_EVENTS`` set promises that once ``head_read()`` is true, only its last
    ``TAIL_EVENTS`` events can change the result (such a stream keeps every event: its
    ``keep`` stays None).
    """

    __slots__ = ("call", "failed", "keep", "terminal")

    #: 0, or how many of the last events decide the result once ``head_read()``.
    TAIL_EVENTS: ClassVar[int] = 0

    def __init__(self, call: Call) -> None:
        self.call = call
        #: The provider's normal last event was seen.
        self.terminal = False
        #: The provider reported an error inside the stream.
        self.failed = False
        #: Names of the events ``events`` still reads (None: all); unnamed events always come.
        self.keep: frozenset[str] | None = None

    def events(self, events: list[Event]) -> None:
        """The events framed from one read."""
        raise NotImplementedError

    def head_read(self) -> bool:
        """From now on, only the last ``TAIL_EVENTS`` events matter (see the class)."""
        return False

    def settle(self) -> None:
        """End of input: set ``terminal``/``failed`` if ``events`` left that for the end."""

    def result(self) -> Extraction | None:
        """The extraction, or None when nothing in the stream had the provider's shape."""
        raise NotImplementedError


class ProbedStream(Stream):
    """A stream that learns from its first JSON event whether it has the provider's shape,
    and the model that event names (Gemini chunks, Ollama lines)."""

    __slots__ = ("model", "shape")

    def __init__(self, call: Call) -> None:
        super().__init__(call)
        self.model: str | None = None
        #: None until the first JSON event; then whether it had the provider's shape.
        self.shape: bool | None = None

    def probe(self, events: list[Event]) -> None:
        """Read the first JSON object among ``events`` into ``shape`` and ``model``."""
        for _, data in events:
            obj = loads(data)
            if type(obj) is dict:
                self.first(obj)
                return

    def first(self, obj: dict[str, Any]) -> None:
        """Set ``shape`` (and ``model``) from the first JSON object."""
        raise NotImplementedError


class EventStream(Stream):
    """A stream whose events are handled one at a time (named events, mostly)."""

    __slots__ = ()

    def events(self, events: list[Event]) -> None:
        for name, data in events:
            self.event(name, data)

    def event(self, name: str | None, data: bytes) -> None:
        raise NotImplementedError


BodyParser = Callable[[Any, bytes, Call], "Extraction | None"]
StreamFactory = Callable[[Call], Stream]
Locator = Callable[[Call], None]


class ErrorResponse:
    """The reader of an error response (status >= 400): the one place that says an error
    status is no billed call. Its extraction names the endpoint without model or usage; the
    capture layer counts it as the ``error_status`` skip and records nothing."""

    __slots__ = ("_result", "skip_reason")

    def __init__(self, result: Extraction) -> None:
        self.skip_reason: str | None = None
        self._result = result

    def feed(self, chunk: bytes) -> None:
        """Error bodies carry no usage: nothing to read."""

    def finish(self, complete: bool) -> Extraction | None:
        return self._result


class BodyReader:
    """A whole JSON body, parsed once at the end.

    Broken text (an invalid UTF-8 byte, an escaped lone surrogate) does not lose the call:
    the body is read repaired (:func:`~cost_middleware.usage.fields.reparse`) and the repair
    counted as ``usage.repaired``. A body over its cap is read from its two ends when they
    are kept (:class:`~cost_middleware.body.whole.BodyBuffer`), joined as one document
    (:mod:`~cost_middleware.body.stitch`): the first join that parses is the body, read
    as any other; none is ``body_too_large``.
    """

    __slots__ = ("_buffer", "_call", "_metrics", "_parse", "skip_reason")

    def __init__(self, parse: BodyParser, call: Call) -> None:
        self.skip_reason: str | None = None
        self._parse = parse
        self._call = call
        self._buffer = BodyBuffer(MAX_BODY_BYTES)
        self._metrics: Metrics | None = None

    def limit(self, max_bytes: int, metrics: Metrics) -> None:
        """Hold at most ``max_bytes`` of the body, and count repairs in ``metrics`` (called by
        the capture layer before the first read)."""
        self._buffer.cap(max_bytes)
        self._metrics = metrics

    @property
    def keeps_ends(self) -> bool:
        """A body over the cap is read from its ends (see :class:`BodyBuffer`)."""
        return self._buffer.keeps_ends

    def feed(self, chunk: bytes) -> None:
        self._buffer.feed(chunk)

    def finish(self, complete: bool) -> Extraction | None:
        raw = self._buffer.close()
        if raw is None:
            found = self._ends(complete)
            if found is None:
                return None
            obj, raw = found
        else:
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                found = self._repaired(raw)
                if found is None:
                    self.skip_reason = INVALID_JSON if complete else TRUNCATED_BODY
                    return None
                obj, raw = found
        call = self._call
        call.partial = not complete
        result = self._parse(obj, raw, call)
        self.skip_reason = call.skip_reason if result is not None else NOT_PROVIDER_SHAPE
        return result

    def _ends(self, complete: bool) -> tuple[Any, bytes] | None:
        """A body over the cap, parsed from its joined ends, and the text read; or None, with
        the skip reason set."""
        buffer = self._buffer
        ends = buffer.ends
        if ends is None:
            self.skip_reason = buffer.error
            return None
        if not complete:
            # A cut body's tail is no document's end.
            self.skip_reason = TRUNCATED_BODY
            return None
        for doc in stitched(*ends):
            try:
                return orjson.loads(doc), doc
            except orjson.JSONDecodeError:
                found = self._repaired(doc)
                if found is not None:
                    return found
        self.skip_reason = BODY_TOO_LARGE
        return None

    def _repaired(self, raw: bytes) -> tuple[Any, bytes] | None:
        """``raw``, refused by orjson, parsed with its broken text repaired (counted)."""
        found = reparse(raw)
        if found is not None and self._metrics is not None:
            self._metrics.incr("usage.repaired")
        return found


class FrameDecoder(Protocol):
    """What a stream reader needs of a decoder (every stream decoder in ``body``)."""

    @property
    def error(self) -> str | None: ...

    def feed(self, chunk: bytes) -> list[Event] | None: ...

    def close(self) -> list[Event]: ...


class StreamReader:
    """A framed stream: every event goes to the family's :class:`Stream`."""

    __slots__ = ("_decoder", "_seen", "_stream", "skip_reason")

    def __init__(self, decoder: FrameDecoder, stream: Stream) -> None:
        self.skip_reason: str | None = None
        self._decoder = decoder
        self._stream = stream
        #: An event reached the stream.
        self._seen = False
        stream.call.streamed = True

    def feed(self, chunk: bytes) -> None:
        events = self._decoder.feed(chunk)
        if events:
            self._give(events)

    def finish(self, complete: bool) -> Extraction | None:
        events = self._decoder.close()
        if events:
            # What close() frames ends at the end of input, maybe cut: not a seen event.
            self._stream.events(events)
        return self._result(complete)

    def _give(self, events: list[Event]) -> None:
        """Events framed before the end of input."""
        self._seen = True
        self._stream.events(events)

    def _result(self, complete: bool) -> Extraction | None:
        """The stream's extraction, once every event has reached it."""
        stream = self._stream
        error = self._decoder.error
        stream.settle()
        call = stream.call
        call.partial = not complete or not stream.terminal or stream.failed or error is not None
        result = stream.result()
        if result is None and not complete and not self._seen and error is None:
            # Cut before its first event (a client gone, a server stopping): the call was
            # made, so it gets a partial row without usage, like a stream cut later.
            result = call.extraction(None, None)
        if result is None:
            self.skip_reason = call.skip_reason or error or NOT_PROVIDER_SHAPE
        else:
            self.skip_reason = call.skip_reason
        return result


class SSEReader(StreamReader):
    """A ``text/event-stream``, read with the savings :class:`Stream` allows.

    Its decoder, a :class:`~cost_middleware.body.sse.LazySSEDecoder`, gets the stream's
    promises: ``keep``, ``TAIL_EVENTS`` and ``head_read()``.
    """

    __slots__ = ()

    _decoder: LazySSEDecoder

    def __init__(self, stream: Stream) -> None:
        super().__init__(
            LazySSEDecoder(lambda: stream.keep, stream.TAIL_EVENTS, stream.head_read), stream)

    @property
    def _tail(self) -> SSETail | None:
        """The raw tail, once it has taken the stream over (what tests look at)."""
        return self._decoder.tail

    def finish(self, complete: bool) -> Extraction | None:
        # Reads still collected came before the end of input, and their events may narrow
        # the stream's ``keep`` for the last ones.
        events = self._decoder.flush()
        if events:
            self._give(events)
        return super().finish(complete)


def media_type(headers: Any) -> str:
    """The lower-cased media type of a response, without parameters."""
    value = headers.get("content-type")
    if type(value) is not str:
        return ""
    return value.partition(";")[0].strip().lower()


class Endpoint:
    """A provider endpoint (the detector's :class:`Target`): one family, one API."""

    __slots__ = ("_array", "_body", "_locate", "_stream", "api", "needs_request_body",
                 "provider")

    def __init__(
        self,
        provider: str,
        api: str,
        body: BodyParser,
        stream: StreamFactory,
        *,
        locate: Locator | None = None,
        needs_request_body: bool = False,
        json_array: bool = False,
    ) -> None:
        self.provider = provider
        self.api = api
        self.needs_request_body = needs_request_body
        self._body = body
        self._stream = stream
        self._locate = locate
        #: A JSON response is a streamed array of chunks (Gemini without ``alt=sse``).
        self._array = json_array

    def __repr__(self) -> str:
        return f"Endpoint({self.provider!r}, {self.api!r})"

    def open(self, exchange: Exchange) -> Reader | None:
        call = Call(self.provider, self.api, exchange)
        if self._locate is not None:
            self._locate(call)
        if exchange.status >= 400:
            # Error bodies have neither usage nor a billed model.
            call.model = call.fallback_model = None
            return ErrorResponse(call.extraction(None, None))
        media = media_type(exchange.response_headers)
        if media == _SSE:
            return SSEReader(self._stream(call))
        if media in _JSON_TYPES or media.endswith("+json"):
            if self._array:
                return StreamReader(JSONArrayDecoder(), self._stream(call))
            return BodyReader(self._body, call)
        if media in _NDJSON_TYPES:
            return StreamReader(NDJSONDecoder(), self._stream(call))
        if media == _EVENTSTREAM:
            return StreamReader(EventStreamDecoder(), self._stream(call))
        return None


def request_model(body: bytes | None) -> str | None:
    """The ``model`` a JSON request body asked for (Cohere v2, Azure ``/openai/v1``)."""
    if not body:
        return None
    obj = loads(body)
    if type(obj) is not dict:
        return None
    return label(obj.get("model"))


def event_type(data: bytes) -> str | None:
    """The ``type`` of an event whose JSON leads with it (Anthropic, Responses, Cohere).

    Providers write ``type`` first; anything else is parsed, which is slower but right.
    """
    if data.startswith(b'{"type":"'):
        end = data.find(b'"', 9)
        if end > 9:
            return data[9:end].decode("ascii", "replace")
        return None
    obj = loads(data)
    if type(obj) is dict:
        kind = obj.get("type")
        if type(kind) is str:
            return kind
    return None
