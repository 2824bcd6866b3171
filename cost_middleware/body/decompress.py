"""Incremental decompression of response bodies for inspection (the bytes sent stay as they are).

``make_decompressor(content_encoding)`` returns None when there is nothing to undo (no encoding,
``identity``) and when the encoding is ``br`` but no usable ``brotli`` module is installed
(:data:`BROTLI_AVAILABLE` tells the two apart). Otherwise it returns a :class:`Decompressor`
whose ``feed`` never raises: corrupt input, an unsupported or stacked encoding, output over
``max_output_bytes``, or output out of proportion to the input set ``error``, and everything
after is ignored.

What one read can make us inflate is bounded while it is produced (never decompressed first
and measured after), by three limits:

* each decompressor call returns at most :data:`STEP_BYTES` (zlib's ``max_length``, the rest
  waiting in ``unconsumed_tail``; brotli's ``output_buffer_limit``, which it may overshoot
  by up to the limit again), so no call allocates more;
* a ratio: every input byte earns :data:`MAX_RATIO` bytes of output and every output byte
  spends one, on top of a :data:`BURST_BYTES` allowance that is also the most low-ratio input
  can save up for later (``decompress_ratio``). zlib reports the input each call consumed,
  and its output never lags its input by more than its 32 KiB window: a read inflates at
  most ``BURST_BYTES + MAX_RATIO x`` its size, and a bomb is stopped within its first
  megabytes, however it is cut into reads. brotli buffers input itself, so it is given
  :data:`BROTLI_SLICE` bytes at a time and earns their share up front; and its output comes
  in bursts up to its window (a 4 KiB read of a real stream can yield 3.5 MB), so it may
  save up :data:`BROTLI_WINDOW_BYTES` more: the documented bound of one brotli read is that
  much on top of the zlib one;
* ``max_output_bytes`` for the whole body (``decompressed_too_large``).
"""

from __future__ import annotations

import zlib
from typing import Any

try:
    import brotli as _brotli
except ImportError:  # optional extra: cost-middleware[brotli]
    _brotli = None

#: ``brotli`` >= 1.2 can bound its output per call; older versions could not stop a bomb.
BROTLI_AVAILABLE: bool = _brotli is not None and hasattr(
    _brotli.Decompressor, "can_accept_more_data"
)

_CODEC_ERRORS: tuple[type[Exception], ...] = (
    (zlib.error,) if _brotli is None else (zlib.error, _brotli.error)
)

DEFAULT_MAX_OUTPUT_BYTES = 64 << 20
#: Output of one decompressor call.
STEP_BYTES = 256 << 10
#: Output bytes one input byte earns. Provider bodies and streams inflate 5-30x (repetitive
#: event streams the most); a bomb inflates 250-1000x.
MAX_RATIO = 100
#: Output allowed beyond the ratio: all a small body needs, and the most a read can inflate
#: on credit saved by earlier ones.
BURST_BYTES = 1 << 20
#: Input handed to brotli per call, since it does not tell how much of it each call used.
BROTLI_SLICE = 8 << 10
#: How far brotli's output may lag its input: the largest window HTTP streams use (2^24).
BROTLI_WINDOW_BYTES = 16 << 20

UNSUPPORTED = "unsupported_encoding"
TOO_LARGE = "decompressed_too_large"
RATIO = "decompress_ratio"
CORRUPT = "decompress_failed"

_GZIP_WBITS = 16 + zlib.MAX_WBITS
_RAW_WBITS = -zlib.MAX_WBITS


class Decompressor:
    """Undoes one content coding, chunk by chunk.

    This base class is the decompressor of an encoding we cannot undo: it is born with
    ``error`` set and yields nothing.
    """

    #: The most credit the ratio lets a decoder save up.
    _SAVINGS = BURST_BYTES

    def __init__(self, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> None:
        self.error: str | None = UNSUPPORTED
        #: Output still allowed before the cap.
        self._left = max_output_bytes
        #: Output the ratio still allows.
        self._credit = BURST_BYTES

    def feed(self, chunk: bytes) -> bytes:
        """The decompressed bytes ``chunk`` completes (b"" after an error)."""
        if self.error is not None or not chunk:
            return b""
        try:
            out = self._decompress(chunk)
        except _CODEC_ERRORS:
            self.error = CORRUPT
            return b""
        if self.error is not None:
            return b""
        if self._credit > self._SAVINGS:
            self._credit = self._SAVINGS
        return out

    def _decompress(self, chunk: bytes) -> bytes:
        return b""

    def _take(self, piece: bytes, earned: int) -> bool:
        """Count ``piece``, made from input that earned ``earned`` bytes; False (and ``error``
        set) once a limit is exceeded."""
        size = len(piece)
        self._left -= size
        self._credit += earned - size
        if self._left < 0:
            self.error = TOO_LARGE
        elif self._credit < 0:
            self.error = RATIO
        else:
            return True
        return False

    def _limit(self) -> int:
        """The output limit of the next call: one byte over the cap means it is exceeded, so
        nothing is ever left waiting inside a decoder on a body we keep reading."""
        return STEP_BYTES if self._left >= STEP_BYTES else self._left + 1


class _Zlib(Decompressor):
    """gzip (also several concatenated members) and deflate, zlib-wrapped or raw."""

    def __init__(self, gzip: bool, max_output_bytes: int) -> None:
        super().__init__(max_output_bytes)
        self.error = None
        self._gzip = gzip
        #: None between streams: before the first, and between gzip members.
        self._obj: Any = None
        #: The first byte of a stream, held until the second one arrives.
        self._head = b""
        self._started = False
        #: Input after the end of the body (after deflate's one stream, or gzip trailing
        #: garbage) is ignored, as gzip readers do.
        self._ended = False

    def _decompress(self, chunk: bytes) -> bytes:
        out: list[bytes] = []
        data = self._head + chunk
        self._head = b""
        while not self._ended:
            obj = self._obj
            if obj is None:
                if len(data) < 2:
                    self._head = data
                    break
                if self._gzip:
                    if self._started and data[:2] != b"\x1f\x8b":
                        self._ended = True
                        break
                    wbits = _GZIP_WBITS
                else:
                    wbits = zlib.MAX_WBITS if _is_zlib_header(data) else _RAW_WBITS
                obj = self._obj = zlib.decompressobj(wbits)
                self._started = True
            limit = self._limit()
            piece = obj.decompress(data, limit)
            rest = obj.unused_data if obj.eof else obj.unconsumed_tail
            if not self._take(piece, MAX_RATIO * (len(data) - len(rest))):
                return b""
            out.append(piece)
            if obj.eof:
                if not self._gzip:
                    self._ended = True
                    break
                self._obj = None
            elif len(piece) < limit:
                break  # all input used, nothing pending
            # Else the limit stopped the call: the rest of the input, or output still pending.
            data = rest
        return out[0] if len(out) == 1 else b"".join(out)


def _is_zlib_header(head: bytes) -> bool:
    """RFC 1950: method 8 (deflate), window <= 32K, and the 16-bit header is a multiple of 31."""
    cmf, flg = head[0], head[1]
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0


class _Brotli(Decompressor):
    _SAVINGS = BURST_BYTES + BROTLI_WINDOW_BYTES

    def __init__(self, max_output_bytes: int) -> None:
        super().__init__(max_output_bytes)
        self.error = None
        self._obj: Any = _brotli.Decompressor()

    def _decompress(self, chunk: bytes) -> bytes:
        obj = self._obj
        out: list[bytes] = []
        for start in range(0, len(chunk), BROTLI_SLICE):
            data = chunk[start : start + BROTLI_SLICE]
            limit = self._limit()
            piece: bytes = obj.process(data, output_buffer_limit=limit)
            earned = MAX_RATIO * len(data)
            while True:
                if not self._take(piece, earned):
                    return b""
                out.append(piece)
                # A call that reached its limit may have more: brotli gives it to calls
                # without input, and takes no input before it is out.
                if not piece or (len(piece) < limit and obj.can_accept_more_data()):
                    break
                earned = 0
                limit = self._limit()
                piece = obj.process(b"", output_buffer_limit=limit)
        return out[0] if len(out) == 1 else b"".join(out)


def make_decompressor(
    content_encoding: str | None, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
) -> Decompressor | None:
    """A decompressor for a ``Content-Encoding`` value, or None when none is needed or
    ``br`` cannot be undone here (``BROTLI_AVAILABLE`` is False)."""
    tokens = (t.strip() for t in (content_encoding or "").lower().split(","))
    codings = [t for t in tokens if t and t != "identity"]
    if not codings:
        return None
    if len(codings) > 1:
        # Stacked codings are legal but unseen from providers; not worth the code.
        return Decompressor(max_output_bytes)
    coding = codings[0]
    if coding in ("gzip", "x-gzip"):
        return _Zlib(True, max_output_bytes)
    if coding == "deflate":
        return _Zlib(False, max_output_bytes)
    if coding == "br":
        return _Brotli(max_output_bytes) if BROTLI_AVAILABLE else None
    return Decompressor(max_output_bytes)
