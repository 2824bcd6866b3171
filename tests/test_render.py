"""Terminal output of reports (rich), and the report command's three formats as printed."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from pathlib import Path

import pytest
from rich.console import Console
from test_report import cli_env as cli_env
from test_report import use_database

from cost_middleware.ops.cli import main
from cost_middleware.ops.render import BAR_WIDTH, bar_chart, money, print_report, report_table
from cost_middleware.ops.report import Report, ReportRow, build_report, to_csv, to_json
from cost_middleware.storage.engine import make_engine

ROWS = [
    ReportRow("alpha", 11, 1_000_000, 0, Decimal("1.000000000000"), 1),
    ReportRow("beta", 4, 1999, 31, Decimal("0.00028845"), 0),
    ReportRow("mystery-1", 1, 50, 50, Decimal(0), 1),
]


def render(renderable: object, width: int = 160) -> str:
    """What a piped ``cost-middleware`` prints (the CLI's console is 160 wide off a tty)."""
    out = io.StringIO()
    Console(file=out, width=width).print(renderable)
    return out.getvalue()


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def cells(line: str) -> list[str]:
    """The cells of one table row (header rows use ``┃``)."""
    return [c.strip() for c in line.strip()[1:-1].replace("┃", "│").split("│")]


# -- money -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "shown"), [
    ("0", "$0"), ("0E-12", "$0"), ("0.000000000000", "$0"),
    ("0.00028845", "$0.000288"), ("0.0000005", "$0.000000"), ("0.999999", "$0.999999"),
    ("1", "$1.0000"), ("1.000000000000", "$1.0000"), ("1234.56789", "$1,234.5679"),
    ("1000000", "$1,000,000.0000"),
])
def test_money(value: str, shown: str) -> None:
    assert money(Decimal(value)) == shown


# -- the table --------------------------------------------------------------------------------


def test_report_table_rows_and_total() -> None:
    text = render(report_table(ROWS, "model", "Cost by model"))
    assert text.splitlines()[0].strip() == "Cost by model"
    [header] = lines_with(text, "requests")
    assert cells(header) == ["model", "requests", "input tok", "cached tok", "output tok",
                             "reasoning tok", "cost", "unpriced"]
    assert cells(lines_with(text, "alpha")[0]) == ["alpha", "11", "1,000,000", "0", "0", "0",
                                                   "$1.0000", "1"]
    # No unpriced requests: the cell stays empty rather than showing 0.
    assert cells(lines_with(text, "beta")[0]) == ["beta", "4", "1,999", "0", "31", "0",
                                                  "$0.000288", ""]
    assert cells(lines_with(text, "mystery-1")[0]) == ["mystery-1", "1", "50", "0", "50", "0",
                                                       "$0", "1"]
    # The total adds the exact amounts, then rounds for display, and counts the unpriced.
    assert cells(lines_with(text, "total")[0]) == ["total", "16", "1,002,049", "0", "81", "0",
                                                   "$1.0003", "2"]
    rows_at = [text.index(k) for k in ("alpha", "beta", "mystery-1", "total")]
    assert rows_at == sorted(rows_at)


def test_report_table_without_a_title() -> None:
    text = render(report_table(ROWS[:1], "tenant"))
    assert text.splitlines()[0].startswith("┏")
    assert cells(lines_with(text, "requests")[0])[0] == "tenant"


def test_untrusted_names_are_never_markup() -> None:
    rows = [ReportRow("[bold red]evil[/bold red]", 1, 1, 1, Decimal(1), 0),
            ReportRow("[link=http://x]click[/link]", 1, 1, 1, Decimal(0), 0)]
    for renderable in (report_table(rows, "tenant"), bar_chart(rows)):
        out = io.StringIO()
        Console(file=out, width=160, force_terminal=True, color_system="truecolor").print(
            renderable)
        text = out.getvalue()
        assert "[bold red]evil[/bold red]" in text and "[link=http://x]click[/link]" in text
        assert "\x1b]8;" not in text  # no hyperlink escape was made from the name


def test_control_characters_are_shown_escaped() -> None:
    rows = [ReportRow("a\x1b[2Jb\nc\td\u202ee", 1, 0, 0, Decimal(0), 0)]
    for renderable in (report_table(rows, "route"), bar_chart(rows)):
        text = render(renderable)
        assert "\x1b" not in text and "\u202e" not in text and "\t" not in text
        assert r"a\x1b[2Jb\nc\td\u202ee" in text


def test_long_names_are_cut_with_an_ellipsis() -> None:
    rows = [ReportRow("m" * 70, 1, 0, 0, Decimal(1), 0)]
    table = render(report_table(rows, "model"))
    assert "m" * 59 + "…" in table and "m" * 60 not in table
    chart = render(bar_chart(rows))
    assert "m" * 31 + "…" in chart and "m" * 32 not in chart


def test_a_name_exactly_at_the_limit_is_kept_whole() -> None:
    rows = [ReportRow("m" * 60, 1, 0, 0, Decimal(1), 0)]
    assert "m" * 60 in render(report_table(rows, "model"))


# -- the bar chart ------------------------------------------------------------------------------


def test_bars_are_proportional_to_cost() -> None:
    rows = [ReportRow("big", 1, 0, 0, Decimal("0.8"), 0),
            ReportRow("half", 1, 0, 0, Decimal("0.4"), 0),
            ReportRow("tiny", 1, 0, 0, Decimal("0.001"), 0),
            ReportRow("free", 1, 0, 0, Decimal(0), 0)]
    text = render(bar_chart(rows))
    bars = {name: lines_with(text, name)[0].count("█") for name in ("big", "half", "tiny", "free")}
    assert bars == {"big": BAR_WIDTH, "half": BAR_WIDTH // 2, "tiny": 0, "free": 0}
    # A cost too small for a block, or none, still gets a sliver, so every row has a bar.
    assert "▏" in lines_with(text, "tiny")[0] and "▏" in lines_with(text, "free")[0]
    assert lines_with(text, "big")[0].rstrip().endswith("$0.800000")


def test_bars_when_nothing_cost_anything() -> None:
    rows = [ReportRow("a", 1, 0, 0, Decimal(0), 1), ReportRow("b", 1, 0, 0, Decimal(0), 1)]
    text = render(bar_chart(rows))
    assert "█" not in text and text.count("▏") == 2


def test_the_chart_shows_the_first_rows_only() -> None:
    rows = [ReportRow(f"k{i:02d}", 1, 0, 0, Decimal(30 - i), 0) for i in range(20)]
    text = render(bar_chart(rows))
    assert "k00" in text and "k14" in text and "k15" not in text
    assert len(text.splitlines()) == 15
    assert len(render(bar_chart(rows, limit=3)).splitlines()) == 3


# -- print_report --------------------------------------------------------------------------------


def test_print_report_prints_the_table_then_the_chart() -> None:
    out = io.StringIO()
    print_report(Console(file=out, width=160), ROWS, "model", "Cost by model")
    text = out.getvalue()
    assert text.startswith("Cost by model")
    assert text.index("total") < text.index("█")
    assert len(lines_with(text, "alpha")) == 2  # a table row and a bar


def test_print_report_without_rows() -> None:
    out = io.StringIO()
    print_report(Console(file=out, width=160), [], "model", "Cost by model")
    assert out.getvalue() == "No records yet.\n"


# -- the report command, as printed ----------------------------------------------------------------


def report_of(url: str, by: str) -> Report:
    engine = make_engine(url)
    try:
        return build_report(engine, by)
    finally:
        engine.dispose()


def test_cli_table(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--by", "tenant"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Cost by tenant")
    assert cells(lines_with(text, "acme")[0]) == ["acme", "11", "1,001,000", "400", "10", "0",
                                                  "$1.0001", ""]
    assert cells(lines_with(text, "globex")[0]) == ["globex", "4", "999", "0", "21", "0",
                                                    "$0.000162", "1"]
    # Nothing of it priced: unknown, not $0.
    assert cells(lines_with(text, "(none)")[0]) == ["(none)", "1", "50", "0", "50", "0",
                                                    "unknown", "1"]
    assert cells(lines_with(text, "total")[0]) == ["total", "16", "1,002,049", "400", "81",
                                                   "0", "$1.0003", "2"]
    assert all(len(line) <= 160 for line in text.splitlines())


def test_cli_csv_is_exactly_to_csv(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--by", "route", "--format", "csv"]) == 0
    text = capsys.readouterr().out
    assert text == to_csv(report_of(cli_env, "route"))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["route"], r["requests"], Decimal(r["cost_usd"])) for r in rows] == [
        ("/v1/chat/completions", "12", Decimal(1)), ("/v1/messages", "4", Decimal("0.00028845")),
        ("total", "16", Decimal("1.00028845"))]
    assert "│" not in text and "$" not in text  # no table, no display rounding


def test_cli_json_is_exactly_to_json(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--format", "json"]) == 0
    text = capsys.readouterr().out
    assert text == to_json(report_of(cli_env, "model")) + "\n"
    assert [d["model"] for d in json.loads(text)["rows"]] == ["alpha", "beta", "mystery-1"]


def test_cli_table_on_an_empty_ledger(sqlite_url: str, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    use_database(sqlite_url, tmp_path, monkeypatch)
    assert main(["init"]) == 0  # report reads a ledger, never creates one
    capsys.readouterr()
    assert main(["report"]) == 0
    assert capsys.readouterr().out == "No records yet.\n"
    assert main(["report", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == []
