"""The WSGI adapter: the iterable is wrapped, not buffered; close() is called; records exact."""

from __future__ import annotations

import io
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import (
    assert_usage,
    catalog_cost,
    expected_usage,
    fixture_bytes,
    load_expected,
    split_path,
)
from flask import Flask, Response, request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cost_middleware import CostRecord, Settings, WSGICostMiddleware
from cost_middleware.schema import cost_records

ENTRIES = load_expected()
OK_ENTRIES = [e for e in ENTRIES if e["status"] < 400]


def quiet(tmp: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"statsd_enabled": False,
                              "database_url": f"sqlite:///{tmp / 'cost.db'}",
                              "spool_dir": str(tmp / "spool")}
    values.update(overrides)
    return Settings(**values)


class ReplayIterable:
    """A WSGI response iterable with ``close()``, as servers expect from apps."""

    def __init__(self, chunks: list[bytes], fail_after: int | None = None) -> None:
        self.chunks = chunks
        self.fail_after = fail_after
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            if self.fail_after is not None and i == self.fail_after:
                raise RuntimeError("upstream died")
            yield chunk

    def close(self) -> None:
        self.closed = True


def replay_app(chunks: list[bytes], status: str, ctype: str,
               extra: dict[str, str] | None = None, fail_after: int | None = None) -> Any:
    iterables: list[ReplayIterable] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        environ["wsgi.input"].read()
        start_response(status, [("Content-Type", ctype), *(extra or {}).items()])
        iterable = ReplayIterable(chunks, fail_after)
        iterables.append(iterable)
        return iterable

    app.iterables = iterables  # type: ignore[attr-defined]
    return app


def environ_for(entry: dict[str, Any], body: bytes = b"{}",
                headers: dict[str, str] | None = None) -> dict[str, Any]:
    path, query = split_path(entry)
    env: dict[str, Any] = {
        "REQUEST_METHOD": "POST", "PATH_INFO": path, "QUERY_STRING": query.decode(),
        "SCRIPT_NAME": "", "SERVER_NAME": "t", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body), "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
        "wsgi.errors": io.StringIO(), "wsgi.multithread": False, "wsgi.multiprocess": False,
        "wsgi.run_once": False, "RAW_URI": entry["path"],
    }
    for name, value in (headers or {"x-tenant-id": "acme"}).items():
        env["HTTP_" + name.upper().replace("-", "_")] = value
    return env


def run(mw: WSGICostMiddleware, env: dict[str, Any]) -> tuple[str, bytes, Exception | None]:
    status: list[str] = []

    def start_response(s: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        status.append(s)
        return lambda data: None

    out = bytearray()
    error = None
    result = mw(env, start_response)
    try:
        for chunk in result:
            out += chunk
    except Exception as exc:
        error = exc
    finally:
        close = getattr(result, "close", None)
        if close:
            close()
    return status[0] if status else "", bytes(out), error


def collecting(app: Any, tmp: Path, **overrides: Any) -> tuple[WSGICostMiddleware,
                                                               list[CostRecord]]:
    mw = WSGICostMiddleware(app, quiet(tmp, **overrides))
    records: list[CostRecord] = []
    mw.tracker.record = records.append  # type: ignore[method-assign]
    return mw, records


def body_for(entry: dict[str, Any]) -> bytes:
    import orjson

    if entry.get("request_body") is not None:
        return orjson.dumps(entry["request_body"])
    return orjson.dumps({"model": entry.get("request_model") or entry.get("model") or "m",
                         **(entry.get("request_options") or {})})


def headers_for(entry: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in (entry.get("response_headers") or {}).items()
            if k.lower() != "content-type"}


@pytest.mark.parametrize("entry", OK_ENTRIES, ids=[e["file"] for e in OK_ENTRIES])
@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_every_fixture_under_random_chunking(entry: dict[str, Any], seed: int,
                                             tmp_path: Path) -> None:
    data = fixture_bytes(entry)
    rnd = random.Random(seed)
    chunks, i = [], 0
    while i < len(data):
        n = rnd.randint(1, 300)
        chunks.append(data[i:i + n])
        i += n
    app = replay_app(chunks, f"{entry['status']} OK", entry["content_type"], headers_for(entry))
    mw, records = collecting(app, tmp_path)
    _, body, error = run(mw, environ_for(entry, body_for(entry)))
    assert error is None and body == data
    assert app.iterables[0].closed
    assert len(records) == 1
    r = records[0]
    assert (r.provider, r.api, r.model) == (entry["provider"], entry["api"], entry["model"])
    assert_usage(r.usage, entry)
    assert r.partial == bool(entry.get("partial"))
    assert r.tenant == "acme"


def test_chunks_are_yielded_before_they_are_inspected(tmp_path: Path) -> None:
    entry = next(e for e in ENTRIES if e["file"] == "openai_chat_stream.sse")
    data = fixture_bytes(entry)
    app = replay_app([data[:100], data[100:]], "200 OK", "text/event-stream")
    mw, records = collecting(app, tmp_path)
    result = mw(environ_for(entry), lambda s, h, e=None: (lambda d: None))
    iterator = iter(result)
    assert next(iterator) == data[:100]
    assert records == []
    assert b"".join(iterator) == data[100:]
    assert records
    assert_usage(records[0].usage, entry)


def test_app_exception_mid_stream_is_reraised_and_recorded_partial(tmp_path: Path) -> None:
    entry = next(e for e in ENTRIES if e["file"] == "anthropic_messages_stream.sse")
    data = fixture_bytes(entry)
    chunks = [data[i:i + 150] for i in range(0, len(data), 150)]
    app = replay_app(chunks, "200 OK", "text/event-stream", fail_after=len(chunks) // 2)
    mw, records = collecting(app, tmp_path)
    _, body, error = run(mw, environ_for(entry))
    assert isinstance(error, RuntimeError)
    assert body == b"".join(chunks[: len(chunks) // 2])
    assert app.iterables[0].closed
    assert records and records[0].partial is True


def test_client_going_away_closes_the_iterable_and_records_partial(tmp_path: Path) -> None:
    entry = next(e for e in ENTRIES if e["file"] == "anthropic_messages_stream.sse")
    data = fixture_bytes(entry)
    chunks = [data[i:i + 150] for i in range(0, len(data), 150)]
    app = replay_app(chunks, "200 OK", "text/event-stream")
    mw, records = collecting(app, tmp_path)
    result = mw(environ_for(entry), lambda s, h, e=None: (lambda d: None))
    iterator = iter(result)
    for _ in range(len(chunks) // 2):  # past message_start, short of message_delta
        next(iterator)
    result.close()  # type: ignore[attr-defined]
    assert app.iterables[0].closed
    assert records and records[0].partial is True


def test_request_body_reaches_the_app_unchanged(tmp_path: Path) -> None:
    entry = next(e for e in ENTRIES if e["provider"] == "cohere")
    seen: list[bytes] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        seen.append(environ["wsgi.input"].read())
        start_response("200 OK", [("Content-Type", "application/json")])
        return [fixture_bytes(entry)]

    mw, records = collecting(app, tmp_path)
    body = body_for(entry)
    run(mw, environ_for(entry, body))
    assert seen == [body]
    assert records[0].model == entry["model"]


CORE = [e for e in ENTRIES if e["provider"] in ("openai", "anthropic") and e["status"] < 400]


@pytest.mark.parametrize("entry", CORE, ids=[e["file"] for e in CORE])
def test_flask_app_end_to_end_into_sqlite_and_postgresql(entry: dict[str, Any], db_url: str,
                                                         tmp_path: Path) -> None:
    data = fixture_bytes(entry)
    flask_app = Flask(__name__)

    @flask_app.post(split_path(entry)[0])
    def provider() -> Response:
        request.get_data()
        return Response((data[i:i + 97] for i in range(0, len(data), 97)),
                        content_type=entry["content_type"])

    mw = WSGICostMiddleware(flask_app.wsgi_app, Settings(
        statsd_enabled=False, database_url=db_url, spool_dir=str(tmp_path / "spool")))
    flask_app.wsgi_app = mw  # type: ignore[method-assign]
    client = flask_app.test_client()
    reply = client.post(split_path(entry)[0], data=body_for(entry),
                        headers={"x-tenant-id": "acme", "x-request-id": "w1"})
    assert reply.data == data
    mw.close()
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(cost_records)).mappings().all()
    engine.dispose()
    assert len(rows) == 1
    row = rows[0]
    assert (row["request_id"], row["tenant"], row["model"]) == ("w1", "acme", entry["model"])
    usage = expected_usage(entry)
    if usage is None:
        assert row["input_tokens"] is None and row["cost_usd"] is None
        return
    assert (row["input_tokens"], row["cached_input_tokens"], row["output_tokens"]) == (
        usage.input_tokens, usage.cached_input_tokens, usage.output_tokens)
    assert row["cost_usd"] == catalog_cost(entry, usage)


def test_non_provider_routes_are_returned_as_is(tmp_path: Path) -> None:
    sentinel = [b"plain"]

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return sentinel

    mw, records = collecting(app, tmp_path)
    assert mw(environ_for({"path": "/health"}), lambda s, h, e=None: None) is sentinel
    assert records == []


def test_a_body_the_server_could_not_write_is_still_recorded(tmp_path: Path) -> None:
    """gunicorn closes the iterable when the client is gone; the app's answer still cost."""
    entry = next(e for e in ENTRIES if e["file"] == "openai_chat.json")
    data = fixture_bytes(entry)
    mw, records = collecting(replay_app([data], "200 OK", "application/json"), tmp_path)
    result = mw(environ_for(entry), lambda s, h, e=None: (lambda d: None))
    iterator = iter(result)
    assert next(iterator) == data
    result.close()  # type: ignore[attr-defined]  # the write of that chunk failed
    assert len(records) == 1
    assert_usage(records[0].usage, entry)


def started_with(mw: WSGICostMiddleware, env: dict[str, Any]) -> list[tuple[str, str]]:
    """The headers the server was given, after the body was read to its end."""
    seen: list[list[tuple[str, str]]] = []

    def start_response(s: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen.append(headers)
        return lambda data: None

    result = mw(env, start_response)
    b"".join(result)
    getattr(result, "close", lambda: None)()
    return seen[0]


def test_the_request_id_is_echoed_on_inspected_responses(tmp_path: Path) -> None:
    entry = next(e for e in ENTRIES if e["file"] == "openai_chat.json")
    own = [("Content-Type", "application/json")]
    mw, records = collecting(replay_app([fixture_bytes(entry)], "200 OK", "application/json"),
                             tmp_path)
    assert started_with(mw, environ_for(entry, headers={"x-request-id": "req-42"})) == [
        *own, ("x-request-id", "req-42")]
    generated = started_with(mw, environ_for(entry, headers={}))
    assert generated == [*own, ("x-request-id", str(records[1].request_id))]
    assert records[0].request_id == "req-42" and len(str(records[1].request_id)) == 32


def test_the_apps_own_request_id_header_wins(tmp_path: Path) -> None:
    entry = next(e for e in ENTRIES if e["file"] == "openai_chat.json")
    app = replay_app([fixture_bytes(entry)], "200 OK", "application/json",
                     {"X-Request-Id": "req_upstream"})
    mw, records = collecting(app, tmp_path)
    assert started_with(mw, environ_for(entry, headers={"x-request-id": "mine"})) == [
        ("Content-Type", "application/json"), ("X-Request-Id", "req_upstream")]
    assert records[0].request_id == "mine"


def test_echo_can_be_turned_off_and_the_header_renamed(tmp_path: Path) -> None:
    entry = next(e for e in ENTRIES if e["file"] == "openai_chat.json")
    app = replay_app([fixture_bytes(entry)], "200 OK", "application/json")
    off, _ = collecting(app, tmp_path, echo_request_id=False)
    assert started_with(off, environ_for(entry)) == [("Content-Type", "application/json")]
    renamed, records = collecting(app, tmp_path, request_id_header="X-Correlation-Id")
    assert started_with(renamed, environ_for(entry, headers={"x-correlation-id": "c-7"})) == [
        ("Content-Type", "application/json"), ("x-correlation-id", "c-7")]
    assert records[0].request_id == "c-7"


def test_flask_echoes_the_request_id_only_where_we_look(tmp_path: Path) -> None:
    entry = next(e for e in ENTRIES if e["file"] == "openai_chat.json")
    app = Flask(__name__)

    @app.post("/v1/chat/completions")
    def chat() -> Response:
        return Response(fixture_bytes(entry), content_type="application/json")

    @app.post("/health")
    def health() -> str:
        return "ok"

    mw = WSGICostMiddleware(app.wsgi_app, quiet(tmp_path))
    app.wsgi_app = mw  # type: ignore[method-assign]
    client = app.test_client()
    reply = client.post("/v1/chat/completions", json={}, headers={"x-request-id": "abc"})
    assert reply.headers["x-request-id"] == "abc" and reply.data == fixture_bytes(entry)
    generated = client.post("/v1/chat/completions", json={}).headers["x-request-id"]
    assert len(generated) == 32
    assert "x-request-id" not in client.post("/health").headers
    mw.close()
    engine = sa.create_engine(quiet(tmp_path).database_url)
    with engine.connect() as conn:
        stored = set(conn.execute(sa.select(cost_records.c.request_id)).scalars())
    engine.dispose()
    assert stored == {"abc", generated}
