"""The ``cost-middleware`` command (also ``python -m cost_middleware``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from cost_middleware.config import ConfigError, Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from cost_middleware.pricing.price import Price


class UsageError(Exception):
    """A bad command-line value; printed without a traceback."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # Everything after "bench" belongs to the benchmark runner, options included.
        return run_benchmarks(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    # Piped output (reports into files, CI logs) gets room for full model names.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    try:
        settings = Settings.from_env()
        result: int = args.run(args, settings, console)
        return result
    except (ConfigError, UsageError, ValueError) as exc:
        Console(stderr=True).print(f"[red]error:[/] {_plain(str(exc))}", highlight=False)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cost-middleware",
        description="Prices every AI-provider call flowing through your app. "
                    "Reads the same COST_MIDDLEWARE_* variables as the middleware.",
    )
    sub = parser.add_subparsers(required=True, metavar="command")

    p = sub.add_parser("init", help="create the tables and seed prices from the bundled catalog")
    p.set_defaults(run=cmd_init)

    p = sub.add_parser("demo", help="send mixed provider traffic through the middleware, report")
    p.add_argument("--requests", type=int, default=3000, help="number of calls (default 3000)")
    p.set_defaults(run=cmd_demo)

    prices = sub.add_parser("prices", help="list, show, set, load or export model prices")
    psub = prices.add_subparsers(required=True, metavar="action")
    p = psub.add_parser("list", help="current price of every model")
    p.add_argument("--provider")
    p.set_defaults(run=cmd_prices_list)
    p = psub.add_parser("show", help="price history of one model")
    p.add_argument("provider")
    p.add_argument("model")
    p.set_defaults(run=cmd_prices_show)
    p = psub.add_parser("set", help="set a model's price (USD per 1M tokens)")
    p.add_argument("provider")
    p.add_argument("model")
    p.add_argument("--input", required=True, type=_decimal)
    p.add_argument("--output", required=True, type=_decimal)
    p.add_argument("--cached-input", type=_decimal)
    p.add_argument("--cache-write", type=_decimal, help="5-minute cache write rate")
    p.add_argument("--cache-write-1h", type=_decimal)
    p.add_argument("--web-search-per-1k", type=_decimal)
    p.add_argument("--effective-from", type=_datetime, help="ISO date/time (UTC); default now")
    p.set_defaults(run=cmd_prices_set)
    p = psub.add_parser("load", help="load a catalog JSON file")
    p.add_argument("file", type=Path)
    p.add_argument("--replace", action="store_true", help="replace rows with the same key")
    p.set_defaults(run=cmd_prices_load)
    p = psub.add_parser("export", help="write the price table as catalog JSON")
    p.add_argument("--output", "-o", type=Path, help="file (default: stdout)")
    p.set_defaults(run=cmd_prices_export)

    p = sub.add_parser("report", help="cost by model, tenant, route or provider")
    p.add_argument("--by", default="model", choices=("model", "tenant", "route", "provider"))
    p.add_argument("--since", type=_since, help="ISO date/time, or an age like 24h, 7d")
    p.add_argument("--format", default="table", choices=("table", "csv", "json"))
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("reprice", help="price records that were unpriced, or re-price a period")
    p.add_argument("--since", type=_since, required=True)
    p.add_argument("--only-unpriced", action="store_true")
    p.set_defaults(run=cmd_reprice)

    p = sub.add_parser("doctor", help="check the database, Redis notifications and StatsD")
    p.set_defaults(run=cmd_doctor)

    spool = sub.add_parser("spool", help="records waiting on disk for the database")
    ssub = spool.add_subparsers(required=True, metavar="action")
    p = ssub.add_parser("status")
    p.set_defaults(run=cmd_spool_status)
    p = ssub.add_parser("replay")
    p.set_defaults(run=cmd_spool_replay)

    sub.add_parser("bench", help="run the benchmarks (from a source checkout); "
                   "arguments go to benchmarks/run.py")
    return parser


# -- value parsers ---------------------------------------------------------------------


def _decimal(value: str) -> Decimal:
    try:
        result = Decimal(value)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a decimal number: {value!r}") from None
    if not result.is_finite() or result < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number: {value!r}")
    return result


def _datetime(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date/time: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _since(value: str) -> datetime:
    units = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    if value[:-1].isdigit() and value[-1:] in units:
        return datetime.now(UTC) - timedelta(**{units[value[-1]]: int(value[:-1])})
    return _datetime(value)


def _plain(text: str) -> str:
    from rich.markup import escape

    return escape(text)


# -- commands --------------------------------------------------------------------------


def _engine(settings: Settings) -> Engine:
    from cost_middleware.pricing.admin import ensure_seeded
    from cost_middleware.storage.sql import ensure_schema, make_engine

    engine = make_engine(settings.database_url)
    ensure_schema(engine)
    if settings.prices_file is None:
        ensure_seeded(engine)
    return engine


def _notifier(settings: Settings) -> Callable[[str, str], None] | None:
    from cost_middleware.pricing.sync import make_notifier

    return make_notifier(settings)


def cmd_init(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.pricing.admin import ensure_seeded
    from cost_middleware.storage.sql import ensure_schema, make_engine

    engine = make_engine(settings.database_url)
    ensure_schema(engine)
    added = ensure_seeded(engine)
    console.print(f"Tables ready; {added} price rows seeded from the bundled catalog."
                  if added else "Tables ready; prices were already present.")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.ops.demo import main as demo

    if args.requests < 1:
        raise UsageError("--requests must be at least 1")
    demo(args.requests, settings, console)
    return 0


def _price_table(prices: Sequence[Price], title: str) -> Table:
    from cost_middleware.ops.render import _safe

    table = Table(title=title, title_justify="left")
    for name in ("provider", "model", "input", "cached", "write 5m", "write 1h", "output",
                 "effective from", "version"):
        table.add_column(name, justify="left" if name in ("provider", "model") else "right")

    def rate(value: Decimal | None) -> str:
        return "" if value is None else f"{value.normalize():f}"

    for p in prices:
        table.add_row(_safe(p.provider), _safe(p.model), rate(p.input), rate(p.cached_input),
                      rate(p.cache_write), rate(p.cache_write_1h), rate(p.output),
                      p.effective_from.strftime("%Y-%m-%d"), str(p.version))
    return table


def cmd_prices_list(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.pricing.admin import list_prices

    prices = list_prices(_engine(settings), args.provider)
    console.print(_price_table(prices, "Current prices (USD per 1M tokens)"))
    return 0


def cmd_prices_show(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.pricing.admin import show_price

    history = show_price(_engine(settings), args.provider, args.model)
    if not history:
        console.print("No price for that model.")
        return 1
    console.print(_price_table(history, "Price history (USD per 1M tokens)"))
    return 0


def cmd_prices_set(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.pricing.admin import set_price

    price = set_price(
        _engine(settings), args.provider, args.model,
        input=args.input, output=args.output, cached_input=args.cached_input,
        cache_write=args.cache_write, cache_write_1h=args.cache_write_1h,
        web_search_per_1k=args.web_search_per_1k, effective_from=args.effective_from,
        on_change=_notifier(settings),
    )
    console.print(_price_table([price], "Price set"))
    return 0


def cmd_prices_load(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.pricing.admin import load_catalog

    added = load_catalog(_engine(settings), args.file, replace=args.replace,
                         on_change=_notifier(settings))
    console.print(f"{added} price rows loaded.")
    return 0


def cmd_prices_export(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.pricing.admin import export_catalog

    text = json.dumps(export_catalog(_engine(settings)), indent=2) + "\n"
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_report(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.ops.render import print_report
    from cost_middleware.ops.report import summarize, to_csv, to_json

    rows = summarize(_engine(settings), args.by, args.since)
    if args.format == "csv":
        sys.stdout.write(to_csv(rows, args.by))
    elif args.format == "json":
        sys.stdout.write(to_json(rows, args.by) + "\n")
    else:
        print_report(console, rows, args.by, f"Cost by {args.by}")
    return 0


def cmd_reprice(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.metrics import Metrics
    from cost_middleware.pricing.admin import reprice
    from cost_middleware.pricing.book import PriceBook

    engine = _engine(settings)
    book = PriceBook.from_settings(settings, engine, Metrics(settings.with_overrides(
        statsd_enabled=False)))
    count = reprice(engine, book, args.since, only_unpriced=args.only_unpriced)
    console.print(f"{count} records priced.")
    return 0


def cmd_doctor(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.ops.doctor import run_checks

    ok = True
    for check in run_checks(settings):
        mark = "[green]ok[/]" if check.ok else ("[yellow]warn[/]" if check.warning
                                                  else "[red]FAIL[/]")
        console.print(f"{mark}  {check.name}: ", _plain(check.detail), sep="", highlight=False)
        ok = ok and (check.ok or check.warning)
    return 0 if ok else 1


def cmd_spool_status(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.engine.spool import Spool

    status = Spool(settings.spool_dir).status()
    console.print(f"{status.records:,} records in {status.files} file(s), "
                  f"{status.bytes:,} bytes, in {settings.spool_dir}")
    return 0


def cmd_spool_replay(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.engine.batcher import ReplaySink
    from cost_middleware.engine.spool import Spool
    from cost_middleware.engine.tracker import CostTracker
    from cost_middleware.storage.sql import SQLSink

    # Records spooled during an outage may be unpriced: price them on the way in, as the
    # middleware's own replay does.
    tracker = CostTracker(settings.with_overrides(statsd_enabled=False))
    sink = SQLSink(tracker.engine)
    try:
        count = Spool(settings.spool_dir).replay(
            ReplaySink(sink, tracker.price_batch, lambda records: None))
    finally:
        sink.close()
        tracker.close()
    console.print(f"{count:,} records replayed into the database.")
    return 0


def run_benchmarks(args: list[str]) -> int:
    import runpy

    script = Path.cwd() / "benchmarks" / "run.py"
    if not script.exists():
        Console(stderr=True).print("[red]error:[/] benchmarks/run.py not found: run this from "
                                   "a source checkout")
        return 2
    sys.argv = [str(script), *args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as done:
        return int(done.code or 0)
    return 0
