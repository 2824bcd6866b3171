"""A whole (non-streamed) body, collected for parsing at its end, or only its two ends."""

from __future__ import annotations

from collections import deque

from cost_middleware.body.events import BODY_TOO_LARGE, DEFAULT_MAX_EVENT_BYTES

#: Bytes kept of each end of a body over the cap (see :mod:`~cost_middleware.body.stitch`).
#: A provider's shape, model and usage sit within its first and last few kilobytes; this
#: leaves room for long echoed instructions or tool lists, and parsing the joined ends
#: stays well under a millisecond.
END_BYTES = 256 << 10


class BodyBuffer:
    """A whole (non-streamed) body, collected up to ``max_bytes``.

    ``close()`` returns the body, or None once it went over the cap (``error`` is then
    ``body_too_large`` and no more of it is kept). When the cap leaves room for both ends
    (``max_bytes >= 2 * END_BYTES``, see :attr:`keeps_ends`), a body over it keeps its first
    and last ``END_BYTES`` instead, in ``ends``: per read, the tail costs an append and, now
    and then, dropping its oldest read.
    """

    __slots__ = ("_chunks", "_head", "_max", "_size", "_tail", "_tail_size", "error")

    def __init__(self, max_bytes: int = 8 * DEFAULT_MAX_EVENT_BYTES) -> None:
        self.error: str | None = None
        self._max = max_bytes
        self._chunks: list[bytes] = []
        self._size = 0
        #: Once over the cap with ends kept: the first ``END_BYTES``, and the last reads.
        self._head: bytes | None = None
        self._tail: deque[bytes] = deque()
        self._tail_size = 0

    def cap(self, max_bytes: int) -> None:
        """Hold at most ``max_bytes`` instead (before the first read: one buffer per body)."""
        if self._size or self.error is not None:  # a body over the cap is read too
            raise RuntimeError("a body buffer's cap is set before its first read")
        self._max = max_bytes

    @property
    def keeps_ends(self) -> bool:
        """A body over the cap keeps its ends (the cap is large enough for them)."""
        return self._max >= 2 * END_BYTES

    @property
    def buffered(self) -> int:
        return self._size

    @property
    def ends(self) -> tuple[bytes, bytes] | None:
        """The first and last ``END_BYTES`` of a body over the cap, when kept."""
        if self._head is None:
            return None
        tail = b"".join(self._tail)
        return self._head, tail[-END_BYTES:]

    def feed(self, chunk: bytes) -> None:
        if self.error is not None:
            if self._head is not None:
                self._keep_tail(chunk)
            return
        self._size += len(chunk)
        chunks = self._chunks
        if self._size > self._max:
            self.error = BODY_TOO_LARGE
            if self.keeps_ends:
                chunks.append(chunk)
                self._head = _first(chunks, END_BYTES)
                for part in _last(chunks, END_BYTES):
                    self._keep_tail(part)
            self._chunks = []
            self._size = 0
            return
        chunks.append(chunk)

    def close(self) -> bytes | None:
        if self.error is not None:
            return None
        body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks = []
        self._size = 0
        return body

    def _keep_tail(self, chunk: bytes) -> None:
        """Append ``chunk`` to the tail, dropping reads no longer among its last bytes."""
        tail = self._tail
        if len(chunk) >= END_BYTES:
            tail.clear()
            chunk = chunk[-END_BYTES:]
            self._tail_size = 0
        tail.append(chunk)
        self._tail_size += len(chunk)
        while self._tail_size - len(tail[0]) >= END_BYTES:
            self._tail_size -= len(tail.popleft())


def _first(chunks: list[bytes], size: int) -> bytes:
    """The first ``size`` bytes of ``chunks``, joining only the reads they span."""
    taken = 0
    for count, chunk in enumerate(chunks, 1):
        taken += len(chunk)
        if taken >= size:
            return b"".join(chunks[:count])[:size]
    return b"".join(chunks)[:size]


def _last(chunks: list[bytes], size: int) -> list[bytes]:
    """The fewest last reads of ``chunks`` that hold their last ``size`` bytes."""
    taken = 0
    for count, chunk in enumerate(reversed(chunks), 1):
        taken += len(chunk)
        if taken >= size:
            return chunks[-count:]
    return chunks
