"""Terminal output with rich: report tables and bar charts. Untrusted text is never markup."""

from __future__ import annotations

from decimal import Decimal

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cost_middleware.ops.report import ReportRow

BAR_WIDTH = 40


def money(value: Decimal) -> str:
    if value == 0:
        return "$0"
    if abs(value) >= 1:
        return f"${value:,.4f}"
    return f"${value:.6f}"


def _safe(value: str, limit: int = 60) -> Text:
    # Text() is not parsed for markup; control characters are shown escaped.
    cleaned = value.encode("unicode_escape", "backslashreplace").decode("ascii")
    return Text(cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…")


def report_table(rows: list[ReportRow], by: str, title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(by)
    table.add_column("requests", justify="right")
    table.add_column("input tok", justify="right")
    table.add_column("output tok", justify="right")
    table.add_column("cost", justify="right")
    table.add_column("unpriced", justify="right")
    total = Decimal(0)
    for r in rows:
        total += r.cost_usd
        table.add_row(_safe(r.key), f"{r.requests:,}", f"{r.input_tokens:,}",
                      f"{r.output_tokens:,}", money(r.cost_usd),
                      f"{r.unpriced:,}" if r.unpriced else "")
    table.add_section()
    table.add_row("total", f"{sum(r.requests for r in rows):,}",
                  f"{sum(r.input_tokens for r in rows):,}",
                  f"{sum(r.output_tokens for r in rows):,}", money(total), "")
    return table


def bar_chart(rows: list[ReportRow], limit: int = 15) -> Table:
    """Horizontal bars of cost per key, largest first."""
    chart = Table.grid(padding=(0, 1))
    chart.add_column()
    chart.add_column()
    chart.add_column(justify="right")
    top = rows[:limit]
    peak = max((r.cost_usd for r in top), default=Decimal(0))
    for r in top:
        width = int(r.cost_usd / peak * BAR_WIDTH) if peak > 0 else 0
        bar = Text("█" * width or "▏", style="cyan")
        chart.add_row(_safe(r.key, 32), bar, money(r.cost_usd))
    return chart


def print_report(console: Console, rows: list[ReportRow], by: str, title: str) -> None:
    if not rows:
        console.print("No records yet.")
        return
    console.print(report_table(rows, by, title))
    console.print(bar_chart(rows))
