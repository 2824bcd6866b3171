"""Incremental decompression: round trips under any chunking, bounded output, never raising."""

from __future__ import annotations

import gzip
import random
import tracemalloc
import zlib
from collections.abc import Callable, Iterable
from itertools import pairwise

import brotli
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cost_middleware.body import decompress
from cost_middleware.body.decompress import (
    BROTLI_AVAILABLE,
    BURST_BYTES,
    CORRUPT,
    MAX_RATIO,
    RATIO,
    STEP_BYTES,
    TOO_LARGE,
    UNSUPPORTED,
    Decompressor,
    make_decompressor,
)

FAST = settings(max_examples=100, deadline=None)


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


CODECS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "raw-deflate": raw_deflate,
    "br": brotli.compress,
}
ENCODING = {"raw-deflate": "deflate"}
FAST_CODECS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda data: gzip.compress(data, 1),
    "deflate": lambda data: zlib.compress(data, 1),
    "br": lambda data: bytes(brotli.compress(data, quality=1)),
}


def cut(data: bytes, points: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted({min(max(p, 0), len(data)) for p in points}), len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]


def inflate(encoding: str, chunks: Iterable[bytes], **kw: int) -> tuple[bytes, str | None]:
    d = make_decompressor(encoding, **kw)
    assert d is not None
    return b"".join(d.feed(c) for c in chunks), d.error


def test_brotli_is_installed_here() -> None:
    assert BROTLI_AVAILABLE


@FAST
@given(st.sampled_from(sorted(CODECS)), st.binary(max_size=3000) | st.just(b"data: {}\n\n" * 500),
       st.lists(st.integers(0, 6000), max_size=30))
def test_round_trip_under_any_chunking(codec: str, data: bytes, points: list[int]) -> None:
    compressed = CODECS[codec](data)
    assert inflate(ENCODING.get(codec, codec), cut(compressed, points)) == (data, None)


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_one_byte_reads(codec: str) -> None:
    data = b'{"usage": {"prompt_tokens": 12}}' * 50
    compressed = CODECS[codec](data)
    assert inflate(ENCODING.get(codec, codec), cut(compressed, range(len(compressed)))) == (
        data, None)


def test_gzip_members_and_trailing_garbage() -> None:
    body = gzip.compress(b"first ") + gzip.compress(b"second")
    assert inflate("gzip", [body]) == (b"first second", None)
    assert inflate("gzip", cut(body, range(len(body)))) == (b"first second", None)
    assert inflate("gzip", [body + b"\x00\x00junk"]) == (b"first second", None)


def test_deflate_ignores_bytes_after_the_stream() -> None:
    assert inflate("deflate", [zlib.compress(b"abc") + b"junk"]) == (b"abc", None)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_corrupt_input_sets_error_and_stops(encoding: str) -> None:
    d = make_decompressor(encoding)
    assert d is not None
    assert d.feed(b"\x1f\x8b\x08\x00 this is not compressed at all" * 3) == b""
    assert d.error == CORRUPT
    assert d.feed(gzip.compress(b"x")) == b""


@pytest.mark.parametrize("codec", ["gzip", "deflate", "br"])
def test_bomb_is_stopped_without_allocating_its_output(codec: str) -> None:
    bomb = FAST_CODECS[codec](b"\x00" * (32 << 20))
    assert len(bomb) < 200_000
    d = make_decompressor(codec, max_output_bytes=1 << 20)
    assert d is not None
    tracemalloc.start()
    try:
        out = b"".join(d.feed(c) for c in cut(bomb, range(0, len(bomb), 4096)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert d.error == TOO_LARGE
    assert len(out) <= 1 << 20
    assert peak < 8 << 20


def test_output_exactly_at_the_cap_is_allowed() -> None:
    data = b"x" * 1000
    assert inflate("gzip", [gzip.compress(data)], max_output_bytes=1000) == (data, None)
    assert inflate("gzip", [gzip.compress(data)], max_output_bytes=999)[1] == TOO_LARGE
    assert inflate("br", [brotli.compress(data)], max_output_bytes=1000) == (data, None)
    assert inflate("br", [brotli.compress(data)], max_output_bytes=999)[1] == TOO_LARGE


@pytest.mark.parametrize("value", [None, "", "identity", " Identity ", "identity, identity"])
def test_nothing_to_undo(value: str | None) -> None:
    assert make_decompressor(value) is None


@pytest.mark.parametrize("value", ["GZIP", " gzip ", "x-gzip", "gzip, identity", "Deflate"])
def test_encoding_names_are_case_and_space_insensitive(value: str) -> None:
    d = make_decompressor(value)
    assert d is not None and d.error is None


@pytest.mark.parametrize("value", ["gzip, br", "br,gzip", "zstd", "compress", "x-unknown"])
def test_unsupported_and_stacked_encodings(value: str) -> None:
    d = make_decompressor(value)
    assert isinstance(d, Decompressor)
    assert d.error == UNSUPPORTED
    assert d.feed(gzip.compress(b"x")) == b""


def test_brotli_unavailable_returns_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decompress, "BROTLI_AVAILABLE", False)
    assert make_decompressor("br") is None
    assert make_decompressor("gzip") is not None


def test_empty_reads() -> None:
    d = make_decompressor("gzip")
    assert d is not None
    assert d.feed(b"") == b""
    assert b"".join(d.feed(c) for c in (b"", gzip.compress(b"abc"), b"")) == b"abc"


@FAST
@given(st.sampled_from(["gzip", "deflate", "br"]), st.lists(st.binary(max_size=200), max_size=10))
def test_arbitrary_bytes_never_raise(encoding: str, chunks: list[bytes]) -> None:
    d = make_decompressor(encoding, max_output_bytes=1 << 16)
    assert d is not None
    for chunk in chunks:
        assert len(d.feed(chunk)) <= 1 << 16
    assert d.error in (None, CORRUPT, TOO_LARGE)


# -- the ratio limit: what one read can make us inflate ----------------------------------------

READ = 64 << 10
#: An event stream as providers send it: the same envelope, a word of text per event. Real
#: streams inflate 5-30x; this one about 30x.
WORDS = [bytes(random.Random(i).choices(b"abcdefghijklmnopqrstuvwxyz", k=1 + i % 9))
         for i in range(500)]
LEGIT = b"".join(b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,'
                 b'"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"%s "}}]}\n\n'
                 % WORDS[random.Random(n).randrange(500)] for n in range(60_000))


def bomb(codec: str, size: int = 64 << 20) -> bytes:
    """``size`` bytes of one repeated event, compressed as tightly as the codec can."""
    if codec == "br":
        return bytes(brotli.compress(LEGIT[:200] * (size // 200), quality=5))
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS if codec == "gzip" else 15)
    block = LEGIT[:200] * 5000
    return b"".join(packer.compress(block) for _ in range(size // len(block))) + packer.flush()


def feed_reads(d: Decompressor, data: bytes, read: int = READ) -> tuple[int, int]:
    """Bytes out, and the most one read produced, until an error (or the end)."""
    total = most = 0
    for start in range(0, len(data), read):
        out = len(d.feed(data[start:start + read]))
        total += out
        most = max(most, out)
        if d.error is not None:
            break
    return total, most


@pytest.mark.parametrize("codec", ["gzip", "deflate", "br"])
def test_a_bomb_stops_at_the_ratio_within_its_first_reads(codec: str) -> None:
    data = bomb(codec)
    d = make_decompressor(codec, max_output_bytes=1 << 30)
    assert d is not None
    tracemalloc.start()
    try:
        total, _ = feed_reads(d, data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert d.error == RATIO
    # Inflated, then dropped: the burst, what the input consumed earned, a step or two of
    # overshoot (brotli may pass its limit by up to the limit again).
    assert total == 0
    assert peak < BURST_BYTES + MAX_RATIO * READ + 4 * STEP_BYTES


@pytest.mark.parametrize("codec", ["gzip", "br"])
def test_credit_saved_by_incompressible_input_does_not_pay_for_a_bomb(codec: str) -> None:
    # 4 MB of noise earns 400 MB of credit at the ratio; only the savings allowed may be kept
    # (brotli's include its window, by which its output may lag).
    noise = random.Random(3).randbytes(4 << 20)
    if codec == "br":
        data = bytes(brotli.compress(noise + LEGIT[:200] * (300 << 10), quality=1))
        savings = BURST_BYTES + decompress.BROTLI_WINDOW_BYTES
    else:
        data = gzip.compress(noise, 1) + bomb("gzip")
        savings = BURST_BYTES
    d = make_decompressor(codec, max_output_bytes=1 << 30)
    assert d is not None
    most = 0
    for start in range(0, len(data), READ):
        read = data[start:start + READ]
        most = max(most, len(d.feed(read)) - MAX_RATIO * len(read))
        if d.error is not None:
            break
    assert d.error == RATIO
    assert most <= savings + 2 * STEP_BYTES


@pytest.mark.parametrize("codec", sorted(FAST_CODECS))
@pytest.mark.parametrize("read", [7, READ, 1 << 20])
def test_real_streams_are_well_within_the_ratio(codec: str, read: int) -> None:
    data = FAST_CODECS[codec](LEGIT)
    assert len(LEGIT) > 4 * BURST_BYTES and len(LEGIT) / len(data) > 10
    d = make_decompressor(codec, max_output_bytes=1 << 30)
    assert d is not None
    out = b"".join(d.feed(data[i:i + read]) for i in range(0, len(data), read))
    assert d.error is None and out == LEGIT


def test_a_call_never_returns_more_than_a_step(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = zlib.decompressobj

    class Spy:
        def __init__(self, wbits: int) -> None:
            self._obj = real(wbits)

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            out = self._obj.decompress(data, max_length)
            calls.append(len(out))
            return out

        def __getattr__(self, name: str) -> object:
            return getattr(self._obj, name)

    monkeypatch.setattr(zlib, "decompressobj", Spy)
    d = make_decompressor("gzip", max_output_bytes=1 << 30)
    assert d is not None
    assert d.feed(gzip.compress(LEGIT)) == LEGIT
    assert max(calls) <= STEP_BYTES and len(calls) >= len(LEGIT) // STEP_BYTES
