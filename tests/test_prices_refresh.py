"""The price refresh of a running app: a local HTTP server (or a file) serves a LiteLLM map or
our catalog; a refresh writes it through the import's code, the next record through the real
middleware (SQLite and PostgreSQL) is priced with it, another process's book hears of it
through Redis; a bad source keeps the last good prices (counted, logged once); unchanged
content is not imported; off by default nothing of it runs or is even imported."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import RedisServer, free_port, wait_for
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from cost_middleware import WSGICostMiddleware
from cost_middleware.config import ConfigError, Settings
from cost_middleware.engine.ledger import open_ledger
from cost_middleware.metrics import Metrics
from cost_middleware.pricing import refresh
from cost_middleware.pricing.admin import show_price
from cost_middleware.pricing.book import PriceBook
from cost_middleware.pricing.channels import DOWN
from cost_middleware.pricing.fetch import FetchError, Validators, fetch, file_name, shown
from cost_middleware.pricing.listener import PriceSync
from cost_middleware.pricing.refresh import PriceRefresher, describe_status, status_keys
from cost_middleware.schema import cost_records, model_prices
from cost_middleware.usage.model import Usage

D = Decimal
MODEL = "gpt-refresh-test"
USAGE = Usage(input_tokens=1_000, output_tokens=500)


def litellm_map(input_per_token: str = "2.5e-06", extra: int = 0) -> bytes:
    """A LiteLLM-format map (figures as JSON numbers): our test model, ``extra`` fillers."""
    entries: dict[str, Any] = {MODEL: {"litellm_provider": "openai", "mode": "chat",
                                       "input_cost_per_token": D(input_per_token),
                                       "output_cost_per_token": D("1e-05")}}
    for i in range(extra):
        entries[f"gpt-refresh-filler-{i}"] = {"litellm_provider": "openai", "mode": "chat",
                                             "input_cost_per_token": D("1e-06"),
                                             "output_cost_per_token": D("2e-06")}
    return json.dumps(entries, default=float).encode()


class PriceServer:
    """A local HTTP server answering GET with ``body`` and its ETag (304 when it matches)."""

    def __init__(self) -> None:
        self.body = litellm_map()
        self.requests: list[dict[str, str]] = []
        self.statuses: list[int] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append(dict(self.headers))
                etag = f'"{hash(owner.body) & 0xFFFFFFFF:x}"'
                if self.headers.get("If-None-Match") == etag:
                    owner.statuses.append(304)
                    self.send_response(304)
                    self.end_headers()
                    return
                owner.statuses.append(200)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(owner.body)))
                self.end_headers()
                self.wfile.write(owner.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/prices/litellm.json"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def price_server() -> Iterator[PriceServer]:
    server = PriceServer()
    yield server
    server.close()


def quiet(**values: Any) -> Settings:
    return Settings(statsd_enabled=False, **values)


def counters(metrics: Metrics) -> dict[str, float]:
    return {k: v for k, v in metrics.snapshot()["counters"].items()
            if k.startswith("prices.refresh.")}


def versions(engine: sa.Engine) -> list[tuple[str, str, int]]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.select(
            model_prices.c.provider, model_prices.c.model, model_prices.c.version)).all())


@pytest.fixture
def ledger(sqlite_url: str) -> Iterator[sa.Engine]:
    engine = open_ledger(quiet(database_url=sqlite_url))
    yield engine
    engine.dispose()


def refresher(engine: sa.Engine, source: str, **values: Any) -> PriceRefresher:
    settings = quiet(database_url=str(engine.url), prices_refresh=source, **values)
    # Counted (never sent: nothing flushes these metrics).
    counting = settings.with_overrides(statsd_enabled=True, statsd_host="127.0.0.1")
    return PriceRefresher(settings, engine, Metrics(counting))


# -- the app: refreshed prices price the next record ---------------------------------------

CHAT_BODY = json.dumps({"id": "c1", "object": "chat.completion", "model": MODEL,
                        "choices": [{"index": 0, "message": {"role": "assistant",
                                                             "content": "hi"}}],
                        "usage": {"prompt_tokens": 1000, "completion_tokens": 500,
                                  "total_tokens": 1500}}).encode()


def provider_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(CHAT_BODY)))])
    return [CHAT_BODY]


def call(mw: WSGICostMiddleware) -> None:
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/v1/chat/completions",
               "SERVER_NAME": "t", "SERVER_PORT": "80", "wsgi.url_scheme": "http",
               "wsgi.input": io.BytesIO(b"{}"), "CONTENT_LENGTH": "2",
               "CONTENT_TYPE": "application/json", "SERVER_PROTOCOL": "HTTP/1.1"}
    result = mw(environ, lambda status, headers, exc_info=None: None)
    try:
        assert b"".join(result) == CHAT_BODY
    finally:
        getattr(result, "close", lambda: None)()


def last_cost(engine: sa.Engine) -> tuple[Decimal | None, int | None]:
    with engine.connect() as conn:
        row = conn.execute(sa.select(cost_records.c.cost_usd, cost_records.c.price_version)
                           .order_by(cost_records.c.created_at.desc()).limit(1)).one()
    return row.cost_usd, row.price_version


def test_a_refresh_prices_the_next_record_through_the_middleware(
        db_url: str, price_server: PriceServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(refresh, "FIRST_WINDOW", 0.05)
    mw = WSGICostMiddleware(provider_app, quiet(
        database_url=db_url, spool_dir=str(tmp_path / "spool"), prices_refresh=price_server.url))
    tracker = mw.tracker
    try:
        call(mw)  # starts the worker, which opens the ledger and starts the refresh
        assert tracker.flush(10)
        assert wait_for(lambda: tracker._refresher is not None
                        and tracker._refresher.last is not None, 10)
        worker = tracker._refresher
        assert worker is not None and worker.last is not None
        assert worker.last.kind == refresh.APPLIED, worker.last
        assert any(t.name == refresh.THREAD_NAME for t in threading.enumerate())
        engine = tracker.engine
        [row] = show_price(engine, "openai", MODEL)
        assert (row.input, row.output) == (D("2.5"), D("10"))
        assert row.source == "litellm litellm.json"
        call(mw)
        assert tracker.flush(10)
        assert last_cost(engine) == (row.cost(USAGE), row.version) == (D("0.0075"), row.version)

        price_server.body = litellm_map("3e-06")
        assert worker.refresh_once().kind == refresh.APPLIED
        newest = show_price(engine, "openai", MODEL)[-1]
        assert newest.input == D("3") and newest.version > row.version
        call(mw)
        assert tracker.flush(10)
        assert last_cost(engine) == (D("0.008"), newest.version)
    finally:
        mw.tracker.close()
    assert not any(t.name == refresh.THREAD_NAME and t.is_alive()
                   for t in threading.enumerate())


def test_a_refresh_reaches_another_processs_book_through_redis(
        ledger: sa.Engine, price_server: PriceServer, redis_server: RedisServer) -> None:
    settings = quiet(database_url=str(ledger.url), redis_url=redis_server.url, cache_ttl=300)
    other = PriceBook.from_settings(settings, ledger, Metrics(settings))
    sync = PriceSync(other, redis_server.url, Metrics(settings))
    sync.start()
    first = refresher(ledger, price_server.url, redis_url=redis_server.url)
    second = refresher(ledger, price_server.url, redis_url=redis_server.url)
    try:
        assert wait_for(lambda: sync.channel != DOWN, 10)
        assert other.lookup("openai", MODEL) is None  # cached as unknown for the cache TTL
        assert first.refresh_once().kind == refresh.APPLIED
        assert wait_for(lambda: other.lookup("openai", MODEL) is not None, 5)
        assert other.cost(USAGE, MODEL, "openai") == D("0.0075")
        # One process per interval: the other one's round is skipped, and counted.
        assert second.refresh_once().kind == refresh.SKIPPED
        assert counters(second._metrics) == {"prices.refresh.skipped": 1}
        ok, detail = describe_status(settings.with_overrides(prices_refresh=price_server.url))
        assert ok and "last round" in detail and "applied" in detail
    finally:
        first.stop()
        second.stop()
        sync.stop()
        other.close()


# -- a bad source keeps the last good prices ---------------------------------------------------

def test_bad_sources_keep_the_last_good_prices_counted_and_logged_once(
        ledger: sa.Engine, price_server: PriceServer, caplog: pytest.LogCaptureFixture) -> None:
    price_server.body = litellm_map(extra=80)
    worker = refresher(ledger, price_server.url)
    assert worker.refresh_once().kind == refresh.APPLIED
    good = versions(ledger)
    caplog.set_level(logging.DEBUG, logger="cost_middleware")
    caplog.clear()
    bad = {
        "truncated": (litellm_map(extra=2), refresh.REFUSED, "drop"),
        "corrupt JSON": (litellm_map(extra=80)[:-40], refresh.FAILED, "not valid JSON"),
        "absurd rate": (litellm_map("0.5", extra=80), refresh.REFUSED, "rates above"),
        "negative rate": (litellm_map("-1e-06", extra=80), refresh.REFUSED, "corrupt"),
        "not a price map": (b'{"hello": "world"}', refresh.FAILED, "cannot tell the format"),
    }
    for name, (body, kind, words) in bad.items():
        price_server.body = body
        outcome = worker.refresh_once()
        assert (outcome.kind, words in outcome.detail) == (kind, True), (name, outcome)
        assert versions(ledger) == good, name
    port = price_server.server.server_address[1]
    price_server.close()  # unreachable from now on
    outcome = worker.refresh_once()
    assert outcome.kind == refresh.FAILED and "cannot reach" in outcome.detail
    assert f"127.0.0.1:{port}" in outcome.detail
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert "refused by the import guards" in message and "last good prices" in message
    assert "curl -s http://127.0.0.1" in message and "--dry-run" in message
    assert counters(worker._metrics) == {"prices.refresh.applied": 1, "prices.refresh.rows": 81,
                                         "prices.refresh.refused": 3, "prices.refresh.failed": 3}
    assert versions(ledger) == good

    back = PriceServer()
    try:
        back.body = litellm_map("2e-06", extra=80)
        worker.source = back.url
        caplog.clear()
        assert worker.refresh_once().kind == refresh.APPLIED
        infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        assert any("works again (after 6 failed attempts)" in m for m in infos)
    finally:
        back.close()


def test_unchanged_content_is_not_imported_again(ledger: sa.Engine,
                                                 price_server: PriceServer) -> None:
    worker = refresher(ledger, price_server.url)
    assert worker.refresh_once().kind == refresh.APPLIED
    before = versions(ledger)
    outcome = worker.refresh_once()
    assert outcome.kind == refresh.UNCHANGED and "unchanged since" in outcome.detail
    assert price_server.statuses == [200, 304]
    assert price_server.requests[1]["If-None-Match"].startswith('"')
    assert versions(ledger) == before
    # A new refresher (a restarted process) reads it again and finds nothing to write.
    again = refresher(ledger, price_server.url)
    assert again.refresh_once() == refresh.Outcome(refresh.UNCHANGED, "no price changed")
    assert versions(ledger) == before


def test_a_file_source_is_read_again_only_when_it_changes(ledger: sa.Engine,
                                                          tmp_path: Path) -> None:
    path = tmp_path / "ours.json"
    path.write_text(json.dumps({"prices": [
        {"provider": "openai", "model": MODEL, "input": "1.10", "output": "4.40"}]}))
    worker = refresher(ledger, str(path))
    assert worker.refresh_once().kind == refresh.APPLIED
    [row] = show_price(ledger, "openai", MODEL)
    assert (row.input, row.source) == (D("1.10"), "ours.json")
    assert worker.refresh_once().detail == "the source is unchanged since the last refresh"
    path.write_text(json.dumps({"prices": [
        {"provider": "openai", "model": MODEL, "input": "1.20", "output": "4.40"}]}))
    assert worker.refresh_once().kind == refresh.APPLIED
    assert show_price(ledger, "openai", MODEL)[-1].input == D("1.20")
    path.unlink()
    outcome = worker.refresh_once()
    assert outcome.kind == refresh.FAILED and "cannot read" in outcome.detail


def test_two_rounds_on_one_database_never_overlap(db_url: str,
                                                  price_server: PriceServer) -> None:
    engine = open_ledger(quiet(database_url=db_url))
    try:
        with refresh.refresh_guard(engine) as mine:
            assert mine
            with refresh.refresh_guard(engine) as theirs:
                assert not theirs
            worker = refresher(engine, price_server.url)
            before = versions(engine)
            assert worker.refresh_once().kind == refresh.SKIPPED
            assert versions(engine) == before
        assert worker.refresh_once().kind == refresh.APPLIED
    finally:
        engine.dispose()


@hsettings(max_examples=40, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(
    st.binary(max_size=300),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                 lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(st.sampled_from(["prices", MODEL, "litellm_provider",
                                                   "input_cost_per_token", "models", "id",
                                                   "provider", "model", "input", "output"]),
                                   inner, max_size=4),
                 max_leaves=12).map(lambda v: json.dumps(v).encode())))
def test_any_source_body_never_raises_and_writes_only_when_applied(
        ledger: sa.Engine, tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "source.json"
    path.write_bytes(body)
    before = versions(ledger)
    outcome = refresher(ledger, str(path)).refresh_once()
    assert outcome.kind in (refresh.APPLIED, refresh.UNCHANGED, refresh.REFUSED,
                            refresh.FAILED)
    if outcome.kind != refresh.APPLIED:
        assert versions(ledger) == before


# -- off by default; the settings --------------------------------------------------------------

OFF = textwrap.dedent("""
    import sys, threading
    from cost_middleware import CostRecord, Settings
    from cost_middleware.engine.tracker import CostTracker
    from cost_middleware.usage.model import Usage

    tracker = CostTracker(Settings.from_env(database_url=sys.argv[1], spool_dir=sys.argv[2],
                                            statsd_enabled=False))
    tracker.record(CostRecord("openai", "chat", "gpt-4o", Usage(input_tokens=1, output_tokens=1)))
    assert tracker.flush(10)
    names = [t.name for t in threading.enumerate()]
    tracker.close()
    print("cost_middleware.pricing.refresh" in sys.modules,
          "cost-middleware-prices-refresh" in names)
""")


def test_off_by_default_no_thread_and_the_module_is_not_even_imported(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", OFF, f"sqlite:///{tmp_path / 'l.db'}",
                          str(tmp_path / "spool")], capture_output=True, text=True, timeout=60,
                         check=True, env={"PATH": "", "PYTHONPATH": str(Path.cwd())})
    assert out.stdout.split() == ["False", "False"]


def test_settings_from_the_environment() -> None:
    settings = Settings.from_env({"COST_MIDDLEWARE_PRICES_REFRESH": " https://example.com/p.json ",
                                  "COST_MIDDLEWARE_PRICES_REFRESH_INTERVAL": "600"})
    assert (settings.prices_refresh, settings.prices_refresh_interval) == (
        "https://example.com/p.json", 600)
    assert Settings.from_env({}).prices_refresh is None
    assert Settings().prices_refresh_interval == 3600
    for env, words in (
        ({"COST_MIDDLEWARE_PRICES_REFRESH_INTERVAL": "5"}, "at least 60 seconds"),
        ({"COST_MIDDLEWARE_PRICES_REFRESH_INTERVAL": "soon"}, "must be a number"),
        ({"COST_MIDDLEWARE_PRICES_REFRESH": "ftp://example.com/p.json"}, "http:// or https://"),
        ({"COST_MIDDLEWARE_PRICES_REFRESH": "https:///p.json"}, "with a host"),
        ({"COST_MIDDLEWARE_PRICES_REFRESH": "p.json", "COST_MIDDLEWARE_PRICES_FILE": "c.json"},
         "COST_MIDDLEWARE_PRICES_FILE"),
    ):
        with pytest.raises(ConfigError, match=words):
            Settings.from_env(env)


# -- the fetch ---------------------------------------------------------------------------------

def test_fetch_bounds_size_and_redirects(price_server: PriceServer, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="larger than 10 bytes"):
        fetch(price_server.url, max_bytes=10)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 20)
    with pytest.raises(FetchError, match="larger than 10 bytes"):
        fetch(str(big), max_bytes=10)
    with pytest.raises(FetchError, match="cannot reach"):
        fetch(f"http://127.0.0.1:{free_port()}/p.json", timeout=2)
    got = fetch(price_server.url)
    assert got.body == price_server.body and got.validators.etag
    assert fetch(price_server.url, got.validators).body is None
    assert fetch(price_server.url, Validators(etag='"other"')).body == price_server.body

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/p.json")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(FetchError, match="refused a redirect"):
            fetch(f"http://127.0.0.1:{server.server_address[1]}/p.json")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_urls_are_shown_without_credentials_and_named_by_their_file() -> None:
    url = "https://user:secret@prices.example.com:8443/maps/litellm%20map.json?token=abc#x"
    assert shown(url) == "https://prices.example.com:8443/maps/litellm%20map.json"
    assert file_name(url) == "litellm_map.json"
    assert file_name("https://example.com/") == "prices.json"
    assert file_name("/srv/prices/catalog.json") == "catalog.json"
    assert status_keys("a") != status_keys("b")
    assert not status_keys("a")[0].startswith("cost_middleware:price")


def test_doctor_shows_the_last_round(ledger: sa.Engine, redis_server: RedisServer,
                                     tmp_path: Path) -> None:
    from cost_middleware.ops.doctor import check_refresh

    path = tmp_path / "broken.json"
    path.write_bytes(b"{broken")
    assert check_refresh(quiet()) == []
    [alone] = check_refresh(quiet(prices_refresh=str(path)))
    assert alone.ok and f"from {path} every 3600 s" in alone.detail
    settings = quiet(prices_refresh=str(path), redis_url=redis_server.url)
    [none] = check_refresh(settings)
    assert none.ok and "no round recorded" in none.detail
    worker = refresher(ledger, str(path), redis_url=redis_server.url)
    try:
        assert worker.refresh_once().kind == refresh.FAILED
    finally:
        worker.stop()
    [failed] = check_refresh(settings)
    assert (failed.ok, failed.warning) == (False, True)
    assert "failed (broken.json is not valid JSON" in failed.detail
    assert "last success not in the recorded window" in failed.detail
