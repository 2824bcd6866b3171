"""The ASGI adapter: bytes untouched, usage exact under any chunking, records stored."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from asgi_lifespan import LifespanManager
from conftest import (
    assert_usage,
    catalog_cost,
    expected_usage,
    fixture_bytes,
    fixture_chunks,
    load_expected,
    split_path,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from providers import ReplayApp, content_headers

from cost_middleware import CostMiddleware, CostRecord, Settings
from cost_middleware._types import ASGIApp, Message
from cost_middleware.schema import cost_records

ENTRIES = load_expected()
OK_ENTRIES = [e for e in ENTRIES if e["status"] < 400]
CORE = [e for e in ENTRIES if e["provider"] in ("openai", "anthropic")]


def ids(entries: Sequence[dict[str, Any]]) -> list[str]:
    return [e["file"] for e in entries]


def quiet(tmp: Path | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"statsd_enabled": False}
    if tmp is not None:
        values["database_url"] = f"sqlite:///{tmp / 'cost.db'}"
        values["spool_dir"] = str(tmp / "spool")
    values.update(overrides)
    return Settings(**values)


def collecting(app: ASGIApp, tmp: Path,
               **overrides: Any) -> tuple[CostMiddleware, list[CostRecord]]:
    """A middleware whose records are collected in a list instead of queued."""
    mw = CostMiddleware(app, quiet(tmp, **overrides))
    records: list[CostRecord] = []
    mw.tracker.record = records.append  # type: ignore[method-assign]
    return mw, records


def request_body(entry: dict[str, Any]) -> bytes:
    import orjson

    if entry.get("request_body") is not None:
        return orjson.dumps(entry["request_body"])
    body = {"model": entry.get("request_model") or entry.get("model") or "m"}
    body.update(entry.get("request_options") or {})
    return orjson.dumps(body)


async def call(app: ASGIApp, entry: dict[str, Any], body: bytes | None = None,
               headers: list[tuple[bytes, bytes]] | None = None) -> tuple[list[Message], Any]:
    path, query = split_path(entry)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": entry.get("method", "POST"), "scheme": "http", "path": path,
             "raw_path": entry["path"].partition("?")[0].encode(), "query_string": query,
             "root_path": "",
             "headers": headers if headers is not None else [(b"x-tenant-id", b"acme")],
             "client": ("127.0.0.1", 1), "server": ("test", 80)}
    payload = request_body(entry) if body is None else body
    parts = [payload[:7], payload[7:]]
    sent: list[Message] = []

    async def receive() -> Message:
        if parts:
            chunk = parts.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(parts)}
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    error = None
    try:
        await app(scope, receive, send)
    except Exception as exc:  # the app's own exception must come through unchanged
        error = exc
    return sent, error


def body_of(sent: list[Message]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def random_chunks(data: bytes, rnd: random.Random, max_size: int = 64) -> list[bytes]:
    chunks, i = [], 0
    while i < len(data):
        n = rnd.randint(1, max_size)
        chunks.append(data[i:i + n])
        i += n
    return chunks


def assert_matches(record: CostRecord, entry: dict[str, Any]) -> None:
    assert record.provider == entry["provider"]
    assert record.api == entry["api"]
    assert record.model == entry["model"]
    assert_usage(record.usage, entry)
    assert record.partial == bool(entry.get("partial"))
    assert record.streamed == bool(entry["stream"])
    assert record.status_code == entry["status"]
    assert record.tenant == "acme"


@pytest.mark.parametrize("entry", OK_ENTRIES, ids=ids(OK_ENTRIES))
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), max_size=st.sampled_from([1, 7, 64, 4096]))
def test_every_fixture_under_random_chunking(entry: dict[str, Any], seed: int, max_size: int,
                                             tmp_path: Path) -> None:
    data = fixture_bytes(entry)
    chunks = random_chunks(data, random.Random(seed), max_size)
    app = ReplayApp(chunks, entry["status"], content_headers(entry))
    mw, records = collecting(app, tmp_path)
    sent, error = asyncio.run(call(mw, entry))
    assert error is None
    assert body_of(sent) == data
    assert [m.get("body") for m in sent if m["type"] == "http.response.body"][:-1] == chunks
    assert len(records) == 1
    assert_matches(records[0], entry)


def test_recorded_network_reads_of_a_stream(tmp_path: Path) -> None:
    entry = next(e for e in ENTRIES if e.get("transport") == "chunks_b64")
    chunks = fixture_chunks(entry)
    assert chunks
    mw, records = collecting(ReplayApp(chunks, 200, content_headers(entry)), tmp_path)
    sent, _ = asyncio.run(call(mw, entry))
    assert body_of(sent) == b"".join(chunks)
    assert_matches(records[0], entry)


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e["status"] >= 400],
                         ids=ids([e for e in ENTRIES if e["status"] >= 400]))
def test_error_responses_are_skipped_and_counted(entry: dict[str, Any], tmp_path: Path) -> None:
    data = fixture_bytes(entry)
    mw, records = collecting(ReplayApp([data], entry["status"], content_headers(entry)), tmp_path,
                             statsd_enabled=True)
    sent, error = asyncio.run(call(mw, entry))
    assert error is None and body_of(sent) == data and records == []
    assert mw.tracker.metrics.snapshot()["counters"]["skipped.error_status"] == 1
    mw.tracker.metrics.close()


def test_messages_are_forwarded_unchanged_and_at_once(tmp_path: Path) -> None:
    """Each body message reaches the server before the app produces the next one."""
    entry = next(e for e in ENTRIES if e["file"] == "openai_chat_stream.sse")
    data = fixture_bytes(entry)
    events = data.split(b"\n\n")
    seen_by_server: list[bytes] = []
    order: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for event in events:
            order.append("app")
            await send({"type": "http.response.body", "body": event + b"\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    mw, records = collecting(app, tmp_path)

    async def run() -> None:
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
                 "raw_path": b"/v1/chat/completions", "query_string": b"", "headers": []}

        async def receive() -> Message:
            return {"type": "http.request", "body": b"{}"}

        async def send(message: Message) -> None:
            order.append("server")
            if message["type"] == "http.response.body":
                seen_by_server.append(message["body"])

        await mw(scope, receive, send)

    asyncio.run(run())
    assert b"".join(seen_by_server) == b"\n\n".join(events) + b"\n\n"
    assert order[:4] == ["server", "app", "server", "app"]
    assert records
    assert_usage(records[0].usage, entry)


def test_non_provider_routes_pass_straight_through(tmp_path: Path) -> None:
    app = ReplayApp([b'{"usage": {"prompt_tokens": 5}}'])
    mw, records = collecting(app, tmp_path)
    entry = {"path": "/api/health", "method": "POST"}
    sent, _ = asyncio.run(call(mw, entry, body=b"{}"))
    assert body_of(sent) == b'{"usage": {"prompt_tokens": 5}}'
    assert records == []


def test_disabled_is_a_pure_pass_through(tmp_path: Path) -> None:
    entry = next(e for e in ENTRIES if e["file"] == "openai_chat.json")
    mw, records = collecting(ReplayApp([fixture_bytes(entry)]), tmp_path, enabled=False)
    sent, _ = asyncio.run(call(mw, entry))
    assert body_of(sent) == fixture_bytes(entry) and records == []


def test_app_exception_mid_stream_is_reraised_and_recorded_partial(tmp_path: Path) -> None:
    entry = next(e for e in ENTRIES if e["file"] == "anthropic_messages_stream.sse")
    data = fixture_bytes(entry)
    chunks = random_chunks(data, random.Random(1), 200)
    app = ReplayApp(chunks, 200, content_headers(entry), fail_after=len(chunks) // 2)
    mw, records = collecting(app, tmp_path)
    sent, error = asyncio.run(call(mw, entry))
    assert isinstance(error, RuntimeError) and str(error) == "upstream died"
    assert body_of(sent) == b"".join(chunks[: len(chunks) // 2])
    assert len(records) == 1 and records[0].partial is True
    assert records[0].model == entry["model"]


@pytest.mark.parametrize("sent_bytes", [0, 25])
def test_a_stream_cut_before_its_first_event_is_recorded_partial(sent_bytes: int,
                                                                 tmp_path: Path) -> None:
    """The call was made: a stream cut before (or inside) its first event still leaves a
    partial row, without usage, like a stream cut later."""
    entry = next(e for e in ENTRIES if e["file"] == "openai_chat_stream.sse")
    data = fixture_bytes(entry)
    chunks = [data[:sent_bytes], data[sent_bytes:]] if sent_bytes else [data]
    app = ReplayApp(chunks, 200, content_headers(entry), fail_after=len(chunks) - 1)
    mw, records = collecting(app, tmp_path, statsd_enabled=True)
    sent, error = asyncio.run(call(mw, entry, body=b'{"model": "gpt-4o-mini", "stream": true}'))
    assert isinstance(error, RuntimeError)
    assert body_of(sent) == data[:sent_bytes]
    assert len(records) == 1
    record = records[0]
    assert record.partial is True and record.usage is None and record.streamed is True
    assert (record.provider, record.api) == ("openai", entry["api"])
    counters = mw.tracker.metrics.snapshot()["counters"]
    assert counters["usage.missing"] == 1 and "skipped.internal_error" not in counters
    mw.tracker.metrics.close()


def test_request_body_reaches_the_app_unchanged(tmp_path: Path) -> None:
    entry = next(e for e in ENTRIES if e["provider"] == "cohere")
    app = ReplayApp([fixture_bytes(entry)], 200, content_headers(entry))
    mw, records = collecting(app, tmp_path)
    body = request_body(entry)
    asyncio.run(call(mw, entry, body=body))
    assert app.request_body == body
    assert records[0].model == entry["model"]


def test_request_id_is_taken_or_generated(tmp_path: Path) -> None:
    entry = next(e for e in ENTRIES if e["file"] == "openai_chat.json")
    mw, records = collecting(ReplayApp([fixture_bytes(entry)]), tmp_path)
    asyncio.run(call(mw, entry, headers=[(b"x-request-id", b"req-42")]))
    asyncio.run(call(mw, entry, headers=[]))
    assert records[0].request_id == "req-42"
    assert records[1].request_id and len(records[1].request_id) == 32
    assert records[1].tenant is None


BAD_BODIES = [
    (b'{"model": "gpt-4o", "usage": {"prompt_tokens": "12", "completion_tokens": 3}}',
     "application/json"),
    (b'{"model": "gpt-4o", "usage": {"prompt_tokens": -5, "completion_tokens": 3}}',
     "application/json"),
    (b'{"model": "gpt-4o", "usage": {"prompt_tokens": 1.5, "completion_tokens": 3}}',
     "application/json"),
    (b'{"model": "gpt-4o", "usage": {"prompt_tokens": true, "completion_tokens": 3}}',
     "application/json"),
    (b'{"model": "gpt-4o", "usage": {"prompt_tok', "application/json"),
    (b"\xff\xfe\x00garbage\x80", "application/json"),
    (b"<html>not json</html>", "text/html"),
    (b'{"status": "ok"}', "application/json"),
    (b"data: {\"choices\": [], \"usage\": {\"prompt_tokens\": [1]}}\n\n", "text/event-stream"),
    (b"data: \xc3\x28\n\n", "text/event-stream"),
]


@pytest.mark.parametrize(("body", "ctype"), BAD_BODIES)
def test_bad_bodies_are_untouched_and_not_recorded_as_usage(body: bytes, ctype: str,
                                                          tmp_path: Path) -> None:
    app = ReplayApp([body[:5], body[5:]], 200, [(b"content-type", ctype.encode())])
    mw, records = collecting(app, tmp_path, statsd_enabled=True)
    sent, error = asyncio.run(call(mw, {"path": "/v1/chat/completions"}, body=b"{}"))
    assert error is None
    assert body_of(sent) == body
    for record in records:
        assert record.usage is None
    counters = mw.tracker.metrics.snapshot()["counters"]
    assert "skipped.internal_error" not in counters
    mw.tracker.metrics.close()


def test_a_failing_capture_is_counted_and_the_response_untouched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cost_middleware.capture

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug in our own code")

    monkeypatch.setattr(cost_middleware.capture.Capture, "__init__", broken)
    entry = next(e for e in ENTRIES if e["file"] == "openai_chat.json")
    data = fixture_bytes(entry)
    mw, records = collecting(ReplayApp([data[:7], data[7:]]), tmp_path, statsd_enabled=True)
    sent, error = asyncio.run(call(mw, entry))
    assert error is None and body_of(sent) == data and records == []
    assert mw.tracker.metrics.snapshot()["counters"]["skipped.internal_error"] == 1
    mw.tracker.metrics.close()


def test_huge_bodies_are_capped_and_counted(tmp_path: Path) -> None:
    entry = next(e for e in ENTRIES if e["file"] == "openai_chat.json")
    data = fixture_bytes(entry)
    mw, records = collecting(ReplayApp([data]), tmp_path, max_body_bytes=100,
                             statsd_enabled=True)
    sent, _ = asyncio.run(call(mw, entry))
    assert body_of(sent) == data and records == []
    assert mw.tracker.metrics.snapshot()["counters"]["skipped.body_too_large"] == 1
    mw.tracker.metrics.close()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=2000),
       ctype=st.sampled_from(["application/json", "text/event-stream", "application/x-ndjson",
                              "application/vnd.amazon.eventstream"]),
       path=st.sampled_from(["/v1/chat/completions", "/v1/messages", "/v1/responses",
                             "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
                             "/model/x/converse-stream", "/api/chat", "/v2/chat"]))
def test_any_bytes_never_break_the_app(body: bytes, ctype: str, path: str, tmp_path: Path) -> None:
    app = ReplayApp([body[:3], body[3:]], 200, [(b"content-type", ctype.encode())])
    mw, records = collecting(app, tmp_path, statsd_enabled=True)
    sent, error = asyncio.run(call(mw, {"path": path}, body=b"{}"))
    assert error is None and body_of(sent) == body
    assert "skipped.internal_error" not in mw.tracker.metrics.snapshot()["counters"]
    # The next good response is still read.
    entry = next(e for e in ENTRIES if e["file"] == "openai_chat.json")
    mw.tracker.metrics.close()
    mw.app = ReplayApp([fixture_bytes(entry)])
    asyncio.run(call(mw, entry))
    assert_usage(records[-1].usage, entry)


# -- end to end, real databases ----------------------------------------------------------


@pytest.mark.parametrize("entry", CORE, ids=ids(CORE))
def test_records_are_stored_exactly(entry: dict[str, Any], db_url: str, tmp_path: Path) -> None:
    data = fixture_bytes(entry)
    chunks = random_chunks(data, random.Random(5), 300)
    app = ReplayApp(chunks, entry["status"], content_headers(entry))
    mw = CostMiddleware(app, quiet(database_url=db_url, spool_dir=str(tmp_path / "spool")))

    async def run() -> bytes:
        async with LifespanManager(mw):
            transport = httpx.ASGITransport(app=mw)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                path, query = split_path(entry)
                reply = await client.post(path + ("?" + query.decode() if query else ""),
                                          content=request_body(entry),
                                          headers={"x-tenant-id": "acme", "x-request-id": "r1"})
                return reply.content

    assert asyncio.run(run()) == data
    assert mw.tracker.closed
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(cost_records)).mappings().all()
    engine.dispose()
    if entry["status"] >= 400:
        assert rows == []
        return
    assert len(rows) == 1
    row = rows[0]
    usage = expected_usage(entry)
    assert (row["provider"], row["api"], row["model"]) == (entry["provider"], entry["api"],
                                                           entry["model"])
    assert (row["tenant"], row["request_id"], row["method"]) == ("acme", "r1", "POST")
    assert row["partial"] == bool(entry.get("partial"))
    assert row["streamed"] == bool(entry["stream"])
    if usage is None:
        assert row["input_tokens"] is None and row["cost_usd"] is None
        return
    assert row["input_tokens"] == usage.input_tokens
    assert row["cached_input_tokens"] == usage.cached_input_tokens
    assert row["cache_write_input_tokens"] == usage.cache_write_input_tokens
    assert row["output_tokens"] == usage.output_tokens
    assert row["reasoning_tokens"] == usage.reasoning_tokens
    from cost_middleware.pricing.admin import list_prices  # noqa: F401 - the seeded catalog
    book_cost = catalog_cost(entry, usage)
    assert row["cost_usd"] == book_cost
    if book_cost is not None:
        assert isinstance(row["cost_usd"], Decimal)
        assert row["price_version"] is not None
    check = entry.get("cost_check")
    if check and book_cost is not None and _catalog_rates_match(entry, check):
        assert row["cost_usd"] == Decimal(str(check["cost_usd"]))


def _catalog_rates_match(entry: dict[str, Any], check: dict[str, Any]) -> bool:
    from cost_middleware.pricing.book import PriceBook
    from cost_middleware.pricing.sources import CatalogFilePriceSource

    catalog = Path(__file__).resolve().parent.parent / "cost_middleware" / "catalog.json"
    price = PriceBook(CatalogFilePriceSource(str(catalog))).lookup(entry["provider"],
                                                                   entry["model"])
    stated = check["prices_per_mtok"]
    return price is not None and price.input == Decimal(str(stated["input"])) and (
        price.output == Decimal(str(stated.get("output", price.output))))


def test_statsd_lines_arrive_at_a_real_udp_socket(tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.5)
    entry = next(e for e in ENTRIES if e["file"] == "openai_chat.json")
    mw = CostMiddleware(ReplayApp([fixture_bytes(entry)]), quiet(
        tmp_path, statsd_enabled=True, statsd_host="127.0.0.1",
        statsd_port=sock.getsockname()[1], statsd_prefix="cm"))

    async def run() -> None:
        async with LifespanManager(mw):
            for _ in range(3):
                await call(mw, entry)

    asyncio.run(run())
    lines: list[str] = []
    try:
        while True:
            lines += sock.recv(65535).decode().splitlines()
    except TimeoutError:
        pass
    sock.close()
    names = {line.split(":", 1)[0] for line in lines}
    assert {"cm.request.overhead", "cm.extract.duration", "cm.records.written",
            "cm.batch.flush", "cm.cost.openai.gpt-4o-2024-08-06",
            "cm.tokens.input.openai.gpt-4o-2024-08-06"} <= names
    assert "cm.records.written:3|c" in lines


def test_app_lifespan_still_runs_and_a_closed_tracker_is_replaced(tmp_path: Path) -> None:
    events: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            events.append(message["type"])
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return

    mw = CostMiddleware(app, quiet(tmp_path))

    async def cycle() -> None:
        async with LifespanManager(mw):
            pass

    asyncio.run(cycle())
    first = mw.tracker
    assert first.closed
    asyncio.run(cycle())
    assert mw.tracker is not first and mw.tracker.closed
    assert events == ["lifespan.startup", "lifespan.shutdown"] * 2


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
@pytest.mark.parametrize("name", ["openai_chat.json", "anthropic_messages_stream.sse"])
def test_compressed_responses_are_read_and_sent_compressed(encoding: str, name: str,
                                                           tmp_path: Path) -> None:
    import gzip
    import zlib

    import brotli

    entry = next(e for e in ENTRIES if e["file"] == name)
    plain = fixture_bytes(entry)
    packed = {"gzip": gzip.compress, "deflate": zlib.compress,
              "br": brotli.compress}[encoding](plain)
    chunks = random_chunks(packed, random.Random(3), 40)
    headers = [*content_headers(entry), (b"content-encoding", encoding.encode())]
    mw, records = collecting(ReplayApp(chunks, 200, headers), tmp_path)
    sent, error = asyncio.run(call(mw, entry))
    assert error is None and body_of(sent) == packed
    assert len(records) == 1
    assert_usage(records[0].usage, entry)


def test_unknown_encoding_is_skipped_and_counted(tmp_path: Path) -> None:
    entry = next(e for e in ENTRIES if e["file"] == "openai_chat.json")
    headers = [*content_headers(entry), (b"content-encoding", b"zstd")]
    mw, records = collecting(ReplayApp([b"\x28\xb5\x2f\xfd junk"], 200, headers), tmp_path,
                             statsd_enabled=True)
    sent, error = asyncio.run(call(mw, entry))
    assert error is None and body_of(sent) == b"\x28\xb5\x2f\xfd junk"
    assert records == []
    assert mw.tracker.metrics.snapshot()["counters"]["skipped.unsupported_encoding"] == 1
    mw.tracker.metrics.close()


def test_a_body_the_server_could_not_send_is_still_recorded(tmp_path: Path) -> None:
    entry = next(e for e in ENTRIES if e["file"] == "openai_chat.json")
    data = fixture_bytes(entry)
    mw, records = collecting(ReplayApp([data]), tmp_path)

    async def run() -> None:
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
                 "raw_path": b"/v1/chat/completions", "query_string": b"", "headers": []}

        async def receive() -> Message:
            return {"type": "http.request", "body": b"{}"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                raise OSError("client disconnected")

        with pytest.raises(OSError):
            await mw(scope, receive, send)

    asyncio.run(run())
    assert len(records) == 1
    assert_usage(records[0].usage, entry)


def response_headers(sent: list[Message]) -> list[tuple[bytes, bytes]]:
    return list(next(m for m in sent if m["type"] == "http.response.start")["headers"])


def test_the_request_id_is_echoed_on_inspected_responses(tmp_path: Path) -> None:
    """The id of the row comes back, the client's own or the one generated; the body and
    the app's headers are untouched, and the app's header list is not modified."""
    entry = next(e for e in ENTRIES if e["file"] == "openai_chat.json")
    app = ReplayApp([fixture_bytes(entry)])
    own_headers = list(app.headers)
    mw, records = collecting(app, tmp_path)
    given, _ = asyncio.run(call(mw, entry, headers=[(b"x-request-id", b"req-42")]))
    generated, _ = asyncio.run(call(mw, entry, headers=[]))
    assert response_headers(given) == [*own_headers, (b"x-request-id", b"req-42")]
    assert records[0].request_id == "req-42"
    assert response_headers(generated) == [
        *own_headers, (b"x-request-id", str(records[1].request_id).encode())]
    assert body_of(given) == body_of(generated) == fixture_bytes(entry)
    assert app.headers == own_headers


def test_the_apps_own_request_id_header_wins(tmp_path: Path) -> None:
    """A gateway forwarding a provider's answer sends the provider's x-request-id: kept,
    never a second one."""
    entry = next(e for e in ENTRIES if e["file"] == "openai_chat.json")
    headers = [(b"content-type", b"application/json"), (b"X-Request-ID", b"req_upstream")]
    mw, records = collecting(ReplayApp([fixture_bytes(entry)], 200, headers), tmp_path)
    sent, _ = asyncio.run(call(mw, entry, headers=[(b"x-request-id", b"mine")]))
    assert response_headers(sent) == headers
    assert records[0].request_id == "mine"


def test_the_request_id_is_not_echoed_where_we_do_not_look(tmp_path: Path) -> None:
    app = ReplayApp([b"{}"])
    mw, _ = collecting(app, tmp_path)
    sent, _ = asyncio.run(call(mw, {"path": "/api/health"}, body=b"{}"))
    assert response_headers(sent) == app.headers


def test_echo_can_be_turned_off_and_the_header_renamed(tmp_path: Path) -> None:
    entry = next(e for e in ENTRIES if e["file"] == "openai_chat.json")
    app = ReplayApp([fixture_bytes(entry)])
    off, _ = collecting(app, tmp_path, echo_request_id=False)
    sent, _ = asyncio.run(call(off, entry, headers=[(b"x-request-id", b"r1")]))
    assert response_headers(sent) == app.headers
    renamed, records = collecting(app, tmp_path, request_id_header="X-Correlation-Id")
    sent, _ = asyncio.run(call(renamed, entry, headers=[(b"x-request-id", b"ignored"),
                                                         (b"x-correlation-id", b"c-7")]))
    assert response_headers(sent) == [*app.headers, (b"x-correlation-id", b"c-7")]
    assert records[0].request_id == "c-7"


def test_the_request_id_reaches_a_client_through_starlette(tmp_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    entry = next(e for e in ENTRIES if e["file"] == "openai_chat.json")

    async def chat(request: Any) -> Response:
        return Response(fixture_bytes(entry), media_type="application/json")

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    app.add_middleware(CostMiddleware, settings=quiet(tmp_path))

    async def run() -> list[httpx.Response]:
        async with LifespanManager(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return [await client.post("/v1/chat/completions", json={}),
                    await client.post("/v1/chat/completions", json={},
                                      headers={"x-request-id": "abc"})]

    first, second = asyncio.run(run())
    assert len(first.headers["x-request-id"]) == 32 and second.headers["x-request-id"] == "abc"
    assert first.content == second.content == fixture_bytes(entry)
    engine = sa.create_engine(quiet(tmp_path).database_url)
    with engine.connect() as conn:
        stored = set(conn.execute(sa.select(cost_records.c.request_id)).scalars())
    engine.dispose()
    assert stored == {first.headers["x-request-id"], "abc"}
