"""``cost-middleware rollups build``: make the hourly rollups anew from the ledger's records.

The writers keep the rollups in step by themselves (and ``migrate`` builds them for a ledger
that had none); a rebuild is for a ledger written by other means: rows inserted or deleted
by hand, or restored from a dump of ``cost_records`` alone.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from cost_middleware.config import Settings


def add_rollups(sub: argparse._SubParsersAction[Any]) -> None:
    from cost_middleware.ops.cli import SINCE_FORMS, _since

    rollups = sub.add_parser("rollups", help="the hourly totals reports read")
    rsub = rollups.add_subparsers(required=True, metavar="action")
    p = rsub.add_parser("build", help="make the rollups anew from the records (writers wait "
                        "meanwhile)")
    p.add_argument("--since", type=_since, metavar="WHEN",
                   help=f"only the hours from then on: {SINCE_FORMS} (default: every hour)")
    p.set_defaults(run=cmd_rollups_build)


def cmd_rollups_build(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.ops.cli import _engine
    from cost_middleware.storage.rollups import hour_floor, lock_ledger, rebuild

    engine = _engine(settings)
    # One transaction holding the ledger's write lock: no batch lands between the delete
    # and the sums (the sinks wait, or spool after their statement timeout).
    with engine.begin() as conn:
        lock_ledger(conn)
        rows = rebuild(conn, args.since)
    where = ("every hour" if args.since is None
             else f"the hours from {hour_floor(args.since):%Y-%m-%d %H:00} UTC on")
    console.print(f"Rollups rebuilt for {where}: {rows:,} rows.", highlight=False)
    return 0
