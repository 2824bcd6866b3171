"""Terminal output with rich: report tables and bar charts. Untrusted text is never markup."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cost_middleware.ops.report import Report, ReportRow

BAR_WIDTH = 40


def money(value: Decimal | None) -> str:
    """Dollars for people; None (no record of the group is priced) is "unknown", never $0."""
    if value is None:
        return "unknown"
    if value == 0:
        return "$0"
    if abs(value) >= 1:
        return f"${value:,.4f}"
    return f"${value:.6f}"


def _safe(value: str, limit: int = 60) -> Text:
    # Text() is not parsed for markup; control characters are shown escaped.
    cleaned = value.encode("unicode_escape", "backslashreplace").decode("ascii")
    return Text(cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…")


def report_table(rows: list[ReportRow], by: str | Sequence[str], title: str | None = None,
                 total: ReportRow | None = None) -> Table:
    """The rows and a total line (``total``, else the rows' own sum)."""
    table = Table(title=title, title_justify="left")
    table.add_column(by if isinstance(by, str) else " / ".join(by))
    for name in ("requests", "input tok", "cached tok", "output tok", "reasoning tok", "cost",
                 "unpriced"):
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(_safe(r.key), *_figures(r))
    table.add_section()
    table.add_row("total", *_figures(total or _sum(rows)))
    return table


def _figures(r: ReportRow) -> list[str]:
    return [f"{r.requests:,}", f"{r.input_tokens:,}", f"{r.cached_input_tokens:,}",
            f"{r.output_tokens:,}", f"{r.reasoning_tokens:,}", money(r.cost_usd),
            f"{r.unpriced:,}" if r.unpriced else ""]


def _sum(rows: list[ReportRow]) -> ReportRow:
    costs = [r.cost_usd for r in rows if r.cost_usd is not None]
    return ReportRow(
        "total", sum(r.requests for r in rows), sum(r.input_tokens for r in rows),
        sum(r.output_tokens for r in rows),
        sum(costs, Decimal(0)) if costs or not rows else None, sum(r.unpriced for r in rows),
        sum(r.cached_input_tokens for r in rows), sum(r.cache_write_input_tokens for r in rows),
        sum(r.reasoning_tokens for r in rows), sum(r.no_usage for r in rows))


def bar_chart(rows: list[ReportRow], limit: int = 15) -> Table:
    """Horizontal bars of cost per key, largest first."""
    chart = Table.grid(padding=(0, 1))
    chart.add_column()
    chart.add_column()
    chart.add_column(justify="right")
    top = rows[:limit]
    peak = max((r.cost_usd for r in top if r.cost_usd is not None), default=Decimal(0))
    for r in top:
        cost = r.cost_usd or Decimal(0)
        width = int(cost / peak * BAR_WIDTH) if peak > 0 else 0
        bar = Text("█" * width or "▏", style="cyan")
        chart.add_row(_safe(r.key, 32), bar, money(r.cost_usd))
    return chart


def print_report(console: Console, rows: list[ReportRow] | Report, by: str | Sequence[str],
                 title: str) -> None:
    """A report's table, then its bar chart (none for a time series: its rows are in time
    order, not cost order)."""
    report = rows if isinstance(rows, Report) else None
    shown = rows.rows if isinstance(rows, Report) else rows
    if not shown:
        console.print("No records yet.")
        return
    console.print(report_table(shown, by, title, report.total if report else None))
    if report is not None and report.omitted:
        console.print(f"{report.omitted:,} more group(s) left out by --limit; the total "
                      "counts them.")
    if not (report and {"day", "hour"} & set(report.by)):
        console.print(bar_chart(shown))
