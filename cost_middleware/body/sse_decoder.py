"""``text/event-stream`` framing: raw reads to SSE events, per the WHATWG rules, on bytes."""

from __future__ import annotations

from enum import Enum
from typing import Final

from cost_middleware.body.events import (
    DEFAULT_MAX_EVENT_BYTES,
    NAME_CACHE_LIMIT,
    PIECE_BYTES,
    SSE_TOO_LARGE,
    STREAM_TOO_DENSE,
    DecodeError,
    Delimited,
    Event,
    new_event,
)

_BOM = b"\xef\xbb\xbf"
#: Longest ``event:`` value whose meaning is cached.
_CACHEABLE_NAME = 128
#: Reads shorter than this (about 20 small named events) are framed block by block, which
#: costs less there than :meth:`SSEDecoder._named`.
_NAMED_MIN_BYTES = 2048
#: Distinct ``keep`` sets whose name tables are shared (families use a few constant sets).
_SHARED_TABLES = 16
#: Blocks a read may hold beyond the density cap's one per ``PIECE_BYTES`` (see ``events``):
#: a block that is no event (a comment, an ``id:`` line, a blank run) costs a fraction of a
#: microsecond, so reads of many of them are fine up to this many (``stream_too_dense``).
_BLOCK_ALLOWANCE = 2048
#: Lines a block parsed line by line may have, plus one per ``_LINE_BYTES`` of it, so that
#: a block of many short lines cannot cost a line visit per two bytes (``stream_too_dense``).
_BLOCK_LINES = 4
_LINE_BYTES = 16


class _Dropped(Enum):
    DROPPED = 0


#: What an ``event:`` value stands for when ``keep`` leaves its name out.
_DROPPED: Final = _Dropped.DROPPED


class _Names(dict[bytes, str | _Dropped | None]):
    """What each ``event:`` value means to decoders that keep ``keep``: a name, or _DROPPED.

    This is the one place where an event's name is decoded and judged, so framing a named
    event costs one lookup. A table is shared by all decoders with the same ``keep``, filled
    as values are first seen and bounded like the other name caches (past the bound a value
    is judged each time).
    """

    __slots__ = ("keep",)

    def __init__(self, keep: frozenset[str] | None) -> None:
        super().__init__()
        self.keep = keep

    def __missing__(self, raw: bytes) -> str | _Dropped | None:
        # An empty ``event:`` means the default type, reported as None like a missing field;
        # events without a name are always kept.
        name = raw.decode("utf-8", "replace") if raw else None
        keep = self.keep
        value = _DROPPED if keep is not None and name is not None and name not in keep else name
        if len(raw) <= _CACHEABLE_NAME and len(self) < NAME_CACHE_LIMIT:
            self[raw] = value
        return value


class _Tables(dict[frozenset[str] | None, _Names]):
    """The shared :class:`_Names` tables, by ``keep`` set, made when first asked for."""

    __slots__ = ()

    def __missing__(self, keep: frozenset[str] | None) -> _Names:
        names = _Names(keep)
        if len(self) < _SHARED_TABLES:
            self[keep] = names
        return names


_tables = _Tables()


class SSEDecoder(Delimited):
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

    __slots__ = ("_cr", "_first", "_names")
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
        self._names = _tables[keep]

    @property
    def keep(self) -> frozenset[str] | None:
        """Names of the events to return (None: all); others are dropped before anything is
        built for them. Events without a name are always returned. May change between reads."""
        return self._names.keep

    @keep.setter
    def keep(self, keep: frozenset[str] | None) -> None:
        if keep is not self._names.keep:
            self._names = _tables[keep]

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
                return [new_event(Event, (None, data[6:-2]))]
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
                        return [new_event(Event, (None, p)) for p in pieces]
                    del pieces[-1]
                    out = [new_event(Event, (None, p)) for p in pieces]
                    data = b"data: " + last
        elif data[:7] == b"event: " and len(data) <= self._max:
            # One ``event:`` + ``data:`` event per read: what servers of named events write.
            first_break = data.find(b"\n")
            end = len(data) - 2
            if (data.find(b"\n", first_break + 1) == end and data[-1] == 10
                    and data[first_break + 1 : first_break + 7] == b"data: "):
                self._first = False
                name = self._names[data[7:first_break]]
                if name is _DROPPED:
                    return out
                return [new_event(Event, (name, data[first_break + 7 : end]))]
            keep = self._names.keep
            if keep is not None and len(data) >= _NAMED_MIN_BYTES:
                named = self._named(data, keep)
                if named is not None:
                    return named
        blocks = data.split(b"\n\n")
        self._keep(blocks.pop())
        if len(blocks) > _BLOCK_ALLOWANCE + len(data) // PIECE_BYTES:
            self._fail(dense=True)
            return out
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
        names = _tables[keep]
        wanted = []
        for head in set(heads):
            if head[:7] != b"event: ":
                return None
            if names[head[7:]] is not _DROPPED:
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
        names = self._names
        try:
            for block in blocks:
                # A block is measured with the line end of its last line (>=), as the held
                # tail may already include it: results never depend on where reads were cut.
                if check_size and len(block) >= self._max:
                    self._fail()
                    return
                # Fast paths: a lone ``data:`` line, and ``event:`` + ``data:`` (Anthropic,
                # OpenAI Responses, Cohere).
                if block[:6] == b"data: ":
                    if 10 not in block:
                        append(new_event(Event, (None, block[6:])))
                        continue
                elif block[:7] == b"event: ":
                    head, sep, payload = block.partition(b"\ndata: ")
                    if sep and 10 not in payload and 10 not in head:
                        name = names[head[7:]]
                        if name is not _DROPPED:
                            append(new_event(Event, (name, payload)))
                        continue
                if b"data" not in block:
                    continue  # comments, ``id:``, blank runs: no event, and cheap to pass
                event = _block_event(block, names)
                if event is not None:
                    append(event)
        except DecodeError:  # only raised for too many lines
            self._fail(dense=True)


def _block_event(block: bytes, names: _Names) -> Event | None:
    """The event of one block, parsed line by line by the spec's rules (None: no event, or
    one whose name ``names`` drops); :class:`DecodeError` when it has too many lines."""
    name: str | _Dropped | None = None
    data: list[bytes] = []
    lines = block.split(b"\n")
    if len(lines) > _BLOCK_LINES + len(block) // _LINE_BYTES:
        raise DecodeError(STREAM_TOO_DENSE)
    for line in lines:
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
            name = names[value]
    if not data or name is _DROPPED:
        return None
    return new_event(Event, (name, b"\n".join(data)))
