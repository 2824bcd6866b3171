"""``cost-middleware budgets set|list|status|delete|reconcile`` (docs/BUDGETS.md).

Light at import (argparse and rich only): every command builds this parser.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from cost_middleware.budgets.model import MODES, SCOPES, WINDOWS, Budget
from cost_middleware.config import Settings
from cost_middleware.ops import cli
from cost_middleware.pricing.commands import iso

FORMAT_HELP = "table for people, csv or json for tools, on stdout (default: %(default)s)"


def add_parsers(sub: argparse._SubParsersAction[Any]) -> None:
    """Register ``budgets`` and its actions on the top-level subparsers."""
    budgets = sub.add_parser("budgets", help="spend limits per tenant, route, model, provider "
                             "or everything, enforced in every process")
    bsub = budgets.add_subparsers(required=True, metavar="action")
    p = bsub.add_parser("set", help="create or change a budget")
    p.add_argument("scope", choices=SCOPES, help="what the budget limits: "
                   + ", ".join(SCOPES))
    p.add_argument("subject", help="the value (a tenant, a route...), or '*' for each value "
                                   "separately ('*' for scope all)")
    p.add_argument("--limit", type=cli._decimal, required=True, metavar="USD",
                   help="the limit in USD (exact)")
    p.add_argument("--window", default="day", choices=WINDOWS,
                   help="UTC calendar hour, day or month, or total (default: %(default)s)")
    p.add_argument("--mode", default="block", choices=MODES,
                   help="block: answer 429 once spent; observe: only report "
                        "(default: %(default)s)")
    p.add_argument("--alert-at", type=cli._fraction, metavar="FRACTION",
                   help="log and count when spend crosses this fraction of the limit (0.8)")
    p.set_defaults(run=cmd_set)
    p = bsub.add_parser("list", help="every budget")
    p.add_argument("--format", default="table", choices=("table", "csv", "json"),
                   help=FORMAT_HELP)
    p.set_defaults(run=cmd_list)
    p = bsub.add_parser("status", help="spent, limit, remaining and reset time of each budget "
                                       "in its current window, from the ledger")
    p.add_argument("--scope", choices=SCOPES, help="only budgets of this scope")
    p.add_argument("--format", default="table", choices=("table", "csv", "json"),
                   help=FORMAT_HELP)
    p.set_defaults(run=cmd_status)
    p = bsub.add_parser("delete", help="remove a budget (every window unless --window)")
    p.add_argument("scope", choices=SCOPES, help="the budget's scope")
    p.add_argument("subject", help="the budget's subject, as `budgets list` shows it")
    p.add_argument("--window", choices=WINDOWS,
                   help="only the budget of this window (default: every window of the subject)")
    p.set_defaults(run=cmd_delete)
    p = bsub.add_parser("reconcile", help="recount the current windows from the ledger")
    p.set_defaults(run=cmd_reconcile)


def cmd_set(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.budgets.api import set_budget
    from cost_middleware.ops.render import _safe

    budget = Budget(args.scope, args.subject, args.window, args.limit, args.mode, args.alert_at)
    stored = set_budget(cli._engine(settings), settings, budget)
    console.print(f"Budget set: {stored.scope} ", _safe(stored.subject),
                  f" {stored.window} {stored.limit_usd} USD ({stored.mode})", sep="")
    return cli.EXIT_OK


def cmd_list(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.budgets.api import list_budgets

    budgets = list_budgets(cli._reader(settings))
    items = [{"scope": b.scope, "subject": b.subject, "window": b.window,
              "limit_usd": str(b.limit_usd), "mode": b.mode, "alert_at": b.alert_at,
              "updated_at": iso(b.updated_at) if b.updated_at else None} for b in budgets]
    if not budgets and args.format == "table":
        console.print("No budgets.")
        return cli.EXIT_OK
    _emit(console, args.format, items, "Budgets")
    return cli.EXIT_OK


def cmd_status(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.budgets.api import status

    rows = status(cli._reader(settings), args.scope)
    items = [{"scope": r.scope, "subject": r.subject, "window": r.window, "mode": r.mode,
              "spent_usd": str(r.spent_usd), "limit_usd": str(r.limit_usd),
              "remaining_usd": str(r.remaining_usd),
              "resets_at": iso(r.resets_at) if r.resets_at else None,
              "blocking": r.blocking} for r in rows]
    if not rows and args.format == "table":
        console.print("No budgets.")
        return cli.EXIT_OK
    _emit(console, args.format, items, "Budgets in their current window (from the ledger)")
    return cli.EXIT_OK


def cmd_delete(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.budgets.api import delete_budget

    removed = delete_budget(cli._engine(settings), settings, args.scope, args.subject,
                            args.window)
    if not removed:
        return cli._error("no such budget", cli.EXIT_FAILED)
    console.print(f"Removed {removed} budget(s).")
    return cli.EXIT_OK


def cmd_reconcile(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.budgets.api import reconcile
    from cost_middleware.ops.render import _safe, money

    recounts = reconcile(cli._engine(settings), settings)
    if settings.redis_url is None:
        console.print("Without Redis each process counts from the ledger at its start: "
                      "nothing shared to recount. The ledger's figures:")
    table = Table(title="Current windows recounted from the ledger", title_justify="left")
    for name in ("scope", "subject", "window", "counted before", "ledger"):
        table.add_column(name, justify="right" if name in ("counted before", "ledger")
                         else "left")
    for r in recounts:
        table.add_row(r.budget.scope, _safe(r.budget.subject), r.budget.window,
                      "" if r.before_usd is None else money(r.before_usd), money(r.after_usd))
    console.print(table)
    return cli.EXIT_OK


def _emit(console: Console, fmt: str, items: list[dict[str, Any]], title: str) -> None:
    if fmt == "json":
        console.file.write(json.dumps(items, indent=2) + "\n")
        return
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        if items:
            writer.writerow(list(items[0]))
        for item in items:
            writer.writerow([_csv_cell(v) for v in item.values()])
        console.file.write(out.getvalue())
        return
    from cost_middleware.ops.render import _safe

    table = Table(title=title, title_justify="left")
    for name in items[0]:
        table.add_column(name, justify="right" if name.endswith("_usd") else "left")
    for item in items:
        table.add_row(*(_safe("" if v is None else str(v)) for v in item.values()))
    console.print(table)


def _csv_cell(value: object) -> str:
    from cost_middleware.ops.report import _csv_safe

    return "" if value is None else _csv_safe(str(value))
