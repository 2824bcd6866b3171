"""The ``cost-middleware`` command (also ``python -m cost_middleware``)."""

from __future__ import annotations

import argparse
import json
import sys
import typing
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from cost_middleware.config import ConfigError, Settings
from cost_middleware.utc import as_utc

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from cost_middleware.engine.spool import SpoolStatus
    from cost_middleware.pricing.book import PriceBook
    from cost_middleware.pricing.check import Finding
    from cost_middleware.pricing.price import Price
    from cost_middleware.pricing.unpriced import UnpricedGroup


class UsageError(Exception):
    """A bad command-line value; printed without a traceback."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (the usage is one ``--help`` away)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: Exit statuses, documented in ``--help`` (EXIT_STATUS) and the README.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_STATUS = """exit status:
  0  success
  1  a check failed, nothing was found, or an action was refused (e.g. doctor), or
     something was found (prices resolve: no row prices the name; prices check)
  2  usage or input error: a bad option, variable, file or catalog; a ledger to migrate
  3  the ledger cannot be read: database unreachable or missing, driver not installed,
     or no ledger at that URL (read-only commands never create one)"""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # Everything after "bench" belongs to the benchmark runner, options included.
        return run_benchmarks(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    # Piped output (reports into files, CI logs) gets room for full model names.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    settings: Settings | None = None
    try:
        settings = Settings.from_env()
        result: int = args.run(args, settings, console)
        return result
    except (ConfigError, UsageError, ValueError) as exc:
        return _error(str(exc), EXIT_USAGE)
    except OSError as exc:  # a file named on the command line: missing, unreadable, a folder
        return _error(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc),
                      EXIT_USAGE)
    except Exception as exc:
        from cost_middleware.engine.ledger import unreachable

        problem = None if settings is None else unreachable(settings.database_url, exc)
        if problem is None:
            raise  # a bug: its traceback is what a report needs
        return _error(problem, EXIT_UNREACHABLE)
    finally:
        while _opened:
            _opened.pop().dispose()


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cost-middleware",
        description="Prices every AI-provider call flowing through your app.\n"
                    "Reads the same COST_MIDDLEWARE_* variables as the middleware.",
        epilog=EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="print the version and exit")
    sub = parser.add_subparsers(required=True, metavar="command")

    p = sub.add_parser("init", help="create the tables and seed prices from the bundled catalog")
    p.set_defaults(run=cmd_init)

    p = sub.add_parser("demo", help="send mixed provider traffic through the middleware, report")
    p.add_argument("--requests", type=int, default=3000,
                   help="provider calls to send through the middleware (default %(default)s)")
    p.set_defaults(run=cmd_demo)

    prices = sub.add_parser("prices", help="model prices: list, show, set, import, resolve, "
                                           "check, delete, load, export")
    psub = prices.add_subparsers(required=True, metavar="action")
    p = psub.add_parser("list", help="current price of every model")
    p.add_argument("--provider", help="only this provider's models (default: every provider)")
    p.set_defaults(run=cmd_prices_list)
    p = psub.add_parser("show", help="price history of one model")
    p.add_argument("provider", help="provider name as the ledger stores it, e.g. openai")
    p.add_argument("model", help="model name as the provider reports it, e.g. gpt-4o")
    p.set_defaults(run=cmd_prices_show)
    p = psub.add_parser("set", help="set a model's price (USD per 1M tokens)")
    p.add_argument("provider", help="provider name as the ledger stores it, e.g. openai")
    p.add_argument("model", help="model name as the provider reports it, e.g. gpt-4o")
    p.add_argument("--input", type=_decimal, metavar="USD",
                   help="USD per 1M input tokens (required for a model's first row; "
                        "default: the rate of the row in effect)")
    p.add_argument("--output", type=_decimal, metavar="USD",
                   help="USD per 1M output tokens, reasoning included (required for a model's "
                        "first row; default: the rate of the row in effect)")
    p.add_argument("--cached-input", type=_decimal, metavar="USD",
                   help="USD per 1M cached input tokens (unset: the input rate)")
    p.add_argument("--cache-write", type=_decimal, metavar="USD",
                   help="USD per 1M tokens written to a 5-minute cache (unset: the input rate)")
    p.add_argument("--cache-write-1h", type=_decimal, metavar="USD",
                   help="USD per 1M tokens written to a 1-hour cache (unset: the input rate)")
    p.add_argument("--web-search-per-1k", type=_decimal, metavar="USD",
                   help="USD per 1,000 web searches (unset: not charged)")
    p.add_argument("--effective-from", type=_datetime, metavar="WHEN",
                   help="when the price takes effect: an ISO date/time, UTC unless it has an "
                        "offset (default: now; a model's first row: the epoch, so it also "
                        "prices the model's earlier records)")
    p.set_defaults(run=cmd_prices_set)
    p = psub.add_parser("load", help="load a catalog JSON file (docs/PRICES.md)")
    p.add_argument("file", help="the catalog file, or - to read it from stdin")
    p.add_argument("--replace", action="store_true",
                   help="also delete the rows the catalog does not list (default: keep them)")
    p.set_defaults(run=cmd_prices_load)
    p = psub.add_parser("export", help="write the price table as catalog JSON")
    p.add_argument("--output", "-o", type=Path, metavar="FILE",
                   help="write to this file (default: stdout)")
    p.set_defaults(run=cmd_prices_export)
    _add_prices_import(psub)
    _add_prices_workflow(psub)

    p = sub.add_parser("report", help="cost by model, tenant, route or provider, or over time")
    p.add_argument("--by", default="model", metavar="KEYS",  # checked by the report
                   help="what to total the cost by: one or more of model, tenant, route, "
                        "provider, with day or hour for a time series, comma-separated, e.g. "
                        "provider,model or day,tenant (default: model)")
    p.add_argument("--since", type=_since, metavar="WHEN",
                   help=f"only records from then on: {SINCE_FORMS} (default: every record)")
    p.add_argument("--until", type=_since, metavar="WHEN",
                   help="only records before then, in the same forms (default: no end)")
    for name in ("tenant", "model", "provider", "route"):
        p.add_argument(f"--{name}", metavar=name.upper(),
                       help=f"only records of this {name} (exact match)")
    p.add_argument("--limit", type=_positive, metavar="N",
                   help="only the N most expensive groups (a time series alone: the latest N "
                        "buckets); the total still counts every record")
    p.add_argument("--format", default="table", choices=("table", "csv", "json"),
                   help="table for people, csv or json for tools, on stdout "
                        "(default: %(default)s)")
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("reprice", help="price records that were unpriced, or re-price a period")
    p.add_argument("--since", type=_since, required=True, metavar="WHEN",
                   help=f"records from then on (required): {SINCE_FORMS}")
    p.add_argument("--only-unpriced", action="store_true",
                   help="only records without a cost (default: re-price every record, keeping "
                        "the price version each used)")
    p.set_defaults(run=cmd_reprice)

    p = sub.add_parser("doctor", help="check the database, Redis notifications and StatsD")
    p.set_defaults(run=cmd_doctor)

    p = sub.add_parser("migrate", help="upgrade the ledger's schema to this version")
    p.set_defaults(run=cmd_migrate)

    spool = sub.add_parser("spool", help="records waiting on disk for the database "
                           "(COST_MIDDLEWARE_SPOOL_DIR)")
    ssub = spool.add_subparsers(required=True, metavar="action")
    p = ssub.add_parser("status", help="count the records waiting, and who holds their files")
    p.set_defaults(run=cmd_spool_status)
    p = ssub.add_parser("replay", help="write the waiting records into the database, pricing "
                        "them; files a running process holds are left to it")
    p.set_defaults(run=cmd_spool_replay)

    from cost_middleware.ops.dashboard_commands import add_dashboard  # light: argparse only
    add_dashboard(sub)
    from cost_middleware.ops.rollup_commands import add_rollups  # light: argparse only
    add_rollups(sub)
    from cost_middleware.ops.budget_commands import add_parsers as add_budgets  # light
    add_budgets(sub)

    sub.add_parser("bench", help="run the benchmarks (from a source checkout); "
                   "arguments go to benchmarks/run.py")
    _describe(parser)
    return parser


def _describe(parser: argparse.ArgumentParser) -> None:
    """Open each command's own --help with the line its parent lists it with."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                child = action.choices[choice.dest]
                child.description = child.description or choice.help
                _describe(child)


class _Version(argparse.Action):
    """``--version``, looked up only when asked (the package metadata is slow to load)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from cost_middleware import __version__

        sys.stdout.write(f"{parser.prog} {__version__}\n")
        parser.exit()


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
    return as_utc(parsed)


def _fraction(value: str) -> float:
    try:
        result = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0 <= result <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction from 0 to 1: {value!r}")
    return result


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1: {value!r}")
    return int(value)


#: What ``--since`` accepts, as its help and its error say.
SINCE_FORMS = ("an age in seconds, minutes, hours, days or weeks (30s, 15m, 24h, 7d, 2w) or an "
               "ISO date/time (2025-01-31, 2025-01-31T09:00:00Z; UTC unless it has an offset)")
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _age(value: str) -> timedelta:
    """An age such as ``90d`` (see :data:`_AGE_UNITS`)."""
    if not (value[:-1].isdigit() and value[-1:] in _AGE_UNITS):
        raise argparse.ArgumentTypeError(
            f"not an age: {value!r}; expected a number and a unit: 30s, 15m, 24h, 7d, 2w")
    try:
        return timedelta(**{_AGE_UNITS[value[-1]]: int(value[:-1])})
    except OverflowError:
        raise argparse.ArgumentTypeError(f"too long: {value!r}") from None


def _since(value: str) -> datetime:
    if value[:-1].isdigit() and value[-1:] in _AGE_UNITS:
        try:
            return datetime.now(UTC) - _age(value)
        except (OverflowError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(f"too far back: {value!r}") from None
    try:
        return _datetime(value)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc}; expected {SINCE_FORMS}") from None


def _plain(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _stderr() -> Console:
    # soft_wrap: a line piped into a log stays one line, whatever its length.
    return Console(stderr=True, soft_wrap=True, highlight=False)


def _error(message: str, code: int) -> int:
    """Print ``message`` as one error line on stderr; return the exit status ``code``."""
    _stderr().print(f"[red]error:[/] {_plain(message)}")
    return code


# -- commands --------------------------------------------------------------------------


#: Engines the running command opened, disposed when it ends (a pool left to the garbage
#: collector warns, and keeps PostgreSQL connections open until then).
_opened: list[Engine] = []


def _engine(settings: Settings) -> Engine:
    """The ledger for a command that writes: created (and seeded) if missing."""
    from cost_middleware.engine.ledger import open_ledger

    _announce(settings)
    engine = open_ledger(settings, strict=True)  # a ledger not yet migrated: say so, exit 2
    _opened.append(engine)
    return engine


def _reader(settings: Settings) -> Engine:
    """The ledger for a command that only reads: never created; none there is an error."""
    from cost_middleware.engine.ledger import read_ledger

    _announce(settings)
    engine = read_ledger(settings)
    _opened.append(engine)
    return engine


def _announce(settings: Settings) -> None:
    """Say which ledger the command uses, on stderr (stdout may be a CSV or JSON)."""
    from cost_middleware.engine.ledger import ledger_name

    _stderr().print(f"ledger: {ledger_name(settings.database_url)}", markup=False)


def _notifier(settings: Settings) -> Callable[[str, str], None] | None:
    from cost_middleware.pricing.redis_keys import make_notifier

    return make_notifier(settings)


def cmd_init(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.engine.ledger import open_ledger
    from cost_middleware.pricing.admin import ensure_seeded

    # Seeded here, whatever the price source, to report how many rows were added.
    _announce(settings)
    engine = open_ledger(settings, seed=False, strict=True)
    _opened.append(engine)
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

    prices = list_prices(_reader(settings), args.provider)
    console.print(_price_table(prices, "Current prices (USD per 1M tokens)"))
    return 0


def cmd_prices_show(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.pricing.admin import deleted_prices, show_price
    from cost_middleware.pricing.commands import PROG, iso
    from cost_middleware.pricing.resolve import resolve

    engine = _reader(settings)
    history = show_price(engine, args.provider, args.model)
    if history:
        console.print(_price_table(history, "Price history (USD per 1M tokens)"))
    for at, row in deleted_prices(engine, args.provider, args.model):
        console.print(f"deleted {iso(at)}: version {row.version}, from "
                      f"{iso(row.effective_from)} (input {row.input}, output {row.output})",
                      markup=False, highlight=False)
    if history:
        return 0
    book = _price_book(settings, engine)
    try:
        found = resolve(book, args.provider, args.model)
    finally:
        book.close()
    hint = f"`{PROG} prices resolve {_quoted(args.provider)} {_quoted(args.model)}` says why."
    if not found.history:
        console.print("No price for that model.")
        console.print(f"No row prices it under any name either: {hint}", markup=False,
                      highlight=False, soft_wrap=True)
        return 1
    row = found.history[0]
    console.print(f"{_shown(args.provider)}/{_shown(args.model)} has no rows of its own: it is "
                  f"priced through {_shown(row.provider)}/{_shown(row.model)}; {hint}",
                  markup=False, highlight=False, soft_wrap=True)
    console.print(_price_table(found.history, "Price history (USD per 1M tokens)"))
    return 0


def cmd_prices_set(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.pricing.admin import write_price
    from cost_middleware.pricing.commands import iso
    from cost_middleware.pricing.matching import PROVIDERS

    written = write_price(
        _engine(settings), args.provider, args.model,
        input=args.input, output=args.output, cached_input=args.cached_input,
        cache_write=args.cache_write, cache_write_1h=args.cache_write_1h,
        web_search_per_1k=args.web_search_per_1k, effective_from=args.effective_from,
        on_change=_notifier(settings),
    )
    price = written.price
    console.print(_price_table([price], "Price set"))
    flags = ", ".join(f"--{name.replace('_', '-')}" for name in written.given
                      if name != "effective_from")
    if written.base is None:
        console.print(f"First price of this model: set {flags}."
                      + (" It takes effect from the beginning (1970-01-01), so it also prices "
                         "the model's earlier records: run `cost-middleware reprice --since 7d "
                         "--only-unpriced` (or from its first record)."
                         if args.effective_from is None else ""), highlight=False)
    else:
        inherited = ", ".join(name.replace("_", " ") for name in written.inherited)
        console.print(f"Set {flags or 'nothing'}; inherited from version {written.base.version} "
                      f"(from {iso(written.base.effective_from)}): {inherited or 'nothing'}.",
                      highlight=False)
    if price.provider not in PROVIDERS:
        # Not a typo of ours (set_price refuses those), but worth saying what it prices.
        name = _plain(price.provider)
        console.print(f"note: {name} is not a provider the middleware reports; this price "
                      f"applies to records your code makes with record_usage(provider='{name}').",
                      highlight=False)
    return 0


def cmd_prices_load(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.pricing.admin import write_prices
    from cost_middleware.pricing.catalog import decode_catalog, parse_catalog
    from cost_middleware.pricing.price import PriceError

    # Read and checked before the ledger is opened: a bad catalog changes nothing anywhere.
    name = "stdin" if args.file == "-" else args.file
    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    decoded = decode_catalog(data, name)
    try:
        prices = parse_catalog(decoded, name)
    except PriceError as exc:  # an entry's error names the entry: add the file
        raise UsageError(str(exc) if exc.entry == name else f"{name}: {exc}") from None
    added = write_prices(_engine(settings), prices, replace=args.replace,
                         on_change=_notifier(settings))
    console.print(f"{added} price rows loaded.")
    return 0


def cmd_prices_export(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.pricing.admin import export_catalog

    text = json.dumps(export_catalog(_reader(settings)), indent=2) + "\n"
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _add_prices_import(psub: argparse._SubParsersAction[_Parser]) -> None:
    # Light modules only: every command builds this parser.
    from cost_middleware.pricing.imports.conversion import FORMATS
    from cost_middleware.pricing.imports.guards import DEFAULT_MAX_CHANGE

    p = psub.add_parser("import", help="import prices from a catalog, LiteLLM or genai-prices")
    p.add_argument("source", help="a file, - for stdin, or litellm / genai-prices for the data "
                                  "shipped inside that installed package")
    p.add_argument("--format", dest="source_format", choices=FORMATS,
                   help="the source's format (default: detected from the content)")
    p.add_argument("--dry-run", action="store_true", help="print the diff, write nothing")
    p.add_argument("--force", action="store_true", help="import even if a guard refuses")
    p.add_argument("--max-change", type=_fraction, default=DEFAULT_MAX_CHANGE,
                   metavar="FRACTION", help="refuse to change or drop more than this share of "
                   f"the priced models (default {DEFAULT_MAX_CHANGE})")
    p.add_argument("--verbose", "-v", action="store_true", help="list every row")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(run=cmd_prices_import)


def cmd_prices_import(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.pricing.imports.diff import as_json, describe
    from cost_middleware.pricing.imports.plan import apply_plan, plan_import

    engine = _engine(settings)
    plan = plan_import(engine, args.source, source_format=args.source_format,
                       max_change=args.max_change)
    refused = bool(plan.refusals) and not args.force
    written = 0
    if not args.dry_run and not refused:
        written = apply_plan(engine, plan, force=args.force, on_change=_notifier(settings))
    if args.json:
        report = {**as_json(plan), "dry_run": args.dry_run, "refused": refused,
                  "written": written}
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        for line in describe(plan, verbose=args.verbose):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        if args.dry_run:
            console.print("Dry run: nothing written.")
        elif not refused:
            console.print(f"{written:,} price rows written.")
    if refused:
        Console(stderr=True).print(
            f"[red]error:[/] import refused by {len(plan.refusals)} guard(s) (listed under "
            "'Refused'); nothing written. --force imports anyway.", highlight=False,
            soft_wrap=True)
        return 1
    return 0


def _add_prices_workflow(psub: argparse._SubParsersAction[_Parser]) -> None:
    p = psub.add_parser("resolve", help="which row prices a model as records report it, and "
                        "why (exit 1: none does)")
    p.add_argument("provider", help="provider name as the record reports it, e.g. "
                                    "openai_compatible")
    p.add_argument("model", help="model name as the record reports it, e.g. gpt-4o-2024-08-06")
    p.add_argument("--at", type=_datetime, metavar="WHEN",
                   help="price as of then: an ISO date/time, UTC unless it has an offset "
                        "(default: now)")
    p.set_defaults(run=cmd_prices_resolve)
    p = psub.add_parser("delete", help="remove a price row added by mistake (kept in the "
                        "audit trail; its version is never reused)")
    p.add_argument("provider", help="provider name of the row, as prices show lists it")
    p.add_argument("model", help="model name of the row, as prices show lists it")
    p.add_argument("--effective-from", type=_datetime, metavar="WHEN",
                   help="the row's start, as prices show lists it (needed when the model has "
                        "several rows)")
    p.set_defaults(run=cmd_prices_delete)
    p = psub.add_parser("check", help="models in the ledger not billed, or billed from stale "
                        "rows, each with its fix (exit 1 if any)")
    p.add_argument("--since", type=_since, default="7d", metavar="WHEN",
                   help=f"records from then on: {SINCE_FORMS} (default: 7d)")
    p.add_argument("--stale-after", type=_age, default="90d", metavar="AGE",
                   help="a row older than this is stale: 30d, 12w, ... (default: 90d)")
    p.add_argument("--format", default="table", choices=("table", "json"),
                   help="table for people, json for tools, on stdout (default: %(default)s)")
    p.set_defaults(run=cmd_prices_check)


def _quoted(name: str) -> str:
    import shlex

    return shlex.quote(name)


def _shown(text: str) -> str:
    """Untrusted text (names from the ledger) with control characters escaped."""
    from cost_middleware.ops.render import _safe

    return _safe(text, 10_000).plain


def cmd_prices_resolve(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.pricing.resolve import describe, resolve

    book = _price_book(settings, _reader(settings))
    try:
        found = resolve(book, args.provider, args.model, args.at)
    finally:
        book.close()
    for line in describe(found):
        console.print(_shown(line), markup=False, highlight=False, soft_wrap=True)
    return EXIT_OK if found.row is not None else EXIT_FAILED


def cmd_prices_delete(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.pricing.admin import delete_price
    from cost_middleware.pricing.commands import reprice_command

    row = delete_price(_engine(settings), args.provider, args.model,
                       effective_from=args.effective_from, on_change=_notifier(settings))
    console.print(_price_table([row], "Price row deleted (kept in model_price_deletions)"))
    console.print(f"Version {row.version} is never reused; records it priced keep their cost. "
                  f"To price them from the rows left: `{reprice_command(row.effective_from)}`.",
                  markup=False, highlight=False, soft_wrap=True)
    return EXIT_OK


def cmd_prices_check(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.ops.render import _safe, money
    from cost_middleware.pricing.check import check_prices
    from cost_middleware.pricing.commands import iso

    engine = _reader(settings)
    book = _price_book(settings, engine)
    try:
        findings = check_prices(engine, book, args.since, args.stale_after)
    finally:
        book.close()
    if args.format == "json":
        sys.stdout.write(json.dumps({
            "since": iso(args.since), "stale_after_days": args.stale_after.days,
            "findings": [_finding_json(f) for f in findings]}, indent=2) + "\n")
    elif not findings:
        console.print(f"Nothing to fix: every model seen since {iso(args.since)} is priced, "
                      f"from rows newer than {args.stale_after.days} days.", highlight=False)
    else:
        table = Table(title=f"Prices to fix (records since {iso(args.since)})",
                      title_justify="left")
        for name in ("finding", "provider", "model", "records", "billed", "detail"):
            table.add_column(name, justify="right" if name in ("records", "billed") else "left")
        for f in findings:
            table.add_row(f.kind, _safe(f.provider), _safe(f.model or "(no model)"),
                          f"{f.records:,}", "" if f.cost_usd is None else money(f.cost_usd),
                          _safe(f.detail, 200))
        console.print(table)
        console.print("To fix:")
        for fix in dict.fromkeys(f.fix for f in findings if f.fix):
            console.print(f"  {_shown(fix)}", markup=False, highlight=False, soft_wrap=True)
    return EXIT_FAILED if findings else EXIT_OK


def _finding_json(finding: Finding) -> dict[str, object]:
    from cost_middleware.pricing.commands import iso

    return {"kind": finding.kind, "provider": finding.provider, "model": finding.model,
            "records": finding.records, "first_at": iso(finding.first_at),
            "last_at": iso(finding.last_at),
            "cost_usd": None if finding.cost_usd is None else str(finding.cost_usd),
            "detail": finding.detail, "fix": finding.fix}


def cmd_report(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.ops.render import print_report
    from cost_middleware.ops.report import build_report, to_csv, to_json

    engine = _reader(settings)
    report = build_report(engine, args.by, args.since, args.until, tenant=args.tenant,
                          model=args.model, provider=args.provider, route=args.route,
                          limit=args.limit)
    if args.format == "csv":
        sys.stdout.write(to_csv(report))
    elif args.format == "json":
        sys.stdout.write(to_json(report) + "\n")
    elif not report.rows and args.since is not None and (
            total := build_report(engine, args.by).total.requests):
        console.print(f"No records since {args.since:%Y-%m-%d %H:%M:%S} UTC; {total:,} "
                      "records in the ledger.")
    else:
        print_report(console, report, report.by, f"Cost by {', '.join(report.by)}")
    return 0


def _price_book(settings: Settings, engine: Engine) -> PriceBook:
    """The settings' price book, counting nothing to StatsD (a command is not the app)."""
    from cost_middleware.metrics import Metrics
    from cost_middleware.pricing.book import PriceBook

    book = PriceBook.from_settings(settings, engine, Metrics(settings.with_overrides(
        statsd_enabled=False)))
    book.log_unknown_models = False  # the commands that meet them say so themselves
    return book


def cmd_reprice(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.pricing.admin import reprice
    from cost_middleware.pricing.unpriced import explain_unpriced

    engine = _engine(settings)
    book = _price_book(settings, engine)
    count = reprice(engine, book, args.since, only_unpriced=args.only_unpriced)
    console.print(f"{count} records priced.")
    _explain_unpriced(console, explain_unpriced(engine, book, args.since))
    book.close()
    return 0


def _explain_unpriced(console: Console, groups: Sequence[UnpricedGroup]) -> None:
    """What ``reprice`` left unpriced, by reason: the models (the largest 10) and their fix."""
    from cost_middleware.pricing.unpriced import MEANING

    if not groups:
        return
    console.print(f"{sum(g.records for g in groups):,} records left unpriced:")
    for reason, meaning in MEANING.items():
        mine = [g for g in groups if g.reason == reason]
        if not mine:
            continue
        console.print(f"  {reason}: {sum(g.records for g in mine):,} records of {len(mine)} "
                      f"model(s): {meaning}", markup=False, highlight=False, soft_wrap=True)
        for g in mine[:10]:
            line = (f"    {_shown(g.provider)}/{_shown(g.model or '(no model)')}: "
                    f"{g.records:,} records, {g.first_at:%Y-%m-%d %H:%M} to "
                    f"{g.last_at:%Y-%m-%d %H:%M} UTC")
            console.print(line + (f"; fix: {_shown(g.fix)}" if g.fix else ""), markup=False,
                          highlight=False, soft_wrap=True)
        if len(mine) > 10:
            console.print(f"    and {len(mine) - 10} more (cost-middleware prices check "
                          "lists every one)", highlight=False)


def cmd_doctor(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.ops.doctor import run_checks

    _announce(settings)
    ok = True
    for check in run_checks(settings):
        mark = "[green]ok[/]" if check.ok else ("[yellow]warn[/]" if check.warning
                                                  else "[red]FAIL[/]")
        console.print(f"{mark}  {check.name}: ", _plain(check.detail), sep="", highlight=False,
                      soft_wrap=True)
        ok = ok and (check.ok or check.warning)
    return 0 if ok else 1


def cmd_migrate(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.storage.engine import make_engine
    from cost_middleware.storage.migrate import migrate

    _announce(settings)
    engine = make_engine(settings.database_url)
    try:
        before, after = migrate(engine)
    finally:
        engine.dispose()
    if before == after:
        console.print(f"The ledger's schema is already at {after}.")
    else:
        console.print(f"Migrated the ledger's schema from {before or 'nothing (a new database)'} "
                      f"to {after}.")
    return 0


def cmd_spool_status(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.engine.spool import Spool

    status = Spool(settings.spool_dir).status(holders=True)
    console.print(f"{status.records:,} records in {status.files} file(s), "
                  f"{status.bytes:,} bytes, in {Path(settings.spool_dir).absolute()}",
                  markup=False, soft_wrap=True)
    if status.held:
        console.print(f"{_held(status)}.", markup=False, soft_wrap=True)
    return 0


def _held(status: SpoolStatus) -> str:
    """Which running processes hold spool files: a replay elsewhere skips those."""
    records = sum(count for _, count in status.held)
    pids = ", ".join(str(pid) for pid, _ in status.held)
    return (f"{records:,} records are in files held by running process(es) (pid {pids}): each "
            "replays its own once its database writes succeed; once it exits, "
            "`cost-middleware spool replay` can")


def cmd_spool_replay(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.engine.batcher import InDoubt, ReplaySink
    from cost_middleware.engine.spool import Spool
    from cost_middleware.storage.sinks import SQLSink

    # Records spooled during an outage may be unpriced: price them on the way in, as the
    # middleware's own replay does.
    engine = _engine(settings)
    book = _price_book(settings, engine)
    sink = SQLSink(engine)
    try:
        count = Spool(settings.spool_dir).replay(
            ReplaySink(sink, book.price_many, lambda records: None, InDoubt()))
    finally:
        sink.close()
        book.close()
        engine.dispose()
    console.print(f"{count:,} records replayed into the database.")
    status = Spool(settings.spool_dir).status(holders=True)
    if status.held:
        console.print(f"Not replayed: {_held(status)}.", markup=False, soft_wrap=True)
    return 0


def run_benchmarks(args: list[str]) -> int:
    import runpy

    script = Path.cwd() / "benchmarks" / "run.py"
    if not script.exists():
        return _error(f"{script} not found: run this from a source checkout", EXIT_USAGE)
    sys.argv = [str(script), *args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as done:
        return int(done.code or 0)
    return 0
