"""An SSE stream decoded only as far as its consumer can use it: a head, a raw tail, batches."""

from __future__ import annotations

from collections.abc import Callable

from cost_middleware.body.events import PIECE_ALLOWANCE, PIECE_BYTES, STREAM_TOO_DENSE, Event
from cost_middleware.body.sse_decoder import SSEDecoder
from cost_middleware.body.sse_tail import SSETail, find_boundary

#: Bytes of reads collected before they are decoded together.
BATCH_BYTES = 16 << 10


class LazySSEDecoder:
    """``text/event-stream`` with the savings its consumer's promises allow.

    A decoder like the others (``feed``, ``close``, ``error``), told three things by its
    consumer: ``tail_events``; ``head_read()``, after which (when ``tail_events`` is set) only
    the last ``tail_events`` events can change what the consumer makes of the stream; and
    ``keep()``, the names of the events it still reads (it may only narrow).

    With ``tail_events``, every event counts until ``head_read()``: reads are decoded one by
    one; then, from the next blank line on, they go to an
    :class:`~cost_middleware.body.sse_tail.SSETail` and only the last events are decoded, by
    ``close()``. The consumer gets exactly the events it would have got last; what it misses
    in between could not change its result. Should the tail give up (an event too long to
    hold), the events it holds are returned and decoding resumes, in batches.

    Otherwise reads are collected up to ``BATCH_BYTES`` and decoded together, which costs far
    less per event than a decoder call per read, and ``keep()``, read before each batch,
    drops the other events unread. ``flush()`` decodes the reads collected so far: a consumer
    that calls it before ``close()`` can still narrow ``keep`` for the last events.

    The events the consumer gets before ``close()`` are held to the density cap (see
    :mod:`~cost_middleware.body.events`): each costs it Python-level work, so a read or batch
    that frames more is ``stream_too_dense`` and nothing more is decoded. (A tail's last
    events are few by construction.)
    """

    __slots__ = ("_batch", "_batched", "_decoder", "_head_read", "_keep", "_tail",
                 "_tail_events")

    def __init__(
        self,
        keep: Callable[[], frozenset[str] | None],
        tail_events: int,
        head_read: Callable[[], bool],
    ) -> None:
        self._keep = keep
        #: 0 once the tail can no longer be taken up (or never could): batches.
        self._tail_events = tail_events
        self._head_read = head_read
        # Only batches drop events: a stream read for its tail keeps them all.
        self._decoder = SSEDecoder()
        self._tail: SSETail | None = None
        self._batch: list[bytes] = []
        self._batched = 0

    @property
    def error(self) -> str | None:
        return self._decoder.error

    @property
    def tail(self) -> SSETail | None:
        """The raw tail, once it has taken the stream over."""
        return self._tail

    def feed(self, chunk: bytes) -> list[Event] | None:
        """The events completed by ``chunk`` that the consumer gets now (None: none)."""
        tail = self._tail
        if tail is not None:
            if tail.feed(chunk):
                return None
            return self._resume(tail)
        if not self._tail_events:
            self._batch.append(chunk)
            self._batched += len(chunk)
            if self._batched >= BATCH_BYTES:
                return self._decode()
            return None
        decoder = self._decoder
        if self._head_read() and decoder.error is None:
            found = find_boundary(chunk)
            if found is not None:
                return self._take_tail(chunk, *found)
        return self._bounded(decoder.feed(chunk), len(chunk))

    def flush(self) -> list[Event] | None:
        """The events of the reads collected so far (None: none)."""
        return self._decode() if self._batch else None

    def close(self) -> list[Event]:
        """At end of input: the last events of the tail, or all events not returned yet."""
        tail = self._tail
        if tail is not None:
            return tail.events()
        decoder = self._decoder
        if self._tail_events:
            return decoder.close()
        events = self._decode() if self._batch else None
        decoder.keep = self._keep()
        return events + decoder.close() if events else decoder.close()

    def _decode(self) -> list[Event]:
        """Decode the collected reads."""
        batch = self._batch
        data = batch[0] if len(batch) == 1 else b"".join(batch)
        batch.clear()
        self._batched = 0
        decoder = self._decoder
        decoder.keep = self._keep()
        return self._bounded(decoder.feed(data), len(data))

    def _bounded(self, events: list[Event], size: int) -> list[Event]:
        """``events``, framed from ``size`` bytes, unless they break the density cap."""
        if len(events) <= PIECE_ALLOWANCE + size // PIECE_BYTES:
            return events
        self._decoder.error = STREAM_TOO_DENSE
        return []

    def _take_tail(self, chunk: bytes, cut: int, sep: bytes) -> list[Event]:
        """Decode ``chunk`` up to its first blank line (ending at ``cut``), keep the rest raw."""
        decoder = self._decoder
        events = decoder.feed(chunk[:cut])
        if decoder.error is not None:
            self._tail_events = 0
            return events
        tail = self._tail = SSETail(sep, self._tail_events)
        rest = chunk[cut:]
        if rest and not tail.feed(rest):
            return events + self._resume(tail)
        return events

    def _resume(self, tail: SSETail) -> list[Event]:
        """Back to decoding every read, from the tail's start on: the events the tail held."""
        self._tail = None
        self._tail_events = 0
        size = tail.buffered
        self._decoder, events = tail.resume()
        return self._bounded(events, size)
