"""CPU cost of the incremental decoders and of decompression.

Run: ``python benchmarks/bench_decoders.py [--quick]``. Prints, per case, the best of several
repeats (the machine is shared, so the minimum is the figure least disturbed by others).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import zlib
from collections.abc import Callable
from pathlib import Path
from time import perf_counter

import orjson
from common import network_reads

from cost_middleware.body.decompress import BROTLI_AVAILABLE, make_decompressor
from cost_middleware.body.events import Event
from cost_middleware.body.eventstream import EventStreamDecoder
from cost_middleware.body.json_array import JSONArrayDecoder
from cost_middleware.body.ndjson import NDJSONDecoder
from cost_middleware.body.sse_decoder import SSEDecoder
from cost_middleware.body.sse_tail import SSETail

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "corpus"
EVENTS = 100


def openai_chat_events(count: int = EVENTS, seed: int = 1) -> list[bytes]:
    """An OpenAI chat stream of ``count`` events ending with a usage chunk, as SSE ``data:``
    payloads (the last is ``[DONE]``); the content deltas are random words."""
    rng = random.Random(seed)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9)))
             for _ in range(500)]
    head = {"id": "chatcmpl-C1ho3wPb6ZgT9kMe2rVy5Hq8Ja0", "object": "chat.completion.chunk",
            "created": 1754470111, "model": "gpt-4o-mini-2024-07-18",
            "service_tier": "default", "system_fingerprint": "fp_7e31a2c9d4"}
    events = []
    for i in range(count - 2):
        delta = {"role": "assistant", "content": ""} if i == 0 else {
            "content": " " + rng.choice(words)}
        events.append({**head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                            "finish_reason": None}], "usage": None})
    events.append({**head, "choices": [], "usage": {
        "prompt_tokens": 2210, "completion_tokens": count - 2, "total_tokens": 2208 + count,
        "prompt_tokens_details": {"cached_tokens": 2048, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}})
    return [json.dumps(e, separators=(",", ":")).encode() for e in events] + [b"[DONE]"]


def best_of(run: Callable[[], object], loops: int, repeats: int = 60) -> float:
    """Seconds per call, best of ``repeats`` timings of ``loops`` calls (many short timings
    catch the quiet moments of a shared machine)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = perf_counter()
        for _ in range(loops):
            run()
        best = min(best, (perf_counter() - t0) / loops)
    return best


def decode_all(factory: Callable[[], SSEDecoder | NDJSONDecoder | JSONArrayDecoder
                                  | EventStreamDecoder], reads: list[bytes]) -> Callable[[], int]:
    def run() -> int:
        decoder = factory()
        n = 0
        for read in reads:
            n += len(decoder.feed(read))
        return n + len(decoder.close())

    return run


def inflate_all(coding: str, reads: list[bytes]) -> Callable[[], int]:
    def run() -> int:
        d = make_decompressor(coding)
        return sum(len(d.feed(c)) for c in reads) if d is not None else 0

    return run


def tail_all(reads: list[bytes]) -> Callable[[], int]:
    """An OpenAI-style stream kept as a raw tail, its last 8 events decoded at the end."""

    def run() -> int:
        tail = SSETail(b"\n\n", 8)
        for read in reads:
            tail.feed(read)
        return len(tail.events())

    return run


def report(label: str, run: Callable[[], int], body_len: int, loops: int,
           events: int | None = None) -> None:
    """``events``: the stream's events, when ``run`` returns only those it kept."""
    events = events or run()
    seconds = best_of(run, loops)
    print(f"{label:<46} {events:>4} events {seconds * 1e6:8.1f} µs/stream "
          f"{seconds * 1e6 / events:6.3f} µs/event {seconds * 1e9 / body_len:6.2f} ns/byte")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer loops")
    loops = 5 if parser.parse_args().quick else 20

    payloads = openai_chat_events()
    sse = b"".join(b"data: " + p + b"\n\n" for p in payloads)

    def floor() -> int:
        """Machine-speed anchor: the least any decoder must do (split, one Event per payload)."""
        return len([Event(None, block[6:]) for block in sse.split(b"\n\n")[:-1]])

    report("reference: split + Event() per payload", floor, len(sse), loops)
    report("SSE openai, 1-4 KB reads", decode_all(SSEDecoder, network_reads(sse)), len(sse), loops)
    reads = network_reads(sse)

    def sse_and_json() -> int:
        decoder = SSEDecoder()
        n = 0
        for read in reads:
            for event in decoder.feed(read):
                if event.data != b"[DONE]":
                    orjson.loads(event.data)
                n += 1
        return n

    report("  same + orjson.loads of every payload", sse_and_json, len(sse), loops)
    report("SSE openai, one event per read",
           decode_all(SSEDecoder, [b"data: " + p + b"\n\n" for p in payloads]), len(sse), loops)
    report("SSE openai, one event per read, CRLF",
           decode_all(SSEDecoder, [b"data: " + p + b"\r\n\r\n" for p in payloads]),
           len(sse) + 2 * len(payloads), loops)
    report("SSE openai as a raw tail, one event per read",
           tail_all([b"data: " + p + b"\n\n" for p in payloads]), len(sse), loops, EVENTS)
    report("SSE openai as a raw tail, 1-4 KB reads", tail_all(network_reads(sse)), len(sse),
           loops, EVENTS)
    names = ["message_start"] + ["content_block_delta"] * (EVENTS - 2) + ["message_delta"]
    named = b"".join(b"event: " + n.encode() + b"\ndata: " + p + b"\n\n"
                     for n, p in zip(names, payloads, strict=True))
    report("SSE named events (Anthropic shape), 1-4 KB", decode_all(SSEDecoder,
           network_reads(named)), len(named), loops)
    usage_events = frozenset({"message_start", "message_delta", "message_stop", "error"})
    report("  same, keeping only the usage events", decode_all(
           lambda: SSEDecoder(keep=usage_events), network_reads(named)), len(named), loops,
           EVENTS)
    report("SSE openai, 64-byte reads", decode_all(SSEDecoder, network_reads(sse, 64, 64)),
           len(sse), max(loops // 4, 1))

    ndjson = b"".join(p + b"\n" for p in payloads[:-1])
    report("NDJSON, 1-4 KB reads", decode_all(NDJSONDecoder, network_reads(ndjson)),
           len(ndjson), loops)
    report("NDJSON, one line per read",
           decode_all(NDJSONDecoder, [p + b"\n" for p in payloads[:-1]]), len(ndjson), loops)

    gemini = json.loads((FIXTURES / "gemini_generate.json").read_bytes())
    element = json.dumps(gemini, indent=2).encode()
    array = b"[" + b",\r\n".join([element] * EVENTS) + b"]"
    report("JSON array (Gemini shape, indented), 1-4 KB",
           decode_all(JSONArrayDecoder, network_reads(array)), len(array), max(loops // 4, 1))
    report("JSON array (Gemini shape, indented), one read",
           decode_all(JSONArrayDecoder, [array]), len(array), max(loops // 4, 1))
    compact = json.dumps(gemini, separators=(",", ":")).encode()
    array = b"[" + b",\r\n".join([compact] * EVENTS) + b"]"
    report("JSON array (Gemini shape, compact), 1-4 KB",
           decode_all(JSONArrayDecoder, network_reads(array)), len(array), max(loops // 4, 1))

    messages = (FIXTURES / "bedrock_converse_stream.eventstream").read_bytes()
    stream = messages * (EVENTS // 7 + 1)
    report("event-stream (Bedrock), 1-4 KB reads",
           decode_all(EventStreamDecoder, network_reads(stream)), len(stream), loops)

    # Decompression of a 4,000-event stream (about 1.2 MB) read in 4 KB pieces.
    body = b"".join(b"data: " + p + b"\n\n" for p in openai_chat_events(4000))
    codecs: dict[str, Callable[[bytes], bytes]] = {"gzip": gzip.compress,
                                                   "deflate": zlib.compress}
    if BROTLI_AVAILABLE:
        import brotli

        codecs["br"] = brotli.compress
    for coding, compress in codecs.items():
        compressed = compress(body)
        seconds = best_of(inflate_all(coding, network_reads(compressed, 4096, 4096)), 1,
                          max(loops, 10))
        print(f"{coding:<8} {len(body) / seconds / 1e6:8.0f} MB/s of output "
              f"({len(compressed)} -> {len(body)} bytes in 4 KB reads)")

if __name__ == "__main__":
    main()
