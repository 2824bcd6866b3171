"""Incremental decompression of response bodies for inspection (the bytes sent stay as they are).

``make_decompressor(content_encoding)`` returns None when there is nothing to undo (no encoding,
``identity``) and when the encoding is ``br`` but no usable ``brotli`` module is installed
(:data:`BROTLI_AVAILABLE` tells the two apart). Otherwise it returns a :class:`Decompressor`
whose ``feed`` never raises: corrupt input, an unsupported or stacked encoding, or output over
``max_output_bytes`` set ``error`` and everything after is ignored.

Output is bounded while it is produced (never decompressed first and measured after), so a
small bomb cannot allocate more than the cap.
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

UNSUPPORTED = "unsupported_encoding"
TOO_LARGE = "decompressed_too_large"
CORRUPT = "decompress_failed"

_GZIP_WBITS = 16 + zlib.MAX_WBITS
_RAW_WBITS = -zlib.MAX_WBITS


class Decompressor:
    """Undoes one content coding, chunk by chunk.

    This base class is the decompressor of an encoding we cannot undo: it is born with
    ``error`` set and yields nothing.
    """

    def __init__(self, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> None:
        self.error: str | None = UNSUPPORTED
        #: Output still allowed before the cap.
        self._left = max_output_bytes

    def feed(self, chunk: bytes) -> bytes:
        """The decompressed bytes ``chunk`` completes (b"" after an error)."""
        if self.error is not None or not chunk:
            return b""
        try:
            out = self._decompress(chunk)
        except _CODEC_ERRORS:
            self.error = CORRUPT
            return b""
        if self._left < 0:
            self.error = TOO_LARGE
            return b""
        return out

    def _decompress(self, chunk: bytes) -> bytes:
        return b""

    def _take(self, piece: bytes) -> bool:
        """Count ``piece`` against the cap; False once it is exceeded."""
        self._left -= len(piece)
        return self._left >= 0


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
        while data and not self._ended:
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
            # A limit of one byte over the cap: output reaching it means the cap was exceeded,
            # so input is never left waiting in ``unconsumed_tail`` on a body we keep reading.
            # zlib grows its output buffer as it writes, so the limit is not an allocation.
            piece = obj.decompress(data, self._left + 1)
            if not self._take(piece):
                return b""
            out.append(piece)
            data = b""
            if obj.eof:
                if self._gzip:
                    data = obj.unused_data
                    self._obj = None
                else:
                    self._ended = True
        return out[0] if len(out) == 1 else b"".join(out)


def _is_zlib_header(head: bytes) -> bool:
    """RFC 1950: method 8 (deflate), window <= 32K, and the 16-bit header is a multiple of 31."""
    cmf, flg = head[0], head[1]
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0


class _Brotli(Decompressor):
    def __init__(self, max_output_bytes: int) -> None:
        super().__init__(max_output_bytes)
        self.error = None
        self._obj: Any = _brotli.Decompressor()

    def _decompress(self, chunk: bytes) -> bytes:
        # As for zlib: output reaching the limit (brotli may overshoot it by one block) means
        # the cap is exceeded, so no output is ever left pending inside the decoder.
        piece: bytes = self._obj.process(chunk, output_buffer_limit=self._left + 1)
        return piece if self._take(piece) else b""


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
