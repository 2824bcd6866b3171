"""A top-level JSON array streamed element by element (Gemini without ``alt=sse``)."""

from __future__ import annotations

import re

import orjson

from cost_middleware.body.events import (
    DEFAULT_MAX_EVENT_BYTES,
    JSON_ARRAY_SYNTAX,
    JSON_ARRAY_TOO_LARGE,
    PIECE_ALLOWANCE,
    PIECE_BYTES,
    STREAM_TOO_DENSE,
    DecodeError,
    Event,
    new_event,
)
from cost_middleware.body.json_skip import skip_pattern

_WS = re.compile(rb"[ \t\r\n]*")
_SKIP = skip_pattern(8)
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

    The elements and the brackets the scan stops at (those nested deeper than the regex
    takes whole, or cut by a read) each cost a step of Python; a scan is held to the
    density cap in steps (see :mod:`~cost_middleware.body.events`), so a read of tiny
    elements or of deep nesting is ``stream_too_dense``.
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
        steps = PIECE_ALLOWANCE + (n - pos) // PIECE_BYTES
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
                            steps -= 1
                            if steps < 0:
                                raise DecodeError(STREAM_TOO_DENSE)
                            out.append(new_event(Event, (None, data)))
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
                    steps -= 1
                    if steps < 0:
                        raise DecodeError(STREAM_TOO_DENSE)
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
                steps -= 1
                if steps < 0:
                    raise DecodeError(STREAM_TOO_DENSE)
                out.append(new_event(Event, (None, bytes(buf[self._start : pos]))))
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
