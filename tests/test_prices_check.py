"""``cost-middleware prices check`` on real SQLite and PostgreSQL: the models a ledger shows
unpriced or billed from stale or replaced rows, each with the command that fixes it, and the
exit status a cron job or CI step reads."""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cost_middleware.config import Settings
from cost_middleware.engine.ledger import open_ledger
from cost_middleware.engine.tracker import CostTracker
from cost_middleware.ops.cli import main
from cost_middleware.pricing.admin import load_catalog, set_price
from cost_middleware.pricing.book import PriceBook
from cost_middleware.pricing.check import STALE, SUPERSEDED, check_prices
from cost_middleware.pricing.sql_source import SQLPriceSource
from cost_middleware.records import CostRecord
from cost_middleware.usage.model import Usage

COMPATIBLE = "openai_compatible"


def init(settings: Settings) -> None:
    """The tables and the bundled prices, as ``cost-middleware init`` makes them."""
    open_ledger(settings).dispose()
USAGE = Usage(input_tokens=1_000_000, output_tokens=1_000)
NOW = datetime.now(UTC)


def command_env(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The commands' environment, as a user's shell would have it, in ``tmp_path``."""
    for name, value in (("DATABASE_URL", db_url), ("SPOOL_DIR", str(tmp_path / "spool")),
                        ("STATSD", "off")):
        monkeypatch.setenv(f"COST_MIDDLEWARE_{name}", value)
    monkeypatch.chdir(tmp_path)
    return Settings.from_env()


@pytest.fixture
def settings(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    return command_env(db_url, tmp_path, monkeypatch)


def record(settings: Settings, *models: str, at: datetime | None = None) -> None:
    tracker = CostTracker(settings)
    try:
        for model in models:
            tracker.record(CostRecord(COMPATIBLE, "chat", model, USAGE,
                                      created_at=at or datetime.now(UTC)))
        assert tracker.flush(10)
    finally:
        tracker.close()


def findings_json(capsys: pytest.CaptureFixture[str], *extra: str,
                  ) -> tuple[int, list[dict[str, Any]]]:
    capsys.readouterr()  # what earlier commands printed
    status = main(["prices", "check", "--format", "json", *extra])
    return status, json.loads(capsys.readouterr().out)["findings"]


def test_a_clean_ledger_exits_0_and_each_finding_exits_1_with_its_fix(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    init(settings)
    engine = sa.create_engine(settings.database_url)
    try:
        set_price(engine, COMPATIBLE, "fresh-llm", input="1", output="2")
        record(settings, "fresh-llm", "fresh-llm")
        assert findings_json(capsys) == (0, [])
        assert main(["prices", "check"]) == 0
        assert "Nothing to fix" in capsys.readouterr().out

        # An unpriced model: its fix, run as printed (rates filled in), clears it.
        record(settings, "new-llm", "new-llm", "new-llm")
        status, found = findings_json(capsys)
        assert status == 1 and [f["kind"] for f in found] == ["unpriced: no row yet"]
        assert found[0]["records"] == 3 and found[0]["cost_usd"] is None
        fix = found[0]["fix"]
        assert fix == f"cost-middleware prices set {COMPATIBLE} new-llm --input USD --output USD"
        assert main(shlex.split(fix.replace("USD", "3"))[1:]) == 0
        assert main(["reprice", "--since", "1h", "--only-unpriced"]) == 0
        capsys.readouterr()
        assert findings_json(capsys) == (0, [])

        # A stale row: rates dated 200 days ago, still the one in effect.
        load_catalog(engine, {"prices": [
            {"provider": COMPATIBLE, "model": "old-llm", "input": "0.3", "output": "0.7",
             "effective_from": (NOW - timedelta(days=200)).isoformat(),
             "source": "genai-prices 0.2.3"}]})
        record(settings, "old-llm", "old-llm")
        status, found = findings_json(capsys, "--stale-after", "90d")
        assert status == 1 and [f["kind"] for f in found] == [STALE]
        # Summed exactly: 2 x (1M input tokens x 0.3 + 1,000 output tokens x 0.7 per 1M).
        assert Decimal(found[0]["cost_usd"]) == Decimal("0.6014")
        assert found[0]["fix"] == "cost-middleware prices import genai-prices --dry-run"
        assert findings_json(capsys, "--stale-after", "300d") == (0, [])

        # A correction after the records were priced: they were billed from a replaced row.
        set_price(engine, COMPATIBLE, "old-llm", input="0.4",
                  effective_from=NOW - timedelta(days=200))
        status, found = findings_json(capsys, "--stale-after", "300d")
        assert status == 1 and [f["kind"] for f in found] == [SUPERSEDED]
        assert found[0]["fix"].startswith("cost-middleware reprice --since ")
        assert main(shlex.split(found[0]["fix"])[1:]) == 0
        capsys.readouterr()
        assert findings_json(capsys, "--stale-after", "300d") == (0, [])
    finally:
        engine.dispose()


def test_a_row_that_starts_after_the_records_and_the_period(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    init(settings)
    record(settings, "late-llm", at=NOW - timedelta(days=2))
    record(settings, "ancient-llm", at=NOW - timedelta(days=30))  # outside --since 7d
    engine = sa.create_engine(settings.database_url)
    try:
        set_price(engine, COMPATIBLE, "late-llm", input="1", output="1",
                  effective_from=NOW - timedelta(days=1))
    finally:
        engine.dispose()
    status, found = findings_json(capsys)
    assert status == 1
    assert [(f["kind"], f["model"]) for f in found] == [
        ("unpriced: row starts after the record", "late-llm")]
    assert "--effective-from" in found[0]["fix"]
    assert main(["prices", "check"]) == 1
    out = capsys.readouterr().out
    assert "late-llm" in out and "To fix:" in out and "ancient-llm" not in out
    assert main(["prices", "check", "--since", "60d"]) == 1
    assert "ancient-llm" in capsys.readouterr().out


def test_check_prices_in_python(engine: sa.Engine, settings: Settings) -> None:
    record(settings, "unknown-llm")
    book = PriceBook(SQLPriceSource(engine))
    try:
        found = check_prices(engine, book, NOW - timedelta(hours=1), timedelta(days=90))
    finally:
        book.close()
    assert [(f.kind, f.model, f.records) for f in found] == [
        ("unpriced: no row yet", "unknown-llm", 1)]
