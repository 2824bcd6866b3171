"""The raw tail of an SSE stream: its last events, kept undecoded until the end."""

from __future__ import annotations

from cost_middleware.body.events import DEFAULT_MAX_EVENT_BYTES, Event
from cost_middleware.body.sse_decoder import SSEDecoder

#: Bytes an :class:`SSETail` takes in before it drops its oldest events again.
TAIL_TRIM_BYTES = 16 << 10
#: Longest text an :class:`SSETail` holds without a blank line before it gives up.
TAIL_OPEN_LIMIT = 256 << 10
#: Blocks :func:`_tail_start` walks back over before it settles for the whole buffer, so a
#: tail of blocks that are no events (comments, ``id:`` lines) costs no walk per block.
TAIL_SCAN_BLOCKS = 256
_BOUNDARIES = (b"\n\n", b"\r\n\r\n")


def find_boundary(chunk: bytes) -> tuple[int, bytes] | None:
    """Where the first blank line in ``chunk`` ends, and the line ends it is made of.

    Whatever came before, text after ``\\n\\n`` or ``\\r\\n\\r\\n`` starts a line, and no
    event is pending there (a blank line has just dispatched it): decoding can start at
    that point. Blank lines of lone CRs are not looked for.
    """
    for sep in _BOUNDARIES:
        at = chunk.find(sep)
        if at >= 0:
            return at + len(sep), sep
        if 13 not in chunk:
            break
    return None


def _tail_start(buf: bytes, sep: bytes, cut: int, count: int, max_event_bytes: int) -> int:
    """An offset in ``buf`` from which decoding still returns ``count`` complete events, or 0.

    ``buf`` starts at an event boundary; ``cut`` is where its last ``sep`` is (-1: none).
    Boundaries are found from the end, so only the last events are looked at. A block that
    opens with a ``data:`` line is an event for sure; others (comments, ``id:``, runs of
    blank lines) are counted by decoding, now and then, what the search has passed, and
    after ``TAIL_SCAN_BLOCKS`` of them the search gives up (0).
    """
    width = len(sep)
    sure = 0
    blocks = 0
    verify_at = 2 * count
    while cut >= 0:
        cut = buf.rfind(sep, 0, cut)
        if cut < 0:
            break
        start = cut + width
        if buf.startswith(b"data:", start):
            sure += 1
            if sure >= count:
                return start
        blocks += 1
        if blocks > TAIL_SCAN_BLOCKS:
            break
        if blocks >= verify_at:
            decoder = SSEDecoder(max_event_bytes, mid_stream=True)
            if len(decoder.feed(buf[start:])) >= count:
                return start
            verify_at *= 2
    return 0


class SSETail:
    """The end of an SSE stream kept as raw bytes, for readers that need only its last events.

    It starts at an event boundary (see :func:`find_boundary`) and holds what follows;
    ``feed`` only appends. Every ``trim_bytes`` the oldest events are dropped (at least the
    last ``count`` stay), and ``events``, at the end, decodes what is left: the events an
    :class:`SSEDecoder` would have returned from the tail's start, or the last ``count`` or
    more of them.

    Each trim also checks that no event can have reached the decoder's size cap, which the
    tail cannot judge: the text after the last blank line, and what came in since the last
    trim, must stay within ``open_limit`` (at most half of ``max_event_bytes``), so that no
    event is longer than two such spans; and that what it keeps stays within ``open_limit``
    too (a tail of blocks that are not events, or of a few huge events, would otherwise
    grow, and be joined and searched again at every trim). Otherwise ``feed`` returns False
    and the caller goes back to decoding, from the tail's start, with ``resume``. Memory
    stays bounded by ``open_limit`` plus ``trim_bytes``, and a read.
    """

    __slots__ = (
        "_checked", "_count", "_limit", "_max", "_parts", "_sep", "_size", "_trim_at",
        "_trim_bytes",
    )

    def __init__(
        self,
        sep: bytes,
        count: int,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        *,
        trim_bytes: int = TAIL_TRIM_BYTES,
        open_limit: int = TAIL_OPEN_LIMIT,
    ) -> None:
        self._sep = sep
        self._count = count
        self._max = max_event_bytes
        # An event is measured with the line end of its last line: keep clear of the cap.
        self._limit = min(open_limit, (max_event_bytes - 2) // 2)
        self._trim_bytes = min(trim_bytes, self._limit)
        self._parts: list[bytes] = []
        self._size = 0
        #: Bytes held after the last trim.
        self._checked = 0
        self._trim_at = self._trim_bytes

    @property
    def buffered(self) -> int:
        return self._size

    def feed(self, chunk: bytes) -> bool:
        """Hold ``chunk``; False when the tail gives up (then call ``resume``)."""
        self._parts.append(chunk)
        self._size += len(chunk)
        if self._size > self._trim_at:
            return self._trim()
        return True

    def _trim(self) -> bool:
        if self._size - self._checked > self._limit:
            return False
        buf = b"".join(self._parts)
        sep = self._sep
        last = buf.rfind(sep)
        if len(buf) - (last + len(sep) if last >= 0 else 0) > self._limit:
            return False
        start = _tail_start(buf, sep, last, self._count, self._max)
        if start:
            buf = buf[start:]
        if len(buf) > self._limit:
            return False
        self._parts = [buf]
        self._size = self._checked = len(buf)
        self._trim_at = self._size + self._trim_bytes
        return True

    def events(self) -> list[Event]:
        """At end of input: the last events (at least ``count``, or all since the start)."""
        buf = b"".join(self._parts)
        self._parts = []
        self._size = 0
        start = _tail_start(buf, self._sep, buf.rfind(self._sep), self._count, self._max)
        decoder = SSEDecoder(self._max, mid_stream=True)
        return decoder.feed(buf[start:] if start else buf) + decoder.close()

    def resume(self) -> tuple[SSEDecoder, list[Event]]:
        """A decoder that has read what the tail holds, and the events it returned (at least
        the last ``count`` complete ones, or all since the start)."""
        decoder = SSEDecoder(self._max, mid_stream=True)
        events = decoder.feed(b"".join(self._parts))
        self._parts = []
        self._size = 0
        return decoder, events
