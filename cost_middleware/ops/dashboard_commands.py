"""``cost-middleware dashboard``: serve the dashboard with uvicorn (the ``dashboard`` extra)."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from cost_middleware.config import Settings

#: How to get the server when it is missing.
INSTALL = "pip install 'cost-middleware[dashboard]'"


def add_dashboard(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("dashboard", help="serve the dashboard: spend over time, breakdowns, "
                       "unpriced calls, cache savings, budgets")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s; any other than loopback "
                        "needs a token)")
    p.add_argument("--port", type=int, default=8050, help="port (default: %(default)s)")
    p.add_argument("--token", help="the token every request must carry (default: "
                   "COST_MIDDLEWARE_DASHBOARD_TOKEN; prefer it: a command line is visible to "
                   "other users of the machine)")
    p.set_defaults(run=cmd_dashboard)


def cmd_dashboard(args: argparse.Namespace, settings: Settings, console: Console) -> int:
    from cost_middleware.ops.cli import EXIT_USAGE, UsageError, _error, _reader
    from cost_middleware.ops.dashboard import create_dashboard
    from cost_middleware.ops.dashboard.access import AccessError, check_bind

    token = args.token if args.token is not None else settings.dashboard_token
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be a port number (1-65535), not {args.port}")
    try:
        check_bind(args.host, token)
        app = create_dashboard(settings, token=token)
    except AccessError as exc:
        raise UsageError(str(exc)) from None
    try:
        import uvicorn
    except ImportError:
        return _error(f"the dashboard is served by uvicorn, which is not installed: {INSTALL}",
                      EXIT_USAGE)
    _reader(settings)  # says which ledger; none there is exit 3 now, not a 503 later
    host = f"[{args.host}]" if ":" in args.host else args.host
    Console(stderr=True, highlight=False).print(
        f"dashboard: http://{host}:{args.port}/" + (" (token required)" if token else ""),
        markup=False)
    # Forwarded headers are trusted from a local proxy only (uvicorn's default), so a remote
    # user behind one is not taken for this machine.
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", server_header=False)
    return 0
