"""The generic half of reading a response: framing by content type, then a provider family.

An :class:`Endpoint` is the :class:`~cost_middleware.usage.base.Target` the detector returns.
Its ``open`` builds a :class:`Call` (what the request line and headers told us) and picks a
reader: a whole JSON body goes to the family's ``body`` function, a stream's events go to the
family's :class:`Stream`. Families only see parsed shapes; framing, partial streams and skip
reasons are handled here, once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import orjson

from cost_middleware.body.decoders import (
    BodyBuffer,
    Event,
    EventStreamDecoder,
    JSONArrayDecoder,
    NDJSONDecoder,
    SSEDecoder,
    SSETail,
    find_boundary,
)
from cost_middleware.usage.base import Exchange, Reader
from cost_middleware.usage.fields import InvalidUsage, label, loads
from cost_middleware.usage.model import Extraction, Usage

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

    Two promises let an SSE stream skip work (see :class:`SSEReader`): ``keep`` names the
    events ``events`` still reads (it may only narrow), so that the decoder drops the others
    unread; and a class with ``TAIL_EVENTS`` set promises that once ``head_read()`` is true,
    only its last ``TAIL_EVENTS`` events can change the result (such a stream keeps every
    event: its ``keep`` stays None).
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


class Finished:
    """A reader whose result was known from the status line (error responses)."""

    __slots__ = ("_result", "skip_reason")

    def __init__(self, result: Extraction) -> None:
        self.skip_reason: str | None = None
        self._result = result

    def feed(self, chunk: bytes) -> None:
        """Error bodies carry no usage: nothing to read."""

    def finish(self, complete: bool) -> Extraction | None:
        return self._result


class BodyReader:
    """A whole JSON body, parsed once at the end."""

    __slots__ = ("_buffer", "_call", "_parse", "skip_reason")

    def __init__(self, parse: BodyParser, call: Call) -> None:
        self.skip_reason: str | None = None
        self._parse = parse
        self._call = call
        self._buffer = BodyBuffer(MAX_BODY_BYTES)

    def feed(self, chunk: bytes) -> None:
        self._buffer.feed(chunk)

    def finish(self, complete: bool) -> Extraction | None:
        raw = self._buffer.close()
        if raw is None:
            self.skip_reason = self._buffer.error
            return None
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.skip_reason = INVALID_JSON if complete else TRUNCATED_BODY
            return None
        call = self._call
        call.partial = not complete
        result = self._parse(obj, raw, call)
        self.skip_reason = call.skip_reason if result is not None else NOT_PROVIDER_SHAPE
        return result


class FrameDecoder(Protocol):
    """What a stream reader needs of a decoder (every stream class in ``decoders``)."""

    error: str | None

    def feed(self, chunk: bytes) -> list[Event]: ...

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


#: Reads an :class:`SSEReader` collects before decoding them together.
BATCH_BYTES = 16 << 10


class SSEReader(StreamReader):
    """A ``text/event-stream``, read with the savings :class:`Stream` allows.

    For a stream with ``TAIL_EVENTS``, reads are decoded one by one until its head is read;
    then, from the next blank line on, they go to an
    :class:`~cost_middleware.body.decoders.SSETail` and only the last events are decoded, at the
    end. The stream sees exactly the events it would have seen last; what it misses in
    between could not change its result. Should the tail give up (an event too long to
    hold), its events go to the stream and decoding resumes.

    Other streams only need their events by the end: reads are collected up to
    ``BATCH_BYTES`` and decoded together, which costs far less per event than a decoder
    call per read, and the decoder drops the events the stream no longer ``keep``s.
    """

    __slots__ = ("_batch", "_batched", "_tail", "_tailing")

    _decoder: SSEDecoder

    def __init__(self, stream: Stream) -> None:
        super().__init__(SSEDecoder(keep=stream.keep), stream)
        self._tail: SSETail | None = None
        #: The tail may still be taken up.
        self._tailing = stream.TAIL_EVENTS > 0
        self._batch: list[bytes] = []
        self._batched = 0

    def feed(self, chunk: bytes) -> None:
        tail = self._tail
        if tail is not None:
            if not tail.feed(chunk):
                self._resume(tail)
            return
        if not self._tailing:
            self._batch.append(chunk)
            self._batched += len(chunk)
            if self._batched >= BATCH_BYTES:
                self._decode()
            return
        # The head: decoded read by read until it is read, then the tail begins.
        stream = self._stream
        decoder = self._decoder
        if stream.head_read() and decoder.error is None:
            found = find_boundary(chunk)
            if found is not None:
                self._take_tail(chunk, *found)
                return
        events = decoder.feed(chunk)
        if events:
            self._give(events)

    def _decode(self) -> None:
        """Decode the collected reads."""
        batch = self._batch
        data = batch[0] if len(batch) == 1 else b"".join(batch)
        batch.clear()
        self._batched = 0
        decoder = self._decoder
        events = decoder.feed(data)
        if events:
            self._give(events)
            decoder.keep = self._stream.keep

    def _take_tail(self, chunk: bytes, cut: int, sep: bytes) -> None:
        """Decode ``chunk`` up to its first blank line (ending at ``cut``), keep the rest raw."""
        stream = self._stream
        decoder = self._decoder
        events = decoder.feed(chunk[:cut])
        if events:
            self._give(events)
        if decoder.error is not None:
            self._tailing = False
            return
        tail = self._tail = SSETail(sep, stream.TAIL_EVENTS)
        rest = chunk[cut:]
        if rest and not tail.feed(rest):
            self._resume(tail)

    def _resume(self, tail: SSETail) -> None:
        """Back to decoding every read, from the tail's start on."""
        self._tail = None
        self._tailing = False
        decoder, events = tail.resume()
        self._decoder = decoder
        if events:
            self._give(events)

    def finish(self, complete: bool) -> Extraction | None:
        tail = self._tail
        if tail is not None:
            events = tail.events()
        else:
            if self._batch:
                self._decode()
            events = self._decoder.close()
        if events:
            self._stream.events(events)
        return self._result(complete)


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
            return Finished(call.extraction(None, None))
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
