"""What every decoder of a streamed body shares: the event, the error reasons, the bounds.

Every decoder takes raw network reads through ``feed(chunk)`` and returns the events completed so
far; ``close()`` ends the input. They work on bytes only (no text decoding of payloads; JSON is
parsed only to confirm a guess, see :class:`~cost_middleware.body.json_array.JSONArrayDecoder`),
hold only the incomplete tail of the stream, and never raise on bad input: they set ``error`` to
a short reason (the string constants below) and ignore everything fed afterwards.
Events completed before the error are still returned.

A size cap (``max_event_bytes``) bounds one event, and therefore the held tail. An event over
the cap is an error whichever way the stream was cut into chunks, so results never depend on
the chunking.

A density cap bounds the work one read costs: framing a piece (an SSE block, an NDJSON line,
a JSON array element or bracket, an event-stream message) costs Python-level work, so a read
may frame at most :data:`PIECE_ALLOWANCE` pieces plus one per :data:`PIECE_BYTES` of its bytes
(``stream_too_dense``). No provider writes events that small (their smallest, Anthropic's
``ping``, is 39 bytes, and pings are seconds apart); a stream that does is hostile, and costs
at most a few microseconds per 32 bytes.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

DEFAULT_MAX_EVENT_BYTES = 1 << 20

SSE_TOO_LARGE = "sse_event_too_large"
NDJSON_TOO_LARGE = "ndjson_line_too_large"
JSON_ARRAY_SYNTAX = "json_array_syntax"
JSON_ARRAY_TOO_LARGE = "json_array_element_too_large"
EVENTSTREAM_CRC = "eventstream_crc"
EVENTSTREAM_FRAMING = "eventstream_framing"
EVENTSTREAM_TOO_LARGE = "eventstream_message_too_large"
BODY_TOO_LARGE = "body_too_large"
STREAM_TOO_DENSE = "stream_too_dense"

#: Pieces any read may frame, and the bytes each further piece needs (see the module).
PIECE_ALLOWANCE = 64
PIECE_BYTES = 32

#: Entries in each small cache of decoded names the decoders keep: the bound keeps hostile
#: streams from growing them (a miss only costs a decode).
NAME_CACHE_LIMIT = 256


class Event(NamedTuple):
    """One framed event."""

    #: SSE ``event:`` field or event-stream ``:event-type``; None where the format has no names.
    name: str | None
    #: The raw payload: SSE data lines joined with ``\\n``; one NDJSON line; one JSON array
    #: element; one event-stream message payload.
    data: bytes


class DecodeError(Exception):
    """Internal signal of malformed input; ``feed`` turns it into ``error``."""


#: Builds an Event without NamedTuple's Python-level ``__new__`` (3x faster; same object).
new_event = tuple.__new__


class Delimited:
    """Holds the incomplete tail of a stream that a delimiter (one or two LF) cuts into pieces.

    The tail is kept as a list of reads and joined only once a delimiter arrives, so a large
    piece delivered in many small reads costs linear time.
    """

    __slots__ = ("_held", "_held_len", "_max", "error")
    _SEP: ClassVar[bytes]
    _TOO_LARGE: ClassVar[str]

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.error: str | None = None
        self._max = max_event_bytes
        self._held: list[bytes] = []
        self._held_len = 0

    @property
    def buffered(self) -> int:
        """Bytes held for the incomplete piece."""
        return self._held_len

    def _take(self, chunk: bytes) -> bytes | None:
        """The held bytes plus ``chunk`` once they hold a delimiter; else hold ``chunk``."""
        held = self._held
        held.append(chunk)
        self._held_len += len(chunk)
        # Delimiters are LF runs, so SSE's two-byte one may straddle the previous read and this.
        if self._SEP in chunk or (chunk[0] == 10 and held[-2][-1] == 10):
            data = b"".join(held)
            held.clear()
            self._held_len = 0
            return data
        if self._held_len > self._max:
            self._fail()
        return None

    def _keep(self, rest: bytes) -> None:
        """Hold ``rest``, the text after the last delimiter."""
        if len(rest) > self._max:
            self._fail()
        elif rest:
            self._held.append(rest)
            self._held_len = len(rest)

    def _release(self) -> bytes:
        """The held bytes, at end of input."""
        data = b"".join(self._held)
        self._held.clear()
        self._held_len = 0
        return data

    def _fail(self, dense: bool = False) -> None:
        """Stop: a piece over the size cap, or (``dense``) a read over the density cap."""
        self.error = STREAM_TOO_DENSE if dense else self._TOO_LARGE
        self._held.clear()
        self._held_len = 0
