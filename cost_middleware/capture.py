"""The framework-free tee both adapters drive: one :class:`Capture` per inspected exchange.

Adapters forward every message first and hand a copy here. The response start is only noted;
the reader is opened after the first body chunk has been forwarded, so time to first byte
does not pay for it. Everything here runs under the guard: a failure costs a counted skip,
never an exception into the app.
"""

from __future__ import annotations

from collections.abc import Iterable
from time import perf_counter
from typing import TYPE_CHECKING

from cost_middleware.body.decompress import BROTLI_AVAILABLE, make_decompressor
from cost_middleware.context import MAX_ROUTE, RequestContext
from cost_middleware.records import CostRecord
from cost_middleware.usage.base import Exchange, Reader, Target
from cost_middleware.usage.detect import Declared
from cost_middleware.usage.readers import BodyReader, ErrorResponse
from cost_middleware.usage.service_tier import normalize as normalize_tier

if TYPE_CHECKING:
    from cost_middleware.body.decompress import Decompressor

#: Request bodies are only read for targets that need them (Cohere's model, stream flags).
MAX_REQUEST_BODY = 1 << 20
#: Decompressed bytes read from one stream (or one body read from its ends) before inspection
#: stops: far above real responses (the longest streams inflate to tens of MB). The ratio
#: limit (``body.decompress``) keeps what a bomb costs far below it.
STREAM_DECOMPRESS_LIMIT = 256 << 20


class Capture:
    """Observes one request/response pair and turns it into a :class:`CostRecord`."""

    __slots__ = (
        "_body_bytes", "_client_call", "_context", "_cpu", "_decompressor", "_done",
        "_exchange_parts", "_extract", "_max_body", "_provider", "_reader", "_request_body",
        "_start", "_target", "_tracker", "status",
    )

    def __init__(
        self,
        context: RequestContext,
        target: Target,
        path: str,
        query: str,
        raw_path: str | None,
        *,
        client_call: bool = False,
    ) -> None:
        tracker = context.tracker
        #: Seen by an outgoing httpx client rather than on the app's response.
        self._client_call = client_call
        self._tracker = tracker
        self._context = context
        self._target = target
        #: The provider declared for the route or named by the host, over the response's.
        self._provider = target.provider if type(target) is Declared else None
        self._exchange_parts = (context.method, path, query, raw_path)
        self._request_body: bytearray | None = (
            bytearray() if target.needs_request_body else None
        )
        self._reader: Reader | None = None
        self._decompressor: Decompressor | None = None
        self._start: tuple[int, Iterable[tuple[str, str]]] | None = None
        self._max_body = tracker.settings.max_body_bytes
        self._body_bytes = 0
        self._done = False
        self.status = 0
        self._cpu = perf_counter() - context.started
        self._extract = 0.0

    @property
    def needs_request_body(self) -> bool:
        return self._request_body is not None

    def request_body(self, chunk: bytes) -> None:
        t0 = perf_counter()
        body = self._request_body
        if body is not None and chunk:
            if len(body) + len(chunk) > MAX_REQUEST_BODY:
                # Too large to be a provider request we need to read: drop what we held.
                self._request_body = None
                self._tracker.guard.skip("request_too_large")
            else:
                body += chunk
        self._cpu += perf_counter() - t0

    def response_start(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        """Noted only; the reader opens once the first body chunk has gone out."""
        self.status = status
        self._start = (status, headers)

    def _open_pending(self) -> None:
        pending = self._start
        if pending is None:
            return
        self._start = None
        try:
            self._open(*pending)
        except Exception as exc:
            self._reader = None
            self._tracker.guard.error("response_start", exc)

    def _open(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        response_headers = {k.lower(): v for k, v in headers}
        method, path, query, raw_path = self._exchange_parts
        body = self._request_body
        exchange = Exchange(
            method=method,
            path=path,
            query=query,
            request_body=bytes(body) if body is not None else None,
            status=status,
            response_headers=response_headers,
            raw_path=raw_path,
        )
        self._request_body = None
        reader = self._target.open(exchange)
        if reader is None:
            self._tracker.guard.skip("not_provider_response")
            return
        if type(reader) is ErrorResponse:
            self._tracker.guard.skip("error_status")
            return
        whole = reader if type(reader) is BodyReader else None
        if whole is not None:
            whole.limit(self._max_body, self._tracker.metrics)
        encoding = response_headers.get("content-encoding")
        if encoding:
            # A stream's decoder bounds memory per event, and so does a body read from its
            # ends; a body that cannot be is capped at the body limit.
            cap = (self._max_body + 1 if whole is not None and not whole.keeps_ends
                   else STREAM_DECOMPRESS_LIMIT)
            self._decompressor = make_decompressor(encoding, cap)
            if self._decompressor is None and not BROTLI_AVAILABLE and "br" in encoding.lower():
                self._tracker.guard.skip("br_unavailable")
                return
        self._reader = reader

    def response_body(self, chunk: bytes) -> None:
        t0 = perf_counter()
        if self._start is not None:
            self._open_pending()
        reader = self._reader
        if reader is None or not chunk:
            self._cpu += perf_counter() - t0
            return
        try:
            decompressor = self._decompressor
            if decompressor is not None:
                chunk = decompressor.feed(chunk)
                if decompressor.error is not None:
                    self._reader = None
                    self._tracker.guard.skip(decompressor.error)
                    chunk = b""
            if chunk:
                self._body_bytes += len(chunk)
                reader.feed(chunk)
        except Exception as exc:
            self._reader = None
            self._tracker.guard.error("response_body", exc)
        spent = perf_counter() - t0
        self._extract += spent
        self._cpu += spent

    def finish(self, complete: bool, route: str | None = None, *, stopped: bool = False) -> None:
        """End of the exchange (``complete`` False: cut short). Idempotent.

        ``stopped``: the client closed the response itself before its end (the sync openai SDK
        does at ``[DONE]``). What it read is then all there is to read: a stream is partial
        only if the provider's last event is missing. A client that read nothing cut it.
        """
        if self._done:
            return
        self._done = True
        complete = complete or (stopped and self._body_bytes > 0)
        t0 = perf_counter()
        tracker = self._tracker
        context = self._context
        try:
            if self._start is not None:
                self._open_pending()
            reader = self._reader
            if reader is None:
                return
            extraction = reader.finish(complete)
            self._extract += perf_counter() - t0
            if extraction is None:
                tracker.guard.skip(reader.skip_reason or "no_usage_found")
                return
            usage = extraction.usage
            if usage is None:
                if reader.skip_reason:
                    tracker.guard.skip(reader.skip_reason)
                tracker.metrics.incr("usage.missing")
            else:
                key = (extraction.model, usage.input_tokens, usage.output_tokens,
                       usage.cached_input_tokens, usage.cache_write_input_tokens)
                if self._client_call:
                    if context.client_calls is None:
                        context.client_calls = set()
                    context.client_calls.add(key)
                elif context.client_calls and key in context.client_calls:
                    tracker.guard.skip("seen_by_client")
                    return
            tracker.record(CostRecord(
                provider=self._provider or extraction.provider,
                api=extraction.api,
                model=extraction.model,
                usage=extraction.usage,
                tenant=context.tenant,
                request_id=context.request_id,
                method=context.method,
                route=(route or context.path)[:MAX_ROUTE],
                status_code=self.status,
                streamed=extraction.streamed,
                partial=extraction.partial or not complete,
                service_tier=normalize_tier(extraction.service_tier),
                latency_ms=(perf_counter() - context.started) * 1000.0,
            ))
        except Exception as exc:
            tracker.guard.error("finish", exc)
        finally:
            end = perf_counter()
            metrics = tracker.metrics
            metrics.timing("request.overhead", (self._cpu + end - t0) * 1000.0)
            if self._reader is not None:
                metrics.timing("extract.duration", self._extract * 1000.0)
