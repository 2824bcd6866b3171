"""Incremental framing of streamed response bodies: SSE, NDJSON, JSON array, AWS event-stream.

Every decoder takes raw network reads through ``feed(chunk)`` and returns the events completed so
far; ``close()`` ends the input. They work on bytes only (no text decoding of payloads; JSON is
parsed only to confirm a guess, see :class:`JSONArrayDecoder`), hold only the incomplete tail
of the stream, and never raise on bad input: they set ``error`` to a short reason (the string
constants below) and ignore everything fed afterwards.
Events completed before the error are still returned.

A size cap (``max_event_bytes``) bounds one event, and therefore the held tail. An event over
the cap is an error whichever way the stream was cut into chunks, so results never depend on
the chunking.
"""

from __future__ import annotations

import re
import struct
import zlib
from typing import ClassVar, NamedTuple

import orjson

DEFAULT_MAX_EVENT_BYTES = 1 << 20

SSE_TOO_LARGE = "sse_event_too_large"
NDJSON_TOO_LARGE = "ndjson_line_too_large"
JSON_ARRAY_SYNTAX = "json_array_syntax"
JSON_ARRAY_TOO_LARGE = "json_array_element_too_large"
EVENTSTREAM_CRC = "eventstream_crc"
EVENTSTREAM_FRAMING = "eventstream_framing"
EVENTSTREAM_TOO_LARGE = "eventstream_message_too_large"
BODY_TOO_LARGE = "body_too_large"

#: Small caches of decoded names shared by all decoders; the bounds keep hostile streams from
#: growing them (a miss only costs a decode).
_CACHE_LIMIT = 256
_CACHEABLE_NAME = 128


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
_new_event = tuple.__new__


class _Delimited:
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

    def _fail(self) -> None:
        self.error = self._TOO_LARGE
        self._held.clear()
        self._held_len = 0


# --- SSE -----------------------------------------------------------------------------------

_BOM = b"\xef\xbb\xbf"
_sse_names: dict[bytes, str] = {}
#: Reads shorter than this (about 20 small named events) are framed block by block, which
#: costs less there than :meth:`SSEDecoder._named`.
_NAMED_MIN_BYTES = 2048


def _sse_name(value: bytes) -> str | None:
    # An empty ``event:`` means the default type, reported as None like a missing field.
    if not value:
        return None
    name = _sse_names.get(value)
    if name is None:
        name = value.decode("utf-8", "replace")
        if len(value) <= _CACHEABLE_NAME and len(_sse_names) < _CACHE_LIMIT:
            _sse_names[value] = name
    return name


class SSEDecoder(_Delimited):
    """``text/event-stream`` per the WHATWG rules, on bytes.

    Lines end with CR, LF or CRLF (also when a CRLF is split between two reads); CR is
    normalised to LF once per read, so held bytes never need rescanning. An event is
    dispatched at a blank line and only if it had at least one ``data`` field; ``id``,
    ``retry``, unknown fields and ``:`` comments are ignored; a leading BOM is dropped. An
    empty ``event:`` value gives ``name`` None, like no ``event:`` line.

    Deviation from the spec, on purpose: the spec discards an unterminated last event at end
    of input. A cut stream's last event is exactly what usage extraction wants, so ``close()``
    treats the end of input as the end of the line and of the event, and returns that event if
    it has data (a payload cut mid-JSON then simply fails to parse in the extractor).

    An event's size is its text up to the blank line (line ends LF-normalised, the end of its
    last line included); over ``max_event_bytes`` it is ``sse_event_too_large``. That includes
    runs of comment lines with no blank line: real servers end even keep-alives with one.
    """

    __slots__ = ("_cr", "_first", "keep")
    _SEP = b"\n\n"
    _TOO_LARGE = SSE_TOO_LARGE

    def __init__(
        self,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        *,
        keep: frozenset[str] | None = None,
        mid_stream: bool = False,
    ) -> None:
        super().__init__(max_event_bytes)
        #: The previous read ended with CR: a LF opening the next read belongs to it.
        self._cr = False
        #: A BOM may lead the input; not when it starts at an event boundary inside a stream.
        self._first = not mid_stream
        #: Names of the events to return (None: all); others are dropped before anything is
        #: built for them. Events without a name are always returned. May change between reads.
        self.keep = keep

    def feed(self, chunk: bytes) -> list[Event]:
        if self.error is not None:
            return []
        if self._cr and chunk:
            self._cr = False
            if chunk[0] == 10:
                chunk = chunk[1:]
        if not chunk:
            return []
        if 13 in chunk:
            self._cr = chunk[-1] == 13
            chunk = chunk.replace(b"\r\n", b"\n")
            if 13 in chunk:
                chunk = chunk.replace(b"\r", b"\n")
        data = self._take(chunk) if self._held else chunk
        if data is None:
            return []
        out: list[Event] = []
        if data[:6] == b"data: " and len(data) <= self._max:
            # Fast paths for reads made of one-line ``data:`` events, the usual shape: when
            # every line break belongs to an event boundary, the text between the boundaries
            # is exactly the payloads.
            first_break = data.find(b"\n")
            if first_break == len(data) - 2 and data[-1] == 10:
                self._first = False
                return [_new_event(Event, (None, data[6:-2]))]
            breaks = data.count(b"\n") if first_break >= 0 else 0
            if breaks > 2:
                pieces = data.split(b"\n\ndata: ")
                last = pieces[-1]
                last_breaks = last.count(b"\n")
                if len(pieces) > 1 and breaks == 2 * len(pieces) - 2 + last_breaks:
                    self._first = False
                    pieces[0] = pieces[0][6:]
                    if last_breaks == 2 and last[-2:] == b"\n\n":
                        pieces[-1] = last[:-2]
                        return [_new_event(Event, (None, p)) for p in pieces]
                    del pieces[-1]
                    out = [_new_event(Event, (None, p)) for p in pieces]
                    data = b"data: " + last
        elif data[:7] == b"event: " and len(data) <= self._max:
            # One ``event:`` + ``data:`` event per read: what servers of named events write.
            first_break = data.find(b"\n")
            end = len(data) - 2
            if (data.find(b"\n", first_break + 1) == end and data[-1] == 10
                    and data[first_break + 1 : first_break + 7] == b"data: "):
                self._first = False
                raw = data[7:first_break]
                name = _sse_names.get(raw) or _sse_name(raw)
                keep = self.keep
                if keep is not None and name is not None and name not in keep:
                    return out
                return [_new_event(Event, (name, data[first_break + 7 : end]))]
            keep = self.keep
            if keep is not None and len(data) >= _NAMED_MIN_BYTES:
                named = self._named(data, keep)
                if named is not None:
                    return named
        blocks = data.split(b"\n\n")
        self._keep(blocks.pop())
        if blocks:
            self._parse(blocks, out, len(data) > self._max)
        return out

    def close(self) -> list[Event]:
        out: list[Event] = []
        if self.error is None and self._held:
            self._parse([self._release()], out, False)
        return out

    def _named(self, data: bytes, keep: frozenset[str]) -> list[Event] | None:
        """The kept events of reads made only of ``event:`` + one-line blocks, or None.

        Then every third line is blank, the one before it is the block's second line, and
        the one before that its ``event:`` line. Only the few distinct ``event:`` lines are
        looked at: a block whose name is not kept is no event of interest whatever its
        second line says, and the kept ones are framed as usual.
        """
        complete, sep, rest = data.rpartition(b"\n\n")
        lines = complete.split(b"\n")
        if not sep or len(lines) % 3 != 2:
            return None
        heads = lines[0::3]
        seconds = lines[1::3]
        if any(lines[2::3]) or not all(seconds):
            return None
        wanted = []
        for head in set(heads):
            if head[:7] != b"event: ":
                return None
            raw = head[7:]
            name = _sse_names.get(raw) or _sse_name(raw)
            if name is None or name in keep:
                wanted.append(head)
        self._first = False
        self._keep(rest)
        out: list[Event] = []
        if wanted:
            at: list[int] = []
            for head in wanted:
                i = -1
                for _ in range(heads.count(head)):
                    i = heads.index(head, i + 1)
                    at.append(i)
            at.sort()
            self._parse([heads[i] + b"\n" + seconds[i] for i in at], out, False)
        return out

    def _parse(self, blocks: list[bytes], out: list[Event], check_size: bool) -> None:
        """Append the events of complete blocks (the text between blank lines)."""
        if self._first:
            self._first = False
            first = blocks[0]
            if first[:3] == _BOM:
                # Measured with its BOM, as it was while held.
                if check_size and len(first) >= self._max:
                    self._fail()
                    return
                blocks[0] = first[3:]
        append = out.append
        names = _sse_names
        keep = self.keep
        for block in blocks:
            # A block is measured with the line end of its last line (>=), as the held tail
            # may already include it: results never depend on where the reads were cut.
            if check_size and len(block) >= self._max:
                self._fail()
                return
            # Fast paths: a lone ``data:`` line, and ``event:`` + ``data:`` (Anthropic, OpenAI
            # Responses, Cohere).
            if block[:6] == b"data: ":
                if 10 not in block:
                    append(_new_event(Event, (None, block[6:])))
                    continue
            elif block[:7] == b"event: ":
                head, sep, payload = block.partition(b"\ndata: ")
                if sep and 10 not in payload and 10 not in head:
                    raw = head[7:]
                    name = names.get(raw) or _sse_name(raw)
                    if keep is None or name is None or name in keep:
                        append(_new_event(Event, (name, payload)))
                    continue
            event = _block_event(block)
            if event is not None and (keep is None or event.name is None or event.name in keep):
                append(event)


def _block_event(block: bytes) -> Event | None:
    """The event of one block, parsed line by line by the spec's rules."""
    name: str | None = None
    data: list[bytes] = []
    for line in block.split(b"\n"):
        # Blank lines inside a block can only lead it (a run of 3+ line ends) or end the final
        # one at close(); either way there is nothing pending to dispatch.
        if not line:
            continue
        colon = line.find(b":")
        if colon == 0:
            continue
        if colon < 0:
            field, value = line, b""
        else:
            field, value = line[:colon], line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = _sse_name(value)
    return _new_event(Event, (name, b"\n".join(data))) if data else None


# --- the raw tail of an SSE stream ---------------------------------------------------------

#: Bytes an :class:`SSETail` takes in before it drops its oldest events again.
TAIL_TRIM_BYTES = 16 << 10
#: Longest text an :class:`SSETail` holds without a blank line before it gives up.
TAIL_OPEN_LIMIT = 256 << 10
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
    blank lines) are counted by decoding, now and then, what the search has passed.
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
    event is longer than two such spans. Otherwise ``feed`` returns False and the caller
    goes back to decoding, from the tail's start, with ``resume``. Memory stays bounded by
    ``count`` events plus ``trim_bytes``, and a read.
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


# --- NDJSON --------------------------------------------------------------------------------


class NDJSONDecoder(_Delimited):
    """Newline-delimited JSON: one event per line that is not blank (a trailing CR is dropped).

    ``close()`` returns a final line that had no newline.
    """

    __slots__ = ()
    _SEP = b"\n"
    _TOO_LARGE = NDJSON_TOO_LARGE

    def feed(self, chunk: bytes) -> list[Event]:
        if self.error is not None or not chunk:
            return []
        data = self._take(chunk) if self._held else chunk
        if data is None:
            return []
        lines = data.split(b"\n")
        self._keep(lines.pop())
        return self._events(lines, len(data) > self._max)

    def close(self) -> list[Event]:
        if self.error is not None or not self._held:
            return []
        return self._events([self._release()], False)

    def _events(self, lines: list[bytes], check_size: bool) -> list[Event]:
        if check_size:
            for i, line in enumerate(lines):
                if len(line) > self._max:
                    self._fail()
                    del lines[i:]
                    break
        # ``line[0] > 32`` spares the isspace() call on the usual line starting with ``{``.
        return [
            _new_event(Event, (None, line.rstrip(b"\r")))
            for line in lines
            if line and (line[0] > 32 or not line.isspace())
        ]


# --- streamed JSON array -------------------------------------------------------------------

_WS = re.compile(rb"[ \t\r\n]*")


def _skip_pattern(levels: int) -> re.Pattern[bytes]:
    """A match of everything up to the next bracket that does not close within the text.

    Whole strings (which may hold brackets) and whole containers up to ``levels`` deep are
    consumed in one C-level match, so a complete element costs a couple of calls. The match
    stops before a closing bracket, before an opening one whose container is not complete (or
    deeper), and before a string that is not complete yet. Possessive repeats never backtrack,
    so a failed attempt costs linear time. Brackets are not paired by kind: validating JSON is
    the extractor's parser's job.
    """
    atom = rb'[^"\[\]{}]++|"(?:[^"\\]++|\\.)*+"'
    container = rb"[\[{](?:" + atom + rb")*+[\]}]"
    for _ in range(levels - 1):
        container = rb"[\[{](?:" + atom + rb"|" + container + rb")*+[\]}]"
    return re.compile(rb"(?:" + atom + rb"|" + container + rb")*+", re.DOTALL)


_SKIP = _skip_pattern(8)
_SCALAR_END = re.compile(rb"[,\]\s]")
_SCALAR_START = frozenset(b"-0123456789tfn")

_EXPECT_OPEN, _EXPECT_VALUE, _IN_VALUE, _EXPECT_SEP, _DONE = range(5)
#: Bytes a :class:`JSONArrayDecoder` holds while guessing where an element ends.
GUESS_BYTES = 64 << 10


def _string_end(buf: bytearray, pos: int) -> int:
    """Index just after the quote closing the string being scanned from ``pos``, or -1."""
    q = buf.find(b'"', pos)
    while q >= 0:
        # The opening quote is still in ``buf``, so this walk stops at the latest there.
        j = q - 1
        while buf[j] == 0x5C:
            j -= 1
        if (q - j) % 2:
            return q + 1
        q = buf.find(b'"', q + 1)
    return -1


class JSONArrayDecoder:
    """A top-level JSON array streamed element by element (Gemini without ``alt=sse``).

    Each element's bytes are returned as soon as its closing bracket, brace or quote (or, for
    numbers and literals, the following separator) arrives. Only the element in progress is
    held; scanning resumes where the previous read stopped. Structure inside elements is not
    validated (the extractor's JSON parser does that); text that is not an array is
    ``json_array_syntax``. Bytes after the closing ``]`` are ignored, and a trailing comma is
    tolerated.

    Scanning for brackets costs a regex step per string and per run between them, and more
    for an element cut by a read. An object printed with indentation (``{`` then a line end,
    as the Gemini API writes them) should end at its first line that starts with ``}``:
    when the bytes up to there parse as JSON, that is its end for certain (a valid value
    can end nowhere else), and it is never scanned. When they do not, or no such line comes
    within ``GUESS_BYTES`` (or half ``max_event_bytes``), or the input ends first, the scan
    reads the element from its start. Events and errors are the same either way; only an
    indented object that does not end on a line of its own is returned late (with the next
    such element, or by ``close()``).
    """

    __slots__ = ("_buf", "_depth", "_guess", "_guess_limit", "_in_string", "_max", "_pos",
                 "_start", "_state", "error")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.error: str | None = None
        self._max = max_event_bytes
        self._buf = bytearray()
        self._pos = 0
        self._state = _EXPECT_OPEN
        #: Start of the element in progress, and its scan state.
        self._start = 0
        self._depth = 0
        self._in_string = False
        #: The element in progress is an indented object whose end is being guessed.
        self._guess = False
        self._guess_limit = min(GUESS_BYTES, max_event_bytes // 2)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def done(self) -> bool:
        """The closing ``]`` has been seen."""
        return self._state == _DONE

    def feed(self, chunk: bytes) -> list[Event]:
        if self.error is not None or self._state == _DONE or not chunk:
            return []
        buf = self._buf
        buf += chunk
        out: list[Event] = []
        try:
            self._scan(out)
        except DecodeError as exc:
            self.error = str(exc)
            self._buf = bytearray()
            return out
        if self._state == _DONE:
            buf.clear()
            return out
        keep_from = self._start if self._state == _IN_VALUE else self._pos
        if keep_from:
            del buf[:keep_from]
            self._pos -= keep_from
            self._start = 0
        if len(buf) > self._max:
            self.error = JSON_ARRAY_TOO_LARGE
            self._buf = bytearray()
        return out

    def close(self) -> list[Event]:
        """Elements whose end was not guessed; one still open at the end is incomplete JSON."""
        out: list[Event] = []
        if self._guess and self.error is None:
            # What the guess has passed over is scanned now, from the element's start, and
            # no end is left to a guess any more.
            self._guess = False
            self._guess_limit = -1
            self._pos = self._start + 1
            self._depth = 1
            try:
                self._scan(out)
            except DecodeError as exc:
                self.error = str(exc)
        self._buf = bytearray()
        return out

    def _scan(self, out: list[Event]) -> None:
        buf = self._buf
        n = len(buf)
        pos = self._pos
        state = self._state
        depth = self._depth
        in_string = self._in_string
        guess = self._guess
        while pos < n:
            if state == _IN_VALUE:
                if guess:
                    # ``pos`` is where the search for the end stopped; nothing is scanned yet.
                    start = self._start
                    brace = buf.find(b"\n}", max(start + 1, pos - 1))
                    if brace >= 0:
                        end = brace + 2
                        data = bytes(buf[start:end])
                        try:
                            orjson.loads(data)
                        except orjson.JSONDecodeError:
                            pass
                        else:
                            if end - start > self._max:
                                raise DecodeError(JSON_ARRAY_TOO_LARGE)
                            out.append(_new_event(Event, (None, data)))
                            state = _EXPECT_SEP
                            pos = end
                            depth = 0
                            guess = False
                            continue
                    elif n - start <= self._guess_limit:
                        pos = n
                        break
                    # A wrong guess, or none within the limit: the element is scanned.
                    guess = False
                    pos = start + 1
                    depth = 1
                    continue
                if in_string:
                    end = _string_end(buf, pos)
                    if end < 0:
                        pos = n
                        break
                    pos = end
                    in_string = False
                    if depth:
                        continue
                elif depth:
                    q = _SKIP.match(buf, pos).end()  # type: ignore[union-attr]  # always matches
                    if q == n:
                        pos = n
                        break
                    c = buf[q]
                    pos = q + 1
                    if c == 0x22:
                        in_string = True
                        continue
                    depth += 1 if c in b"[{" else -1
                    if depth:
                        continue
                else:
                    m = _SCALAR_END.search(buf, pos)
                    if m is None:
                        pos = n
                        break
                    pos = m.start()
                if pos - self._start > self._max:
                    raise DecodeError(JSON_ARRAY_TOO_LARGE)
                out.append(_new_event(Event, (None, bytes(buf[self._start : pos]))))
                state = _EXPECT_SEP
                continue
            pos = _WS.match(buf, pos).end()  # type: ignore[union-attr]  # always matches
            if pos == n:
                break
            c = buf[pos]
            if state == _EXPECT_SEP:
                if c == 0x2C:
                    state = _EXPECT_VALUE
                elif c == 0x5D:
                    state = _DONE
                    pos += 1
                    break
                else:
                    raise DecodeError(JSON_ARRAY_SYNTAX)
                pos += 1
            elif state == _EXPECT_OPEN:
                if c != 0x5B:
                    raise DecodeError(JSON_ARRAY_SYNTAX)
                state = _EXPECT_VALUE
                pos += 1
            elif c == 0x5D:
                state = _DONE
                pos += 1
                break
            else:
                self._start = pos
                state = _IN_VALUE
                if c in b"{[":
                    depth = 1
                    pos += 1
                    guess = c == 0x7B and pos < n and buf[pos] in b"\r\n"
                elif c == 0x22:
                    in_string = True
                    pos += 1
                elif c not in _SCALAR_START:
                    raise DecodeError(JSON_ARRAY_SYNTAX)
        self._pos = pos
        self._state = state
        self._depth = depth
        self._in_string = in_string
        self._guess = guess


# --- AWS event-stream ----------------------------------------------------------------------

_PRELUDE = struct.Struct(">III")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_PRELUDE_LEN = 12
_MIN_MESSAGE = _PRELUDE_LEN + 4
#: Value sizes of the fixed-width header types (bool true/false, byte, short, int, long,
#: timestamp, uuid); types 6 (bytes) and 7 (string) carry a u16 length.
_FIXED_HEADER_SIZE = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}
_WANTED_HEADERS = frozenset({b":event-type", b":message-type", b":exception-type", b":error-code"})
#: Header blocks repeat verbatim from message to message; only short ones are cached.
_CACHEABLE_HEADERS = 256
_eventstream_names: dict[bytes, str | None] = {}


def _string_headers(block: bytes) -> dict[bytes, str]:
    """The string headers we use; every header is walked so that framing is checked."""
    found: dict[bytes, str] = {}
    i = 0
    n = len(block)
    while i < n:
        name_end = i + 1 + block[i]
        if name_end >= n:
            raise DecodeError(EVENTSTREAM_FRAMING)
        name = block[i + 1 : name_end]
        kind = block[name_end]
        i = name_end + 1
        if kind in (6, 7):
            if i + 2 > n:
                raise DecodeError(EVENTSTREAM_FRAMING)
            value_end = i + 2 + _U16.unpack_from(block, i)[0]
            if kind == 7 and name in _WANTED_HEADERS:
                found[name] = block[i + 2 : value_end].decode("utf-8", "replace")
            i = value_end
        else:
            size = _FIXED_HEADER_SIZE.get(kind)
            if size is None:
                raise DecodeError(EVENTSTREAM_FRAMING)
            i += size
        if i > n:
            raise DecodeError(EVENTSTREAM_FRAMING)
    return found


def _eventstream_name(block: bytes) -> str | None:
    try:
        return _eventstream_names[block]
    except KeyError:
        pass
    headers = _string_headers(block)
    kind = headers.get(b":message-type", "event")
    if kind == "exception":
        name: str | None = "exception:" + headers.get(b":exception-type", "")
    elif kind == "error":
        name = "error:" + headers.get(b":error-code", "")
    else:
        name = headers.get(b":event-type")
    if len(block) <= _CACHEABLE_HEADERS and len(_eventstream_names) < _CACHE_LIMIT:
        _eventstream_names[block] = name
    return name


class EventStreamDecoder:
    """AWS ``application/vnd.amazon.eventstream`` (Bedrock streams).

    A message is: total length, headers length (u32 BE each), CRC32 of those 8 bytes, the
    headers, the payload, and a CRC32 of everything before it. Both CRCs are checked. The event
    name is ``:event-type``; exception frames are named ``exception:<:exception-type>`` and
    error frames ``error:<:error-code>`` (untrusted text: sanitise before logging).
    A length over ``max_event_bytes`` is refused from the prelude, before anything is buffered.
    """

    __slots__ = ("_max", "_need", "_tail", "error")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.error: str | None = None
        self._max = max_event_bytes
        self._tail = bytearray()
        #: Bytes the tail must reach before parsing is worth trying again.
        self._need = _PRELUDE_LEN

    @property
    def buffered(self) -> int:
        return len(self._tail)

    def feed(self, chunk: bytes) -> list[Event]:
        if self.error is not None or not chunk:
            return []
        tail = self._tail
        if tail:
            tail += chunk
            if len(tail) < self._need:
                return []
            data = bytes(tail)
        else:
            data = chunk
        out: list[Event] = []
        try:
            used = self._parse(data, out)
        except DecodeError as exc:
            self.error = str(exc)
            self._tail = bytearray()
            return out
        self._tail = bytearray(data[used:])
        return out

    def close(self) -> list[Event]:
        """Nothing to add: a message is only used once its CRC has been checked."""
        self._tail = bytearray()
        return []

    def _parse(self, data: bytes, out: list[Event]) -> int:
        """Append the complete messages in ``data``; return how many bytes they used."""
        view = memoryview(data)
        n = len(data)
        off = 0
        self._need = _PRELUDE_LEN
        while n - off >= _PRELUDE_LEN:
            total, headers_len, prelude_crc = _PRELUDE.unpack_from(data, off)
            if zlib.crc32(view[off : off + 8]) != prelude_crc:
                raise DecodeError(EVENTSTREAM_CRC)
            if total > self._max:
                raise DecodeError(EVENTSTREAM_TOO_LARGE)
            if total < _MIN_MESSAGE or headers_len > total - _MIN_MESSAGE:
                raise DecodeError(EVENTSTREAM_FRAMING)
            end = off + total
            if end > n:
                self._need = total
                break
            if zlib.crc32(view[off : end - 4]) != _U32.unpack_from(data, end - 4)[0]:
                raise DecodeError(EVENTSTREAM_CRC)
            payload_start = off + _PRELUDE_LEN + headers_len
            name = _eventstream_name(data[off + _PRELUDE_LEN : payload_start])
            out.append(_new_event(Event, (name, data[payload_start : end - 4])))
            off = end
        return off


# --- whole bodies --------------------------------------------------------------------------


class BodyBuffer:
    """A whole (non-streamed) body, collected up to ``max_bytes``.

    ``close()`` returns the body, or None once it went over the cap (``error`` is then
    ``body_too_large`` and nothing more is kept).
    """

    __slots__ = ("_chunks", "_max", "_size", "error")

    def __init__(self, max_bytes: int = 8 * DEFAULT_MAX_EVENT_BYTES) -> None:
        self.error: str | None = None
        self._max = max_bytes
        self._chunks: list[bytes] = []
        self._size = 0

    @property
    def buffered(self) -> int:
        return self._size

    def feed(self, chunk: bytes) -> None:
        if self.error is not None:
            return
        self._size += len(chunk)
        if self._size > self._max:
            self.error = BODY_TOO_LARGE
            self._chunks = []
            self._size = 0
            return
        self._chunks.append(chunk)

    def close(self) -> bytes | None:
        if self.error is not None:
            return None
        body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks = []
        self._size = 0
        return body
