"""The ``cost-middleware`` commands our messages suggest (logs, ``reprice``, ``prices check``).

Names come from responses and apps, so they are untrusted: a command names them shell-quoted,
exactly (so it prices that very name), and a log line only through :func:`loggable`.
"""

from __future__ import annotations

import re
import shlex
from datetime import UTC, datetime

PROG = "cost-middleware"
#: What a suggested ``prices set`` leaves for the operator to fill in.
RATES_TO_FILL = "--input USD --output USD"

#: Characters a logged name keeps (model names use no others); the rest become ``_``.
_UNLOGGABLE = re.compile(r"[^A-Za-z0-9._:/@+-]")
#: Characters of a name a log line keeps.
_LOGGED_LENGTH = 128


def loggable(name: str) -> str:
    """``name`` cut to :data:`_LOGGED_LENGTH` characters, each outside a model name's set
    (controls, spaces, quotes, markup) replaced by ``_``: safe in a log line and a shell."""
    return _UNLOGGABLE.sub("_", name[:_LOGGED_LENGTH])


def iso(at: datetime) -> str:
    """``at`` as the ISO UTC text our ``--effective-from`` and ``--since`` read."""
    return at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def set_command(provider: str, model: str, effective_from: datetime | None = None) -> str:
    """``prices set`` for ``(provider, model)``: with rates to fill in, or, given
    ``effective_from``, an earlier start for the rates it has (they are inherited)."""
    start = RATES_TO_FILL if effective_from is None else f"--effective-from {iso(effective_from)}"
    return f"{PROG} prices set {shlex.quote(provider)} {shlex.quote(model)} {start}"


def reprice_command(since: datetime, *, only_unpriced: bool = False) -> str:
    """``reprice`` from ``since``."""
    flag = " --only-unpriced" if only_unpriced else ""
    return f"{PROG} reprice --since {iso(since)}{flag}"


def import_command(source: str | None) -> str:
    """A dry run of the import that refreshes a row from ``source`` (its ``source`` column);
    LiteLLM's map, the broadest, for rows of any other origin."""
    name = "genai-prices" if source is not None and source.startswith("genai-prices") \
        else "litellm"
    return f"{PROG} prices import {name} --dry-run"
