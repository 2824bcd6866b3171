"""Cost summaries over a real ledger (SQLite and PostgreSQL) written by the real pipeline."""

from __future__ import annotations

import csv
import gc
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from cost_middleware.config import Settings
from cost_middleware.engine.tracker import CostTracker
from cost_middleware.ops.cli import main
from cost_middleware.ops.report import (
    GROUPS,
    Report,
    ReportRow,
    build_report,
    summarize,
    to_csv,
    to_json,
)
from cost_middleware.records import CostRecord
from cost_middleware.storage.engine import ensure_schema, make_engine
from cost_middleware.storage.rollups import Filters
from cost_middleware.usage.model import Usage

#: Our own prices (USD per 1M tokens), so every expected cost below is exact arithmetic.
CATALOG = {"prices": [
    {"provider": "acme", "model": "alpha", "input": "1.00", "output": "2.00",
     "effective_from": "2020-01-01T00:00:00Z"},
    {"provider": "acme", "model": "beta", "input": "0.15", "cached_input": "0.075",
     "output": "0.60", "effective_from": "2020-01-01T00:00:00Z"},
]}
NOW = datetime.now(UTC)
RECENT = NOW - timedelta(hours=1)
OLD = NOW - timedelta(days=10)


def _record(model: str | None, usage: Usage | None, *, tenant: str | None, route: str,
            provider: str = "acme", at: datetime = RECENT) -> CostRecord:
    return CostRecord(provider=provider, api="chat_completions", model=model, usage=usage,
                      tenant=tenant, route=route, method="POST", status_code=200,
                      created_at=at)


def ledger_records() -> list[CostRecord]:
    """Ten $0.10 calls (a float sum of them is not 1.0), cached and old calls, unpriced ones."""
    return [
        *(_record("alpha", Usage(input_tokens=100_000, output_tokens=0), tenant="acme",
                  route="/v1/chat/completions") for _ in range(10)),
        # 333 x 0.15 + 7 x 0.60 = 54.15 micro-dollars each, ten days ago.
        *(_record("beta", Usage(input_tokens=333, output_tokens=7), tenant="globex",
                  route="/v1/messages", at=OLD) for _ in range(3)),
        # 600 x 0.15 + 400 cached x 0.075 + 10 x 0.60 = 126 micro-dollars.
        _record("beta", Usage(input_tokens=1000, cached_input_tokens=400, output_tokens=10),
                tenant="acme", route="/v1/messages"),
        # Unpriced: a model no price covers, and a response that carried no usage.
        _record("mystery-1", Usage(input_tokens=50, output_tokens=50), tenant=None,
                route="/v1/chat/completions", provider="other"),
        _record("alpha", None, tenant="globex", route="/v1/chat/completions"),
    ]


@dataclass
class Ledger:
    url: str
    engine: sa.Engine


def write_ledger(url: str, tmp: Path, records: list[CostRecord]) -> None:
    """Records priced from :data:`CATALOG` and stored by the real worker and sink."""
    catalog = tmp / "prices.json"
    catalog.write_text(json.dumps(CATALOG))
    tracker = CostTracker(Settings(database_url=url, prices_file=str(catalog),
                                   statsd_enabled=False, spool_dir=str(tmp / "spool")))
    try:
        for record in records:
            tracker.record(record)
        assert tracker.flush(20)
    finally:
        tracker.close()


@pytest.fixture
def ledger(db_url: str, tmp_path: Path) -> Iterator[Ledger]:
    write_ledger(db_url, tmp_path, ledger_records())
    engine = make_engine(db_url)
    yield Ledger(db_url, engine)
    engine.dispose()


def by_key(rows: list[ReportRow]) -> dict[str, tuple[int, int, int, Decimal, int]]:
    return {r.key: (r.requests, r.input_tokens, r.output_tokens, r.cost_usd, r.unpriced)
            for r in rows}


# -- grouping --------------------------------------------------------------------------------


def test_by_model(ledger: Ledger) -> None:
    rows = summarize(ledger.engine, "model")
    assert [r.key for r in rows] == ["alpha", "beta", "mystery-1"]  # most expensive first
    assert by_key(rows) == {
        "alpha": (11, 1_000_000, 0, Decimal("1"), 1),
        "beta": (4, 1999, 31, Decimal("0.00028845"), 0),
        "mystery-1": (1, 50, 50, None, 1),  # unknown, not $0
    }


def test_by_tenant_a_missing_tenant_is_its_own_group(ledger: Ledger) -> None:
    rows = summarize(ledger.engine, "tenant")
    assert [r.key for r in rows] == ["acme", "globex", "(none)"]
    assert by_key(rows) == {
        "acme": (11, 1_001_000, 10, Decimal("1.000126"), 0),
        "globex": (4, 999, 21, Decimal("0.00016245"), 1),
        "(none)": (1, 50, 50, None, 1),
    }


def test_by_route(ledger: Ledger) -> None:
    assert by_key(summarize(ledger.engine, "route")) == {
        "/v1/chat/completions": (12, 1_000_050, 50, Decimal("1"), 2),
        "/v1/messages": (4, 1999, 31, Decimal("0.00028845"), 0),
    }


def test_by_provider(ledger: Ledger) -> None:
    assert by_key(summarize(ledger.engine, "provider")) == {
        "acme": (15, 1_001_999, 31, Decimal("1.00028845"), 1),
        "other": (1, 50, 50, None, 1),
    }


@pytest.mark.parametrize("by", GROUPS)
def test_every_grouping_adds_up_to_the_same_exact_total(ledger: Ledger, by: str) -> None:
    rows = summarize(ledger.engine, by)
    assert sum(r.requests for r in rows) == 16
    assert sum((r.cost_usd or 0 for r in rows), Decimal(0)) == Decimal("1.00028845")
    assert sum(r.unpriced for r in rows) == 2
    assert all(isinstance(r.cost_usd, Decimal) or r.unpriced == r.requests for r in rows)


def test_ties_are_ordered_by_requests_then_name(db_url: str, tmp_path: Path) -> None:
    unpriced = Usage(input_tokens=1, output_tokens=1)
    write_ledger(db_url, tmp_path, [
        *(_record("zeta", unpriced, tenant="t", route="/r") for _ in range(2)),
        _record("eta", unpriced, tenant="t", route="/r"),
        _record("delta", unpriced, tenant="t", route="/r"),
    ])
    engine = make_engine(db_url)
    try:
        assert [r.key for r in summarize(engine, "model")] == ["zeta", "delta", "eta"]
    finally:
        engine.dispose()


def test_an_unknown_grouping_is_refused(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match=r"report --by must be one of model, tenant, route, "
                                         r"provider \(or day, hour\), not 'cost'"):
        summarize(ledger.engine, "cost")


def test_an_empty_ledger_reports_no_rows(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        ensure_schema(engine)
        assert summarize(engine, "model") == []
        assert to_csv(build_report(engine)) == (
            "model,requests,input_tokens,cached_input_tokens,cache_write_input_tokens,"
            "output_tokens,reasoning_tokens,cost_usd,unpriced,no_usage\n"
            "total,0,0,0,0,0,0,0,0,0\n")
        data = json.loads(to_json(build_report(engine)))
        assert data["rows"] == [] and data["total"]["cost_usd"] == "0"
    finally:
        engine.dispose()


# -- since -----------------------------------------------------------------------------------


def test_since_leaves_out_older_records(ledger: Ledger) -> None:
    rows = summarize(ledger.engine, "model", NOW - timedelta(days=2))
    assert by_key(rows) == {
        "alpha": (11, 1_000_000, 0, Decimal("1"), 1),
        "beta": (1, 1000, 10, Decimal("0.000126"), 0),
        "mystery-1": (1, 50, 50, None, 1),
    }


def test_since_is_inclusive(db_url: str, tmp_path: Path) -> None:
    at = datetime(2024, 5, 1, 12, 0, 0, 250_000, tzinfo=UTC)
    write_ledger(db_url, tmp_path, [
        _record("alpha", Usage(input_tokens=1, output_tokens=0), tenant="t", route="/r", at=at),
        _record("alpha", Usage(input_tokens=2, output_tokens=0), tenant="t", route="/r",
                at=at - timedelta(microseconds=1)),
    ])
    engine = make_engine(db_url)
    try:
        [row] = summarize(engine, "model", at)
        assert (row.requests, row.input_tokens) == (1, 1)
        assert summarize(engine, "model", at + timedelta(microseconds=1)) == []
    finally:
        engine.dispose()


def test_since_after_everything_reports_nothing(ledger: Ledger) -> None:
    assert summarize(ledger.engine, "tenant", NOW + timedelta(minutes=1)) == []


@pytest.mark.parametrize("db_url", [
    "sqlite",
    "postgresql",
], indirect=True)
def test_since_with_another_utc_offset_means_the_same_instant(db_url: str,
                                                              tmp_path: Path) -> None:
    at = datetime(2024, 1, 1, 9, 0, tzinfo=UTC)
    write_ledger(db_url, tmp_path, [
        _record("alpha", Usage(input_tokens=1, output_tokens=0), tenant="t", route="/r", at=at)])
    engine = make_engine(db_url)
    try:
        # 10:00 at UTC+2 is 08:00 UTC: the 09:00 UTC record is after it.
        since = datetime(2024, 1, 1, 10, 0, tzinfo=timezone(timedelta(hours=2)))
        assert [r.requests for r in summarize(engine, "model", since)] == [1]
    finally:
        engine.dispose()


# -- csv and json ------------------------------------------------------------------------------


def single(row: ReportRow, by: str) -> Report:
    """A report of one row (and that row as its total), as the formatters take it."""
    return Report((by,), None, None, Filters(), [row], row)


def test_csv_rows_are_exact_with_a_total_row(ledger: Ledger) -> None:
    text = to_csv(build_report(ledger.engine, "tenant"))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["tenant", "requests", "input_tokens", "cached_input_tokens",
                             "cache_write_input_tokens", "output_tokens", "reasoning_tokens",
                             "cost_usd", "unpriced", "no_usage"]
    assert [(r["tenant"], r["requests"], r["input_tokens"], r["cached_input_tokens"],
             r["output_tokens"], r["unpriced"], r["no_usage"]) for r in rows] == [
        ("acme", "11", "1001000", "400", "10", "0", "0"),
        ("globex", "4", "999", "0", "21", "1", "1"),
        ("(none)", "1", "50", "0", "50", "1", "0"),
        ("total", "16", "1002049", "400", "81", "2", "1")]
    # An unknown cost is an empty cell, never 0.
    assert [r["cost_usd"] for r in rows] == ["1.000126000000", "0.000162450000", "",
                                             "1.000288450000"]
    assert "\r" not in text


def test_json_rows_are_exact_decimal_strings_with_a_total(ledger: Ledger) -> None:
    data = json.loads(to_json(build_report(ledger.engine, "model")))
    assert data["by"] == ["model"] and data["since"] is None and data["until"] is None
    assert [(d["model"], d["requests"], d["unpriced"]) for d in data["rows"]] == [
        ("alpha", 11, 1), ("beta", 4, 0), ("mystery-1", 1, 1)]
    assert [d["cost_usd"] for d in data["rows"]] == [
        "1.000000000000", "0.000288450000", None]  # unknown: null, not "0"
    assert data["total"] == {
        "requests": 16, "input_tokens": 1_002_049, "cached_input_tokens": 400,
        "cache_write_input_tokens": 0, "output_tokens": 81, "reasoning_tokens": 0,
        "cost_usd": "1.000288450000", "unpriced": 2, "no_usage": 1}


@pytest.mark.parametrize("hostile", ["=HYPERLINK(\"http://x\")", "+1", "-1+1", "@SUM(A1)"])
def test_csv_never_starts_a_cell_with_a_formula(hostile: str) -> None:
    row = ReportRow(hostile, 1, 0, 0, Decimal(0), 0, keys=(hostile,))
    [parsed, _total] = list(csv.DictReader(io.StringIO(to_csv(single(row, "tenant")))))
    assert parsed["tenant"] == "'" + hostile
    # JSON is for programs: the value stays as it was.
    assert json.loads(to_json(single(row, "tenant")))["rows"][0]["tenant"] == hostile


@pytest.mark.parametrize(("key", "written"), [
    ("\rx", "\\x0dx"), ("a\rb", "a\\x0db"), ("\tx", "\\x09x"), ("\x1b[31mred", "\\x1b[31mred"),
    ("del\x7f", "del\\x7f"), ("c1\x9b", "c1\\x9b"), ("テナント", "テナント")])
def test_csv_writes_control_characters_escaped(key: str, written: str) -> None:
    """A bare CR would split the row in some readers, ESC reach a terminal: both escaped, as
    the table does; other text (non-ASCII tenants) stays as it is."""
    row = ReportRow(key, 1, 0, 0, Decimal(0), 0, keys=(key,))
    text = to_csv(single(row, "route"))
    [parsed, _total] = list(csv.DictReader(io.StringIO(text, newline="")))
    assert parsed["route"] == written and parsed["requests"] == "1"


def test_csv_quotes_commas_and_quotes() -> None:
    row = ReportRow('a,"b"', 1, 0, 0, Decimal("0.5"), 0, keys=('a,"b"',))
    [parsed, _total] = list(csv.DictReader(io.StringIO(to_csv(single(row, "route")))))
    assert parsed["route"] == 'a,"b"' and parsed["cost_usd"] == "0.5"


# -- through the command line ------------------------------------------------------------------


def use_database(url: str, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line's environment: ``url``, no StatsD, its files under ``tmp``."""
    monkeypatch.setenv("COST_MIDDLEWARE_DATABASE_URL", url)
    monkeypatch.setenv("COST_MIDDLEWARE_SPOOL_DIR", str(tmp / "cli-spool"))
    monkeypatch.setenv("COST_MIDDLEWARE_STATSD", "off")
    monkeypatch.chdir(tmp)


@pytest.fixture
def cli_env(sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The command line on a SQLite ledger (its PostgreSQL use: at the end)."""
    write_ledger(sqlite_url, tmp_path, ledger_records())
    use_database(sqlite_url, tmp_path, monkeypatch)
    return sqlite_url


def test_cli_report_since_an_age(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--by", "tenant", "--since", "2d", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)["rows"]
    assert {d["tenant"]: (d["requests"], d["cost_usd"] and Decimal(d["cost_usd"]))
            for d in data} == {
        "acme": (11, Decimal("1.000126")), "globex": (1, None), "(none)": (1, None)}


def test_cli_report_since_a_date(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    since = (NOW - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert main(["report", "--by", "model", "--since", since, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["model"], r["requests"]) for r in rows] == [
        ("alpha", "11"), ("beta", "1"), ("mystery-1", "1"), ("total", "13")]


def test_cli_report_refuses_a_bad_since(cli_env: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["report", "--since", "yesterday"])
    assert "not an ISO date/time: 'yesterday'" in capsys.readouterr().err


def test_cli_report_on_postgresql_releases_its_connection(
        pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    write_ledger(pg_url, tmp_path, ledger_records())
    use_database(pg_url, tmp_path, monkeypatch)
    assert main(["report", "--by", "provider", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)["rows"]
    assert {d["provider"]: d["cost_usd"] and Decimal(d["cost_usd"]) for d in data} == {
        "acme": Decimal("1.00028845"), "other": None}
    gc.collect()  # a connection still open is reported here, as a warning (an error here)


# -- the flags of a report over rollups ---------------------------------------------------------


def test_several_keys_keep_providers_apart(db_url: str, tmp_path: Path) -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=0)
    write_ledger(db_url, tmp_path, [
        _record("alpha", usage, tenant="t", route="/r"),
        _record("alpha", usage, tenant="t", route="/r", provider="other")])
    engine = make_engine(db_url)
    try:
        rows = summarize(engine, "provider,model")
        assert [(r.keys, r.cost_usd) for r in rows] == [
            (("acme", "alpha"), Decimal(1)), (("other", "alpha"), None)]
        assert [r.key for r in rows] == ["acme / alpha", "other / alpha"]
    finally:
        engine.dispose()


def test_until_filters_limit_and_a_daily_series(ledger: Ledger) -> None:
    report = build_report(ledger.engine, "day,model", until=NOW - timedelta(days=2))
    assert [(r.keys, r.requests) for r in report.rows] == [
        ((f"{OLD:%Y-%m-%d}", "beta"), 3)]
    assert build_report(ledger.engine, "model", tenant="acme").total.requests == 11
    assert build_report(ledger.engine, "tenant", model="beta", route="/v1/messages",
                        provider="acme").total.requests == 4
    limited = build_report(ledger.engine, "model", limit=1)
    assert [r.key for r in limited.rows] == ["alpha"] and limited.omitted == 2
    assert limited.total.requests == 16 and limited.total.unpriced == 2  # counts every group
    hourly = build_report(ledger.engine, "hour", since=NOW - timedelta(days=2))
    assert [r.requests for r in hourly.rows] == [13]
    assert hourly.rows[0].keys[0].endswith(":00:00Z")


def test_a_partial_hour_reads_the_records(ledger: Ledger) -> None:
    """Whole hours come from the rollups, the cut ones at either end from the records: the
    totals are the same wherever the period starts."""
    for minutes in (0, 1, 59, 61, 119):
        since = OLD - timedelta(minutes=minutes)
        report = build_report(ledger.engine, "tenant", since, NOW + timedelta(seconds=1))
        assert report.total.requests == 16 and report.total.cost_usd == Decimal("1.00028845")
    assert build_report(ledger.engine, "model", RECENT, RECENT + timedelta(microseconds=1)
                        ).total.requests == 13


def test_cli_report_flags(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--by", "provider,model", "--tenant", "acme", "--limit", "1",
                 "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["by"] == ["provider", "model"] and data["filters"] == {"tenant": "acme"}
    assert [(d["provider"], d["model"]) for d in data["rows"]] == [("acme", "alpha")]
    assert data["omitted"] == 1 and data["total"]["requests"] == 11
    assert main(["report", "--by", "day", "--until", "1d"]) == 0
    text = capsys.readouterr().out
    assert f"{OLD:%Y-%m-%d}" in text and "reasoning tok" in text
    assert main(["report", "--by", "model"]) == 0
    table, chart = [line for line in capsys.readouterr().out.splitlines() if "mystery-1" in line]
    assert "unknown" in table and "$0" not in table and "unknown" in chart


def test_cli_report_refuses_bad_keys(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--by", "day,hour"]) == 2
    assert "one of day and hour" in capsys.readouterr().err
    assert main(["report", "--by", "model,model"]) == 2
    with pytest.raises(SystemExit):
        main(["report", "--limit", "0"])
