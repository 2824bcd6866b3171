"""AWS ``application/vnd.amazon.eventstream`` framing (Bedrock streams)."""

from __future__ import annotations

import struct
import zlib

from cost_middleware.body.events import (
    DEFAULT_MAX_EVENT_BYTES,
    EVENTSTREAM_CRC,
    EVENTSTREAM_FRAMING,
    EVENTSTREAM_TOO_LARGE,
    NAME_CACHE_LIMIT,
    PIECE_ALLOWANCE,
    PIECE_BYTES,
    STREAM_TOO_DENSE,
    DecodeError,
    Event,
    new_event,
)

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
    if len(block) <= _CACHEABLE_HEADERS and len(_eventstream_names) < NAME_CACHE_LIMIT:
        _eventstream_names[block] = name
    return name


class EventStreamDecoder:
    """AWS ``application/vnd.amazon.eventstream`` (Bedrock streams).

    A message is: total length, headers length (u32 BE each), CRC32 of those 8 bytes, the
    headers, the payload, and a CRC32 of everything before it. Both CRCs are checked. The event
    name is ``:event-type``; exception frames are named ``exception:<:exception-type>`` and
    error frames ``error:<:error-code>`` (untrusted text: sanitise before logging).
    A length over ``max_event_bytes`` is refused from the prelude, before anything is buffered.
    A read of more messages than the density cap allows (see
    :mod:`~cost_middleware.body.events`) is ``stream_too_dense``.
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
        budget = PIECE_ALLOWANCE + n // PIECE_BYTES
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
            out.append(new_event(Event, (name, data[payload_start : end - 4])))
            if len(out) > budget:
                raise DecodeError(STREAM_TOO_DENSE)
            off = end
        return off
