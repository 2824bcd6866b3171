"""The unknown-model workflow as a user runs it (real SQLite and PostgreSQL, and a private Redis
for the change notice): a model no row prices is recorded through the middleware, logged once,
priced by a first ``prices set`` that covers its earlier records, explained by ``reprice`` and
``prices resolve``, and a row set by mistake is deleted with its audit trail kept."""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import RedisServer
from test_prices_check import command_env, init

from cost_middleware import CostMiddleware
from cost_middleware.config import Settings
from cost_middleware.engine.tracker import CostTracker
from cost_middleware.ops.cli import main
from cost_middleware.pricing import book as book_module
from cost_middleware.pricing.admin import (
    delete_price,
    deleted_prices,
    load_catalog,
    set_price,
    show_price,
    write_price,
)
from cost_middleware.pricing.book import PriceBook
from cost_middleware.pricing.matching import ALIAS, EXACT, FALLBACK, SPELLING, SUFFIX
from cost_middleware.pricing.price import EPOCH
from cost_middleware.pricing.resolve import resolve
from cost_middleware.pricing.sql_source import SQLPriceSource
from cost_middleware.records import CostRecord
from cost_middleware.schema import cost_records
from cost_middleware.usage.model import Usage

MODEL = "acme-llm-7b"
COMPATIBLE = "openai_compatible"
USAGE = Usage(input_tokens=1000, output_tokens=100)


@pytest.fixture
def cli(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    return command_env(db_url, tmp_path, monkeypatch)


def chat_app(model: str, usage: dict[str, int] | None) -> Any:
    """An OpenAI-compatible chat endpoint answering for ``model``."""
    body: dict[str, Any] = {
        "id": "c1", "object": "chat.completion", "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                     "finish_reason": "stop"}]}
    if usage is not None:
        body["usage"] = usage
    data = json.dumps(body).encode()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": data})

    return app


def send_through_middleware(settings: Settings, model: str, count: int,
                            with_usage: bool = True) -> None:
    """``count`` calls through CostMiddleware, written to the ledger."""
    usage = {"prompt_tokens": 1000, "completion_tokens": 100} if with_usage else None
    mw = CostMiddleware(chat_app(model, usage), settings)

    async def call() -> None:
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
                 "raw_path": b"/v1/chat/completions", "query_string": b"", "headers": [
                     (b"content-type", b"application/json")]}
        messages = [{"type": "http.request", "body": b'{"model": "x"}', "more_body": False}]

        async def receive() -> Any:
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            pass

        await mw(scope, receive, send)

    try:
        for _ in range(count):
            asyncio.run(call())
        assert mw.tracker.flush(10)
    finally:
        mw.tracker.close()


def costs(url: str, model: str) -> list[Decimal | None]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [row[0] for row in conn.execute(sa.select(cost_records.c.cost_usd_pico).where(
                cost_records.c.model == model))]
    finally:
        engine.dispose()


def test_a_first_price_covers_the_records_made_before_it(
        cli: Settings, db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    send_through_middleware(cli, MODEL, 3)
    assert costs(db_url, MODEL) == [None] * 3
    assert main(["reprice", "--since", "1h", "--only-unpriced"]) == 0
    out = capsys.readouterr().out
    assert "0 records priced" in out and "no row yet: 3 records" in out
    fix = f"cost-middleware prices set {COMPATIBLE} {MODEL} --input USD --output USD"
    assert fix in out
    assert main(shlex.split(fix.replace("USD", "1", 1).replace("USD", "2"))[1:]) == 0
    out = capsys.readouterr().out
    assert "First price of this model" in out and "1970-01-01" in out
    assert main(["reprice", "--since", "1h", "--only-unpriced"]) == 0
    out = capsys.readouterr().out
    assert "3 records priced" in out and "left unpriced" not in out
    # 1000 input tokens at 1 USD per 1M and 100 output tokens at 2 USD per 1M.
    assert costs(db_url, MODEL) == [Decimal("0.0012")] * 3


def test_a_later_start_stays_later_and_reprice_says_how_to_cover_earlier_records(
        cli: Settings, db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    send_through_middleware(cli, MODEL, 2)
    send_through_middleware(cli, "no-usage-llm", 1, with_usage=False)
    tracker = CostTracker(cli)
    try:  # impossible usage, as code calling CostTracker.record might hand over
        tracker.record(CostRecord(COMPATIBLE, "chat", "bad-llm", Usage(
            input_tokens=10, output_tokens=1, cached_input_tokens=20)))
        assert tracker.flush(10)
        for model in ("bad-llm", "no-usage-llm"):
            set_price(tracker.engine, COMPATIBLE, model, input="1", output="1")
        tomorrow = datetime.now(UTC) + timedelta(days=1)
        price = set_price(tracker.engine, COMPATIBLE, MODEL, input="1", output="2",
                          effective_from=tomorrow)
        assert price.effective_from == tomorrow  # an explicit start is kept
    finally:
        tracker.close()
    assert main(["reprice", "--since", "1h"]) == 0
    out = capsys.readouterr().out
    assert "0 records priced" in out and "4 records left unpriced" in out
    assert "row starts after the record: 2 records" in out
    assert "bad usage: 1 records" in out and "no usage: 1 records" in out
    line = next(x for x in out.splitlines() if f"{COMPATIBLE}/{MODEL}:" in x)
    fix = line.split("fix: ", 1)[1]
    assert fix.startswith(f"cost-middleware prices set {COMPATIBLE} {MODEL} --effective-from ")
    assert main(shlex.split(fix)[1:]) == 0
    out = capsys.readouterr().out
    assert "inherited from version" in out and "input, output" in out
    assert main(["reprice", "--since", "1h", "--only-unpriced"]) == 0
    assert "2 records priced" in capsys.readouterr().out
    assert costs(db_url, MODEL) == [Decimal("0.0012")] * 2


def test_prices_set_says_what_it_set_and_what_it_inherited(
        cli: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    init(cli)
    capsys.readouterr()
    assert main(["prices", "set", "openai", "gpt-4o", "--output", "11"]) == 0
    out = capsys.readouterr().out
    assert "Set --output; inherited from version" in out
    assert "input, cached input" in out and "output" not in out.split("inherited", 1)[1]
    assert main(["prices", "set", COMPATIBLE, "brand-new", "--output", "1"]) == 2
    assert "'input'" in capsys.readouterr().err


def test_resolve_says_which_candidate_matched(engine: sa.Engine) -> None:
    load_catalog(engine, {"prices": [
        {"provider": "openai", "model": "gpt-4o", "input": "2.5", "output": "10",
         "aliases": ["my-4o"], "effective_from": "2024-05-13"},
        {"provider": "google", "model": "gemini-2.5-pro", "input": "1.25", "output": "10"},
        {"provider": COMPATIBLE, "model": "later-llm", "input": "1", "output": "1",
         "effective_from": (datetime.now(UTC) + timedelta(days=3)).isoformat()},
    ]})
    book = PriceBook(SQLPriceSource(engine))
    try:
        cases = {
            ("openai", "gpt-4o"): ((EXACT,), 0),
            ("openai", "GPT-4o"): ((SPELLING,), 1),
            ("openai", "my-4o"): ((ALIAS,), 0),
            ("openai", "gpt-4o-2024-08-06"): ((SUFFIX,), 1),
            ("google_gemini", "gemini-2.5-pro-001"): ((FALLBACK, SUFFIX), 3),
        }
        for (provider, model), (steps, rank) in cases.items():
            found = resolve(book, provider, model)
            assert found.match is not None and found.row is not None, model
            assert (found.match.steps, found.match.rank) == (steps, rank), model
        nothing = resolve(book, COMPATIBLE, MODEL)
        assert nothing.history == () and nothing.row is None
        later = resolve(book, COMPATIBLE, "later-llm")
        assert later.history and later.row is None  # its only row starts in 3 days
    finally:
        book.close()


def test_resolve_and_show_on_the_command_line(
        cli: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    init(cli)
    assert main(["prices", "set", "openai", "gpt-4o", "--input", "2.5", "--output", "10"]) == 0
    capsys.readouterr()
    assert main(["prices", "resolve", "openai", "gpt-4o-2024-11-20-x"]) == 1
    assert "No row prices openai/gpt-4o-2024-11-20-x" in capsys.readouterr().out
    assert main(["prices", "resolve", "openai", "gpt-4o-2024-11-20"]) == 0
    out = capsys.readouterr().out
    assert "is priced by openai/gpt-4o" in out and "date-suffix removal" in out
    # A name without rows of its own, priced through another: show says so, and by what.
    assert main(["prices", "show", "openai", "gpt-4o-2099-01-01"]) == 0
    out = capsys.readouterr().out
    assert "priced through openai/gpt-4o" in out and "prices resolve openai" in out
    assert main(["prices", "show", COMPATIBLE, MODEL]) == 1
    assert "No price for that model." in capsys.readouterr().out


def test_delete_keeps_the_audit_trail_and_never_reuses_a_version(engine: sa.Engine) -> None:
    changes: list[tuple[str, str]] = []
    first = write_price(engine, COMPATIBLE, MODEL, input="1", output="2")
    assert first.base is None and first.price.effective_from == EPOCH
    mistake = set_price(engine, COMPATIBLE, MODEL, input="100", output="200")
    with pytest.raises(ValueError, match="2 rows"):
        delete_price(engine, COMPATIBLE, MODEL)
    with pytest.raises(ValueError, match="no row from"):
        delete_price(engine, COMPATIBLE, MODEL, effective_from="2020-01-01")
    gone = delete_price(engine, COMPATIBLE, MODEL, effective_from=mistake.effective_from,
                        on_change=lambda p, m: changes.append((p, m)))
    assert gone.version == mistake.version and changes == [(COMPATIBLE, MODEL)]
    assert [p.version for p in show_price(engine, COMPATIBLE, MODEL)] == [first.price.version]
    (at, kept), = deleted_prices(engine, COMPATIBLE, MODEL)
    assert kept.input == Decimal(100) and kept.version == mistake.version
    assert at <= datetime.now(UTC)
    book = PriceBook(SQLPriceSource(engine))
    try:
        price = book.lookup(COMPATIBLE, MODEL)
        assert price is not None and price.version == first.price.version
    finally:
        book.close()
    # The deleted row had the highest version: the next row is numbered above it all the same.
    assert set_price(engine, COMPATIBLE, "other", input="1", output="1").version \
        == mistake.version + 1


def test_a_delete_reaches_a_running_process_through_redis(
        cli: Settings, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COST_MIDDLEWARE_REDIS_URL", redis_server.url)
    tracker = CostTracker(Settings.from_env())
    try:
        set_price(tracker.engine, COMPATIBLE, MODEL, input="1", output="2")
        book = tracker.price_book
        deadline = time.monotonic() + 10
        # Wait until the tracker's listener hears changes (it evicts the negative entry).
        while book.lookup(COMPATIBLE, MODEL) is None:
            assert time.monotonic() < deadline
            book.invalidate_all()
            time.sleep(0.01)
        assert main(["prices", "delete", COMPATIBLE, MODEL]) == 0
        assert "never reused" in capsys.readouterr().out
        deadline = time.monotonic() + 10
        while book.lookup(COMPATIBLE, MODEL) is not None:  # evicted by the notice alone
            assert time.monotonic() < deadline
            time.sleep(0.002)
    finally:
        tracker.close()


def test_the_first_sighting_of_an_unknown_model_is_logged_once(
        engine: sa.Engine, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(book_module, "_sighted", set())
    book = PriceBook(SQLPriceSource(engine))
    hostile = "evil\nmodel `rm -rf` " + "x" * 300

    def price(model: str) -> None:
        book.price_many([CostRecord(COMPATIBLE, "chat", model, USAGE) for _ in range(3)])

    try:
        with caplog.at_level(logging.WARNING, logger="cost_middleware"):
            for _ in range(2):
                price(MODEL)
                price(hostile)
                book.invalidate_all()  # a later miss of the same name logs nothing more
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 2
        assert (f"unknown model {MODEL} from provider {COMPATIBLE}" in lines[0]
                and f"cost-middleware prices set {COMPATIBLE} {MODEL} --input" in lines[0])
        assert "\n" not in lines[1] and "`rm" not in lines[1] and "x" * 129 not in lines[1]
        caplog.clear()
        monkeypatch.setattr(book_module, "SIGHTINGS_LOGGED", 3)
        with caplog.at_level(logging.WARNING, logger="cost_middleware"):
            for n in range(5):
                price(f"more-{n}")
        assert len(caplog.records) == 2  # one more model, then "more are only counted"
        assert "only counted" in caplog.records[-1].getMessage()
        assert len(book_module._sighted) == 4  # bounded
    finally:
        book.close()
